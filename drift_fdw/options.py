"""Foreign table options and column roles of ``DriftFDW``, validated once when Multicorn builds the wrapper.

Contract:

* ``TableSpec.parse(options, columns)`` takes the merged options Multicorn passes (table + server + user
  mapping; ``wrapper`` already removed) and the ``ColumnDefinition`` map, and either returns a complete,
  immutable spec or raises ``ConfigError`` (message + hint) naming the bad option, column or role. It never
  contacts the engine.
* Options. Table: ``collection`` (required: Multicorn does not tell a wrapper its table's name), ``dim``,
  ``metric`` (``l2`` | ``cosine`` | ``ip``), ``create`` (``true``: create the collection on
  first use when it is missing; needs ``dim`` or a ``vector(n)`` column). Server: ``address`` (required),
  ``timeout`` (seconds per engine call, default 30), ``durability`` (``sync`` | ``batch`` | ``off``, for
  writes). User mapping: ``token`` (the engine's token belongs there: a user mapping is readable only by
  its user and the server's owner; never put it in a setting stored with ALTER ROLE / DATABASE ... SET,
  which every role can read in ``pg_db_role_setting``). Anything else is refused, at CREATE / ALTER
  FOREIGN TABLE already (``sqlapi.validate_table``, run by the extension's event trigger).
  Sharding (``shards``, ``fanout``): table options ``shard_of`` (the public name of the sharded table this
  partition belongs to: partitions with the same value are siblings) and ``shard`` (this shard's name, used
  in errors); server option ``allow_partial`` (``true``: a shard on this server that cannot be reached is
  skipped with a WARNING instead of failing the statement).
  TLS (an engine on another host; ``drift_engine.server.tls``): the ``address`` ``tls:HOST:PORT`` (gRPC and
  the fast path over TLS) with the server options ``tls_ca`` (absolute path of the PEM CA the engine's
  certificate must chain to; without it, the system's trust store), ``tls_server_name`` (the name the
  certificate must carry, when it is not the address's host), ``tls_pin`` (SHA-256 of the engine's
  certificate, which must then be exactly that one), ``tls_cert`` + ``tls_key`` (absolute paths of a client
  certificate, for an engine started with ``--tls-client-ca``); ``tls_*`` options on any other address are
  refused. The files are read by the PostgreSQL server's OS user when the first connection opens.
  ``tls_settings(options)`` turns them into a ``ClientTLS`` (``None`` for other addresses); ``TableSpec.parse``
  also hands it to ``connection.set_tls`` so this backend's client of that address uses it (``connection``
  reads the options from the catalog for the ``drift.*`` functions).
* Column roles, by name unless a column option ``role`` says otherwise: ``id`` (integer types; the rowid),
  ``embedding`` (``real[]``, ``double precision[]`` or pgvector ``vector(n)``), ``query`` (same types; the
  query-vector input, echoed back), ``distance`` (``real``, ``double precision`` or ``numeric``),
  ``k`` / ``nprobe`` / ``ef`` / ``rerank`` (integer knobs), ``payload`` (``json``/``jsonb``: the whole
  payload object; only by option), and ``field`` for every other column: one payload field whose key is
  the column name or the column option ``field``. Field types drift cannot store exactly are refused here
  (``bytea``, ``numeric`` and their arrays); so are 2-D array values (at INSERT / UPDATE: ``copyin``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from drift_engine.config import DURABILITY_MODES, METRICS

TABLE_OPTIONS = ("collection", "dim", "metric", "create", "shard_of", "shard")
TLS_OPTIONS = ("tls_ca", "tls_server_name", "tls_pin", "tls_cert", "tls_key")
SERVER_OPTIONS = ("address", "timeout", "durability", "allow_partial", *TLS_OPTIONS)
USER_OPTIONS = ("token",)
KNOWN_OPTIONS = (*TABLE_OPTIONS, *SERVER_OPTIONS, *USER_OPTIONS)
KNOB_ROLES = ("k", "nprobe", "ef", "rerank")
NAMED_ROLES = ("id", "embedding", "query", "distance", *KNOB_ROLES)
ROLES = (*NAMED_ROLES, "payload", "field")
COLUMN_OPTIONS = ("role", "field")

_INT_TYPES = ("smallint", "integer", "bigint")
_FLOAT_TYPES = ("real", "double precision")
_TEXT_TYPES = ("text", "character varying", "character", "name", "citext", "uuid")


class ConfigError(Exception):
    """A foreign table / server / column definition that drift cannot use (message + hint)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def type_kind(base_type: str) -> str:
    """The value kind of a PostgreSQL type name (``format_type`` output, typmod stripped).

    One of ``int``, ``float``, ``numeric``, ``bool``, ``json``, ``text``, ``vector`` (pgvector),
    ``array`` (any ``...[]``) or ``other`` (passed through as PostgreSQL's text form).
    """
    t = base_type.strip().lower()
    if t.endswith("[]"):
        return "array"
    t = t.split("(")[0].strip()
    bare = t.rsplit(".", 1)[-1]
    if bare == "vector":
        return "vector"
    if t in _INT_TYPES:
        return "int"
    if t in _FLOAT_TYPES:
        return "float"
    if t == "numeric":
        return "numeric"
    if t == "boolean":
        return "bool"
    if t in ("json", "jsonb"):
        return "json"
    if t in _TEXT_TYPES:
        return "text"
    return "other"


def element_kind(base_type: str) -> str:
    """The kind of an array type's elements (``real[]`` -> ``float``); ``other`` when not an array."""
    t = base_type.strip()
    return type_kind(t[:-2]) if t.endswith("[]") else "other"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    role: str
    type_name: str  # as declared, e.g. "vector(50)" or "real[]"
    kind: str  # type_kind(base type)
    elem: str = "other"  # element kind for arrays
    key: str = ""  # payload key (role "field")
    dim: int | None = None  # vector(n) typmod

    @property
    def pgvector(self) -> bool:
        return self.kind == "vector"


@dataclass(frozen=True)
class TableSpec:
    collection: str
    address: str
    token: str | None
    timeout: float
    durability: str | None
    dim: int | None
    metric: str | None
    create: bool
    columns: dict[str, ColumnSpec]
    roles: dict[str, str] = field(default_factory=dict)  # role -> column name (named roles and payload)
    fields: dict[str, str] = field(default_factory=dict)  # column name -> payload key
    shard_of: str | None = None  # the sharded table this partition belongs to (siblings share it)
    shard: str | None = None  # this shard's name, for errors
    allow_partial: bool = False  # server option: skip this shard with a WARNING when it is unreachable
    tls: Any = None  # drift_engine.server.tls.ClientTLS from the tls_* server options (None: as the address says)

    def column(self, role: str) -> ColumnSpec | None:
        name = self.roles.get(role)
        return self.columns[name] if name is not None else None

    @property
    def vector_dim(self) -> int | None:
        """The dimension the table promises: ``dim`` or a ``vector(n)`` column's n."""
        if self.dim is not None:
            return self.dim
        for role in ("embedding", "query"):
            col = self.column(role)
            if col is not None and col.dim is not None:
                return col.dim
        return None

    @classmethod
    def parse(cls, options: dict[str, str], columns: dict[str, Any]) -> TableSpec:
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise ConfigError(
                f"drift: unknown option {unknown[0]!r}",
                hint=f"table options: {', '.join(TABLE_OPTIONS)}; server options: {', '.join(SERVER_OPTIONS)}; "
                f"user mapping: {', '.join(USER_OPTIONS)}",
            )
        collection = options.get("collection", "").strip()
        if not collection:
            raise ConfigError(
                "drift: the foreign table has no 'collection' option",
                hint="ALTER FOREIGN TABLE ... OPTIONS (ADD collection 'name')",
            )
        address = options.get("address", "").strip()
        if not address:
            raise ConfigError(
                "drift: the foreign server has no 'address' option",
                hint="ALTER SERVER ... OPTIONS (ADD address 'unix:/run/drift/drift.sock')",
            )
        metric = options.get("metric")
        if metric is not None and metric not in METRICS:
            raise ConfigError(f"drift: unknown metric {metric!r}", hint=f"metric is one of {', '.join(METRICS)}")
        durability = options.get("durability")
        if durability is not None and durability not in DURABILITY_MODES:
            raise ConfigError(
                f"drift: unknown durability {durability!r}", hint=f"durability is one of {', '.join(DURABILITY_MODES)}"
            )
        cols = {name: _column(name, definition) for name, definition in columns.items()}
        roles: dict[str, str] = {}
        for col in cols.values():
            if col.role == "field":
                continue
            if col.role in roles:
                raise ConfigError(
                    f"drift: columns {roles[col.role]!r} and {col.name!r} both have the role {col.role!r}",
                    hint="give one of them another name or a column option role 'field'",
                )
            roles[col.role] = col.name
        fields = {c.name: c.key for c in cols.values() if c.role == "field"}
        spec = cls(
            collection=collection,
            address=address,
            token=options.get("token") or None,
            timeout=_positive_float(options.get("timeout", "30"), "timeout"),
            durability=durability,
            dim=_dim(options.get("dim")),
            metric=metric,
            create=_bool(options.get("create", "false"), "create"),
            columns=cols,
            roles=roles,
            fields=fields,
            shard_of=options.get("shard_of", "").strip() or None,
            shard=options.get("shard", "").strip() or None,
            allow_partial=_bool(options.get("allow_partial", "false"), "allow_partial"),
            tls=tls_settings(options),
        )
        spec._check_dims()
        if spec.tls is not None:
            from drift_fdw import connection

            connection.set_tls(address, spec.tls)
        return spec

    def _check_dims(self) -> None:
        dims = {c.dim for c in self.columns.values() if c.dim is not None}
        if self.dim is not None:
            dims.add(self.dim)
        if len(dims) > 1:
            raise ConfigError(
                f"drift: the table's dimensions disagree ({sorted(dims)})",
                hint="make the dim option and every vector(n) column use the collection's dimension",
            )
        if self.create and self.vector_dim is None:
            raise ConfigError(
                "drift: create 'true' needs the dimension",
                hint="add the table option dim 'N' or declare the embedding as vector(N)",
            )


def tls_settings(options: dict[str, str]) -> Any:
    """The ``ClientTLS`` of a foreign server whose address is ``tls:HOST:PORT`` (from its ``tls_*`` options),
    or ``None`` for any other address (see the module docstring); ``ConfigError`` for ``tls_*`` options on
    another address, a relative path, half a client certificate or a bad pin."""
    given = {name: options[name].strip() for name in TLS_OPTIONS if options.get(name, "").strip()}
    address = options.get("address", "").strip()
    if not address.startswith("tls:"):
        if given:
            raise ConfigError(
                f"drift: the options {', '.join(sorted(given))} need an address 'tls:HOST:PORT', not {address!r}",
                hint="ALTER SERVER ... OPTIONS (SET address 'tls:HOST:PORT'); a Unix socket is guarded by its mode",
            )
        return None
    for name in ("tls_ca", "tls_cert", "tls_key"):
        if name in given and not given[name].startswith("/"):
            raise ConfigError(
                f"drift: option {name} {given[name]!r} is not an absolute path",
                hint="give the full path of a PEM file the PostgreSQL server's OS user can read",
            )
    from drift_engine.errors import InvalidArgumentError
    from drift_engine.server.tls import ClientTLS

    try:
        return ClientTLS(
            ca=given.get("tls_ca"),
            server_name=given.get("tls_server_name"),
            pin=given.get("tls_pin"),
            cert=given.get("tls_cert"),
            key=given.get("tls_key"),
        )
    except InvalidArgumentError as exc:
        hint = exc.hint or "set both tls_cert and tls_key (a client certificate and its key), or neither"
        raise ConfigError(f"drift: {exc.message}", hint=hint) from None


def _column(name: str, definition: Any) -> ColumnSpec:
    options = dict(getattr(definition, "options", None) or {})
    unknown = sorted(set(options) - set(COLUMN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"drift: unknown option {unknown[0]!r} on column {name!r}",
            hint=f"column options: {', '.join(COLUMN_OPTIONS)}",
        )
    type_name = getattr(definition, "type_name", "") or ""
    base = getattr(definition, "base_type_name", "") or type_name
    kind = type_kind(base)
    role = options.get("role", name if name in NAMED_ROLES else "field")
    if role not in ROLES:
        raise ConfigError(f"drift: unknown role {role!r} for column {name!r}", hint=f"roles: {', '.join(ROLES)}")
    if "field" in options and role != "field":
        raise ConfigError(f"drift: column {name!r} has a 'field' option but the role {role!r}")
    typmod = getattr(definition, "typmod", -1)
    dim = int(typmod) if kind == "vector" and isinstance(typmod, int) and typmod > 0 else None
    col = ColumnSpec(name, role, type_name, kind, element_kind(base), options.get("field", name), dim)
    _check_type(col)
    return col


_ROLE_TYPES = {
    "id": (("int",), "bigint"),
    "embedding": (("vector", "array"), "real[] or vector(n)"),
    # text: the literal reaches the FDW as is and is echoed as is (no per-row vector_in / array_in)
    "query": (("vector", "array", "text"), "real[], vector(n) or text"),
    "distance": (("float", "numeric"), "real or double precision"),
    "payload": (("json",), "jsonb"),
    **{knob: (("int",), "integer") for knob in KNOB_ROLES},
}


_LOSSY_FIELD_TYPES = {
    "bytea": "it would be stored as its text form and re-encoded by every UPDATE; encode it (e.g. base64) into text",
    "numeric": "payload numbers are float64, so a numeric would be rounded; use double precision, or text for "
    "exact decimals",
}


def _check_type(col: ColumnSpec) -> None:
    if col.role == "field":
        base = col.type_name.strip().lower().split("(")[0].strip()
        base = base[:-2].strip() if base.endswith("[]") else base
        why = _LOSSY_FIELD_TYPES.get(base.rsplit(".", 1)[-1])
        if why is not None:
            raise ConfigError(
                f"drift: column {col.name!r} has type {col.type_name}, which a payload field cannot hold exactly",
                hint=why,
            )
    rule = _ROLE_TYPES.get(col.role)
    if rule is None:
        return
    kinds, want = rule
    ok = col.kind in kinds
    if ok and col.kind == "array":
        ok = col.elem in ("float", "numeric")
    if not ok:
        raise ConfigError(
            f"drift: column {col.name!r} (role {col.role!r}) has type {col.type_name}, which drift cannot use",
            hint=f"declare it as {want}",
        )


def _dim(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        dim = int(value)
    except ValueError:
        raise ConfigError(f"drift: option dim {value!r} is not a whole number") from None
    if not 1 <= dim <= 16_000:
        raise ConfigError(f"drift: option dim {dim} is out of range [1, 16000]")
    return dim


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "t", "on", "yes", "1"):
        return True
    if v in ("false", "f", "off", "no", "0"):
        return False
    raise ConfigError(f"drift: option {name} {value!r} is not a boolean", hint=f"{name} 'true' or {name} 'false'")


def _positive_float(value: str, name: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise ConfigError(f"drift: option {name} {value!r} is not a number") from None
    if not math.isfinite(out) or out <= 0:
        raise ConfigError(f"drift: option {name} must be a positive number of seconds, got {value!r}")
    return out
