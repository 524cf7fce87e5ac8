#!/usr/bin/env bash
# Idempotent project setup (called by `make setup`; safe to run again at any time).
#
# 1. System packages (Debian/Ubuntu): a PostgreSQL server, its PL/Python 3 and postgresql-server-dev for
#    the installed server major version, python3-venv, python3-dev and build-essential.  As root the missing ones are
#    apt-get installed (`apt-get update` runs only when something is missing); as any other user the
#    exact `sudo apt-get install ...` line is printed and the script fails.
# 2. `.venv`, made by the system Python ($DRIFT_SYSTEM_PYTHON, default /usr/bin/python3) because that
#    is the interpreter PostgreSQL's PL/Python embeds: backends import the venv's packages through
#    PYTHONPATH=<venv site-packages>:<repo root>, so the venv must match it.  A venv made by another
#    interpreter is rebuilt.
# 3. `pip install -e .[dev,bench]` into it, skipped when the stamp file in .venv matches the hash of
#    pyproject.toml (so a second run takes well under a second).
# 4. The `drift` extension's files (sql/drift.control, sql/drift--*.sql) into the PostgreSQL server's
#    `$(pg_config --sharedir)/extension/`: copied as root when missing or different; as any other user the
#    exact `sudo install ...` line is printed (nothing fails: only `CREATE EXTENSION drift` needs them).
# 5. Multicorn2 and pgvector, built from their pinned release tarballs for that server and installed
#    (Multicorn's Python package into .venv): scripts/extensions.sh says where the tarballs come from.
#    DRIFT_SKIP_EXTENSIONS=1 skips this step (and the postgresql-server-dev package).
set -euo pipefail
umask 022 # PostgreSQL backends run as another OS user and must be able to read the venv

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SYSTEM_PYTHON=${DRIFT_SYSTEM_PYTHON:-/usr/bin/python3}
EXTRAS=${DRIFT_EXTRAS:-dev,bench}
VENV=.venv
STAMP=$VENV/.drift-setup-stamp
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}

# Highest PostgreSQL server major version installed under /usr/lib/postgresql (empty if none).
pg_major() {
	local exe major best=""
	for exe in /usr/lib/postgresql/*/bin/postgres; do
		[ -x "$exe" ] || continue
		major=${exe#/usr/lib/postgresql/}
		major=${major%%/*}
		[[ $major =~ ^[0-9]+$ ]] || continue
		if [ -z "$best" ] || [ "$major" -gt "$best" ]; then best=$major; fi
	done
	echo "$best"
}

# Server major version the `postgresql` metapackage would install (empty if apt does not know).
pg_default_major() {
	apt-cache depends postgresql 2>/dev/null | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n1
}

is_installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# Print the packages of "$@" that are not installed, one per line.
missing_of() {
	local p
	for p in "$@"; do is_installed "$p" || echo "$p"; done
}

APT_UPDATED=0
apt_install() {
	if [ "$APT_UPDATED" = 0 ]; then
		log "apt-get update"
		apt-get update -q >/dev/null
		APT_UPDATED=1
	fi
	log "apt-get install $*"
	apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

system_packages() {
	if ! command -v dpkg-query >/dev/null 2>&1; then
		log "not a Debian-family system: install a PostgreSQL server with PL/Python 3, python3-venv and"
		log "python3-dev yourself (PL/Python must embed the same Python as $SYSTEM_PYTHON)"
		return 0
	fi
	local base=(python3-venv python3-dev build-essential) major want missing dev=()
	major=$(pg_major)
	if [ "$(id -u)" = 0 ]; then
		want=("${base[@]}")
		if [ -z "$major" ]; then want+=(postgresql); fi
		mapfile -t missing < <(missing_of "${want[@]}")
		if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
		major=$(pg_major)
		[ -n "$major" ] || die "no PostgreSQL server under /usr/lib/postgresql after installing 'postgresql'"
		[ "${DRIFT_SKIP_EXTENSIONS:-0}" = 1 ] || dev=("postgresql-server-dev-$major")
		mapfile -t missing < <(missing_of "postgresql-plpython3-$major" "${dev[@]}")
		if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
	else
		want=("${base[@]}")
		if [ -z "$major" ]; then
			want+=(postgresql)
			major=$(pg_default_major)
		fi
		if [ -n "$major" ]; then
			want+=("postgresql-plpython3-$major")
			[ "${DRIFT_SKIP_EXTENSIONS:-0}" = 1 ] || want+=("postgresql-server-dev-$major")
		fi
		mapfile -t missing < <(missing_of "${want[@]}")
		if [ "${#missing[@]}" -gt 0 ]; then
			printf 'setup: missing system packages: %s\n' "${missing[*]}" >&2
			printf 'setup: run this once, then run the make target again:\n\n' >&2
			printf '    sudo apt-get update && sudo apt-get install -y %s\n\n' "${missing[*]}" >&2
			exit 1
		fi
	fi
}

# Warn when PL/Python embeds a different Python than the venv's (its imports would then fail).
check_plpython_python() {
	local major lib linked want
	major=$(pg_major)
	[ -n "$major" ] || return 0
	lib=/usr/lib/postgresql/$major/lib/plpython3.so
	[ -e "$lib" ] && command -v ldd >/dev/null 2>&1 || return 0
	linked=$(ldd "$lib" 2>/dev/null | grep -o 'libpython3\.[0-9]*' | head -n1 || true)
	want=libpython$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	if [ -n "$linked" ] && [ "$linked" != "$want" ]; then
		log "warning: PL/Python of PostgreSQL $major embeds $linked but .venv is $want;"
		log "warning: set DRIFT_SYSTEM_PYTHON to the matching interpreter and run 'make clean-venv setup'"
	fi
}

python_id() { "$1" -c 'import sys; print(sys.base_prefix, "%d.%d.%d" % sys.version_info[:3])'; }

make_venv() {
	[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found (set DRIFT_SYSTEM_PYTHON)"
	if [ -x "$VENV/bin/python" ]; then
		if [ "$(python_id "$VENV/bin/python" 2>/dev/null || true)" = "$(python_id "$SYSTEM_PYTHON")" ]; then
			return 0
		fi
		log "$VENV was not made by $SYSTEM_PYTHON; rebuilding it"
		rm -rf "$VENV"
	elif [ -e "$VENV" ]; then
		log "$VENV is incomplete; rebuilding it"
		rm -rf "$VENV"
	fi
	log "creating $VENV with $SYSTEM_PYTHON"
	"$SYSTEM_PYTHON" -m venv "$VENV"
}

stamp_key() {
	printf '%s extras=%s python=%s\n' "$(sha256sum pyproject.toml | cut -d' ' -f1)" "$EXTRAS" \
		"$(python_id "$VENV/bin/python")"
}

install_project() {
	local key
	key=$(stamp_key)
	if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
		return 0
	fi
	log "pip install -e .[$EXTRAS] into $VENV (a few minutes on a cold cache)"
	rm -f "$STAMP"
	"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -e ".[$EXTRAS]"
	printf '%s\n' "$key" >"$STAMP"
}

# pg_config of the highest installed server (Debian keeps one per major), else the one on PATH.
pg_config_bin() {
	local major
	major=$(pg_major)
	if [ -n "$major" ] && [ -x "/usr/lib/postgresql/$major/bin/pg_config" ]; then
		echo "/usr/lib/postgresql/$major/bin/pg_config"
	elif command -v pg_config >/dev/null 2>&1; then
		command -v pg_config
	fi
}

install_extension() {
	local pgc dest f stale=()
	pgc=$(pg_config_bin)
	[ -n "$pgc" ] || return 0
	dest="$("$pgc" --sharedir)/extension"
	for f in sql/drift.control sql/drift--*.sql; do
		cmp -s "$f" "$dest/$(basename "$f")" || stale+=("$f")
	done
	[ "${#stale[@]}" -gt 0 ] || return 0
	if [ "$(id -u)" = 0 ]; then
		log "installing the drift extension files into $dest"
		install -m 0644 "${stale[@]}" "$dest/"
	else
		log "the drift extension files are not installed (CREATE EXTENSION drift needs them); run once:"
		printf '\n    sudo install -m 0644 %s %s/\n\n' "${stale[*]}" "$dest" >&2
	fi
}

install_vendor_extensions() {
	local pgc
	pgc=$(pg_config_bin)
	[ -n "$pgc" ] || return 0
	bash scripts/extensions.sh "$pgc" "$VENV"
}

start=$SECONDS
system_packages
make_venv
install_project
check_plpython_python
install_extension
install_vendor_extensions
if [ $((SECONDS - start)) -gt 2 ]; then log "done in $((SECONDS - start)) s"; fi
