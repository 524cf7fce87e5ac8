#!/usr/bin/env bash
# Build and install the PostgreSQL extensions drift's foreign table and its pgvector comparison need:
# Multicorn2 and pgvector, at the versions pinned in scripts/vendor.lock, for one PostgreSQL server.
#
#   scripts/extensions.sh PG_CONFIG VENV
#
# Contract (called by scripts/setup.sh and by docker/Dockerfile; idempotent):
# - An extension whose pinned version is already installed for this server (its .so in `pkglibdir`, its
#   control file's default_version in `sharedir/extension`) is skipped; so is Multicorn's Python package
#   when VENV already has that version.  Nothing changed: no build, a few milliseconds.
# - The release tarball is looked up in $DRIFT_VENDOR_DIR, then ../shared/vendor beside the repository;
#   only when neither has it is it downloaded from the upstream URL in vendor.lock (said on stderr) into
#   $DRIFT_VENDOR_CACHE (default ~/.cache/drift/vendor).  Its SHA-256 must equal the pinned one, and the
#   entry of a SHA256SUMS file beside it: otherwise it is refused with both sums and nothing is built.
# - It is built in VENV/build/extensions/ with the server's pg_config (PGXS).  Multicorn's C part links
#   the Python that PostgreSQL was built with (Debian: the system Python, the one PL/Python embeds).
# - Installing into the server's folders needs write access there (root, usually): with it, `make install`
#   (Multicorn's own install target would also pip-install into the system Python; that step is skipped);
#   without it, the exact `sudo make ... install` commands are printed and the script still succeeds
#   (tests then skip, or fail under CI=true, saying the extension is missing).
# - Multicorn's Python package is pip-installed into VENV (the venv the backends import from), never
#   into the system Python.
# - DRIFT_SKIP_EXTENSIONS=1 skips everything.
set -euo pipefail
umask 022

[ $# -eq 2 ] || {
	echo "usage: $0 PG_CONFIG VENV" >&2
	exit 2
}
PG_CONFIG=$1
VENV=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
LOCK=$HERE/vendor.lock
CACHE=${DRIFT_VENDOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drift/vendor}

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}

[ "${DRIFT_SKIP_EXTENSIONS:-0}" = 1 ] && exit 0
[ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG"

PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR=$("$PG_CONFIG" --sharedir)/extension
PGXS=$("$PG_CONFIG" --pgxs)

# Fields of NAME's line in vendor.lock: "version tarball sha256 url".
lock_entry() {
	awk -v n="$1" '$1 == n { print $2, $3, $4, $5 }' "$LOCK"
}

control_version() { # default_version of an installed control file, empty if none
	[ -f "$EXTDIR/$1.control" ] || return 0
	sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$EXTDIR/$1.control"
}

server_has() { # EXTENSION MODULE VERSION: the pinned version is installed for this server
	[ -f "$PKGLIBDIR/$2.so" ] && [ "$(control_version "$1")" = "$3" ] && [ -f "$EXTDIR/$1--$3.sql" ]
}

venv_has_multicorn() { # VERSION
	compgen -G "$VENV/lib/python3*/site-packages/multicorn-$1.dist-info" >/dev/null
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Path of a verified tarball for FILE (pinned SHA256), found or downloaded; dies on a checksum mismatch.
fetch_tarball() {
	local file=$1 want=$2 url=$3 dir found="" listed got
	for dir in ${DRIFT_VENDOR_DIR:+"$DRIFT_VENDOR_DIR"} "$REPO/../shared/vendor" "$CACHE"; do
		if [ -f "$dir/$file" ]; then
			found=$dir/$file
			break
		fi
	done
	if [ -z "$found" ]; then
		log "$file is in neither \$DRIFT_VENDOR_DIR nor ../shared/vendor: downloading it from $url"
		mkdir -p "$CACHE"
		/usr/bin/python3 - "$url" "$CACHE/$file.part" <<-'EOF' || die "could not download $url"
			import sys, urllib.request
			urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
		EOF
		mv "$CACHE/$file.part" "$CACHE/$file"
		found=$CACHE/$file
	fi
	got=$(sha256_of "$found")
	if [ "$got" != "$want" ]; then
		die "$found has SHA-256 $got but scripts/vendor.lock pins $want: refusing to build it"
	fi
	if [ -f "$(dirname "$found")/SHA256SUMS" ]; then
		listed=$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1 }' "$(dirname "$found")/SHA256SUMS")
		if [ -n "$listed" ] && [ "$listed" != "$got" ]; then
			die "$found has SHA-256 $got but its SHA256SUMS lists $listed: refusing to build it"
		fi
	fi
	echo "$found"
}

# Unpack TARBALL into a fresh VENV/build/extensions/TOPDIR and print that folder.
unpack() {
	local tarball=$1 top build=$VENV/build/extensions
	top=$(tar -tzf "$tarball" | head -n1 | cut -d/ -f1)
	[ -n "$top" ] || die "$tarball is empty"
	mkdir -p "$build"
	rm -rf "${build:?}/$top"
	tar -xzf "$tarball" -C "$build"
	echo "$build/$top"
}

can_install() { [ -w "$PKGLIBDIR" ] && [ -w "$EXTDIR" ]; }

# make -C SRC ...: quiet unless it fails, then the log's tail and the path to the whole of it.
run_make() {
	local src=$1
	shift
	if ! make -C "$src" PG_CONFIG="$PG_CONFIG" "$@" >"$src/build.log" 2>&1; then
		tail -n 30 "$src/build.log" >&2
		die "make $* failed in $src (full log: $src/build.log)"
	fi
}

[ -f "$PGXS" ] || die "PostgreSQL's build files ($PGXS) are missing: install postgresql-server-dev-$("$PG_CONFIG" --version | sed 's/[^0-9]*\([0-9]*\).*/\1/')"

build_extension() { # NAME EXTENSION MODULE [extra make install args...]
	local name=$1 ext=$2 module=$3 version file sha url tarball src stamp
	shift 3
	read -r version file sha url < <(lock_entry "$name")
	[ -n "$version" ] || die "$name is not in $LOCK"
	server_has "$ext" "$module" "$version" && return 0
	stamp=$VENV/build/extensions/$name-$version.built
	if [ -f "$stamp" ] && [ -d "$(cat "$stamp")" ]; then
		src=$(cat "$stamp") # built by an earlier run that could not install it
	else
		tarball=$(fetch_tarball "$file" "$sha" "$url")
		log "building $name $version for PostgreSQL $("$PG_CONFIG" --version | cut -d' ' -f2) from $tarball"
		src=$(unpack "$tarball")
		run_make "$src" OPTFLAGS=
		echo "$src" >"$stamp"
	fi
	if can_install; then
		run_make "$src" OPTFLAGS= "$@" install
		server_has "$ext" "$module" "$version" || die "$name $version is still not installed in $PKGLIBDIR / $EXTDIR"
		log "installed $name $version ($PKGLIBDIR/$module.so, $EXTDIR/$ext.control)"
	else
		log "$name $version is built but cannot be installed by this user; run once:"
		printf '\n    sudo make -C %s PG_CONFIG=%s OPTFLAGS= %sinstall\n\n' "$src" "$PG_CONFIG" "${*:+$* }" >&2
	fi
}

# Multicorn's Python package (multicorn.ForeignDataWrapper, ...) into VENV, built against this server.
install_multicorn_python() {
	local version file sha url tarball src build=$VENV/build/extensions pip_opts=(--no-deps)
	read -r version file sha url < <(lock_entry multicorn2)
	venv_has_multicorn "$version" && return 0
	src=$build/multicorn2-$version
	if [ ! -f "$src/setup.py" ]; then
		tarball=$(fetch_tarball "$file" "$sha" "$url")
		src=$(unpack "$tarball")
	fi
	log "pip install multicorn $version (its Python package) into $VENV"
	# The venv's setuptools when it can build a wheel itself (no download), else pip's isolated build.
	if "$VENV/bin/python" - 2>/dev/null <<-'EOF'; then
		import importlib.util, sys, setuptools
		major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
		sys.exit(not ((major, minor) >= (70, 1) or (major >= 62 and importlib.util.find_spec("wheel"))))
	EOF
		pip_opts+=(--no-build-isolation)
	fi
	PATH="$(dirname "$PG_CONFIG"):$PATH" "$VENV/bin/python" -m pip install --disable-pip-version-check \
		--no-input -q "${pip_opts[@]}" "$src" >"$build/multicorn-pip.log" 2>&1 || {
		tail -n 30 "$build/multicorn-pip.log" >&2
		die "pip install of multicorn into $VENV failed (full log: $build/multicorn-pip.log)"
	}
	venv_has_multicorn "$version" || die "multicorn $version is still not in $VENV after pip install"
}

# Multicorn's `install` target depends on `python_code`, which pip-installs into the system Python:
# `-o python_code` keeps make from running it (the package goes into the venv instead, above).
build_extension multicorn2 multicorn multicorn -o python_code
install_multicorn_python
build_extension pgvector vector vector
