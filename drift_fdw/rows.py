"""Value conversion between PostgreSQL (as Multicorn hands values over) and the engine.

Contract:

* Input (qual values, inserted values): Multicorn passes most types as their PostgreSQL text form
  (``bigint`` -> ``'42'``, ``boolean`` -> ``'t'``, ``jsonb`` -> ``'{"a": 1}'``, ``real[]`` ->
  ``['0.5', '0.25']``, ``vector`` -> ``'[0.5,0.25]'``), some natively (``integer`` -> int, ``numeric``
  -> float, ``text`` -> str, ``date``/``timestamp`` -> datetime). Every function here accepts both forms
  and raises ``ValueProblem`` (message + hint + SQLSTATE) for anything malformed: never a bare
  ``ValueError``. SQLSTATEs: ``22P02`` for text that does not parse, ``22004`` for a NULL where a value is
  needed, ``22023`` for a value out of range (wrong dimension, NaN / Infinity, ...).
* Vectors come out as C-contiguous float32 1-d arrays, finite, of the expected dimension.
* Output: every value is returned in a form PostgreSQL's input function for the column accepts: ints,
  Python floats (Multicorn prints them with ``str``, which round-trips exactly), ``'t'``/``'f'``, JSON
  text, and array literals (``'{1,2}'``; ``'[1,2]'`` for pgvector). Never a numpy value or a Python list
  (a list is str()'d for partitions).
* Rows: ``RowMaker(spec, columns, echo, knobs, layout)`` builds a scan's rows as lists with one entry per
  column of the table, in the table's column order (Multicorn then reads them by position instead of
  looking up every column by name in a dict); columns the statement does not read are None, ``query`` and
  the knobs are filled in once per scan; ``RowLayout`` (where each column goes) is computed once per set of
  columns read.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from drift_engine.server.convert import vector_from_literal
from drift_fdw.options import ColumnSpec, TableSpec


class ValueProblem(Exception):
    """A value drift cannot convert (message + hint + SQLSTATE)."""

    def __init__(self, message: str, hint: str | None = None, sqlstate: str = "22023") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate


BAD_TEXT = "22P02"  # invalid_text_representation
NULL_VALUE = "22004"  # null_value_not_allowed


# ------------------------------------------------------------------------------------------ input
def parse_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueProblem(f"drift: {what} must be an integer, got {value!r}", sqlstate=BAD_TEXT)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueProblem(f"drift: {what} must be an integer, got {value!r}", sqlstate=BAD_TEXT) from None


def parse_float(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueProblem(f"drift: {what} must be a number, got {value!r}", sqlstate=BAD_TEXT) from None
    if math.isnan(out):
        raise ValueProblem(f"drift: {what} must not be NaN")
    return out


def parse_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("t", "true", "on", "yes", "1", "y"):
        return True
    if v in ("f", "false", "off", "no", "0", "n"):
        return False
    raise ValueProblem(f"drift: {what} must be a boolean, got {value!r}", sqlstate=BAD_TEXT)


def vector_items(value: Any, col: ColumnSpec) -> list[Any]:
    """The elements of a vector value: a list (``real[]``) or a ``'[..]'`` / ``'{..}'`` literal."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "{" and s[-1] == "}")):
            body = s[1:-1].strip()
            return body.split(",") if body else []
    raise ValueProblem(
        f"drift: column {col.name!r} got a malformed vector {str(value)[:60]!r}",
        hint="write vectors as '{0.1,0.2,...}' (real[]) or '[0.1,0.2,...]' (vector)",
        sqlstate=BAD_TEXT,
    )


def parse_vector(value: Any, col: ColumnSpec, dim: int | None) -> np.ndarray:
    """float32[dim] from a vector value; refuses NULL elements, NaN/Inf, nesting and a wrong length."""
    if isinstance(value, str):
        fast = vector_from_literal(value, dim)
        if fast is not None:
            return fast
    elif isinstance(value, list) and dim is not None and len(value) == dim:
        try:  # floats (PL/Python) or their texts (Multicorn): one numpy call; anything odd takes the slow path
            arr = np.array(value, dtype=np.float32)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.ndim == 1 and np.isfinite(arr).all():
            return arr
    items = vector_items(value, col)
    try:  # each element to a Python float, then float32 (a NULL element fails here too: checked below)
        with np.errstate(over="ignore"):  # beyond float32's range becomes Inf, refused below
            arr = np.array(list(map(float, items)), dtype=np.float32)
    except (TypeError, ValueError):
        if any(v is None for v in items):
            raise ValueProblem(
                f"drift: the vector in column {col.name!r} has a NULL element", sqlstate=NULL_VALUE
            ) from None
        raise ValueProblem(
            f"drift: the vector in column {col.name!r} has an element that is not a number",
            hint="a vector is a flat list of numbers, e.g. '{0.1,0.2}'",
            sqlstate=BAD_TEXT,
        ) from None
    if arr.size == 0:
        raise ValueProblem(f"drift: the vector in column {col.name!r} is empty")
    if dim is not None and arr.size != dim:
        raise ValueProblem(
            f"drift: the vector in column {col.name!r} has {arr.size} dimensions; the collection has {dim}",
            hint=f"pass exactly {dim} numbers",
        )
    if not np.isfinite(arr).all():
        raise ValueProblem(
            f"drift: the vector in column {col.name!r} contains NaN or Infinity",
            hint="every element must be a finite number",
        )
    return arr


def echo_vector(value: Any, col: ColumnSpec) -> str:
    """The literal of a query value exactly as PostgreSQL gave it, so its re-check of ``query = ...`` passes."""
    if isinstance(value, str):
        return value
    try:
        return "{" + ",".join(value) + "}"  # Multicorn hands array elements over as their text
    except TypeError:  # other values (NULL elements: refused when the vector is parsed)
        return "{" + ",".join(str(v) for v in value) + "}"


def payload_value(value: Any, col: ColumnSpec) -> Any:
    """The JSON value stored in the payload for a column value given to INSERT / UPDATE (None = omit)."""
    if value is None:
        return None
    what = f"column {col.name!r}"
    kind = col.kind
    if kind == "int":
        return parse_int(value, what)
    if kind in ("float", "numeric"):
        out = float(value) if not isinstance(value, str) else parse_float(value, what)
        if not math.isfinite(out):
            raise ValueProblem(f"drift: {what} holds {value!r}; payload values must be finite numbers")
        return out
    if kind == "bool":
        return parse_bool(value, what)
    if kind == "json":
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueProblem(f"drift: {what} is not valid JSON: {value[:60]!r}", sqlstate=BAD_TEXT) from None
        return value
    if kind == "array":
        items = value if isinstance(value, list | tuple) else _array_items(value, what)
        sub = ColumnSpec(col.name, "field", col.type_name[:-2], col.elem)
        return [payload_value(v, sub) for v in items]
    if isinstance(value, _dt.date | _dt.datetime | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value if isinstance(value, str) else str(value)


def _array_items(value: Any, what: str) -> list[Any]:
    s = str(value).strip()
    if s.startswith("{") and s.endswith("}") and '"' not in s:
        body = s[1:-1]
        return [None if v.strip() == "NULL" else v.strip() for v in body.split(",")] if body else []
    raise ValueProblem(f"drift: {what} has an array value drift cannot read: {s[:60]!r}", sqlstate=BAD_TEXT)


# ------------------------------------------------------------------------------------------ output
def vector_literal(vec: np.ndarray, pgvector: bool) -> str:
    """``'{..}'`` (``real[]``) or ``'[..]'`` (pgvector); each element parses back to the same float32."""
    body = ",".join(_f32_text(vec))
    return f"[{body}]" if pgvector else f"{{{body}}}"


def _f32_text(vec: np.ndarray) -> list[str]:
    """8 significant digits where they round-trip to the same float32 (most values), else 9 (always do)."""
    values = np.asarray(vec, dtype=np.float32).ravel()
    floats = values.tolist()
    out = [f"{x:.8g}" for x in floats]
    for i in np.flatnonzero(np.array(out, dtype=np.float32) != values).tolist():
        out[i] = f"{floats[i]:.9g}"
    return out


def pg_value(value: Any, col: ColumnSpec, ident: int) -> Any:
    """A payload value as the column's PostgreSQL text (None = NULL); refuses values the type cannot hold."""
    if value is None:
        return None
    kind = col.kind
    try:
        if kind == "json":
            return json.dumps(value)
        if kind == "text":
            return value if isinstance(value, str) else json.dumps(value)
        if kind == "int":
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not integral:
                raise TypeError
            return int(value)
        if kind in ("float", "numeric"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError
            return repr(float(value))
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return "t" if value else "f"
        if kind == "array":
            if not isinstance(value, list):
                raise TypeError
            return array_literal(value)
        if kind == "vector":
            if not isinstance(value, list):
                raise TypeError
            return "[" + ",".join(repr(float(v)) for v in value) + "]"
    except (TypeError, ValueError):
        raise ValueProblem(
            f"drift: payload field {col.key!r} of id {ident} holds {json.dumps(value)[:60]}, "
            f"which column {col.name!r} ({col.type_name}) cannot hold",
            hint="change the column's type (jsonb takes anything) or fix the payload",
        ) from None
    return value if isinstance(value, str) else json.dumps(value)


def array_literal(items: Sequence[Any]) -> str:
    """A PostgreSQL array literal of scalar JSON values (strings quoted and escaped)."""
    parts = []
    for v in items:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, bool):
            parts.append("t" if v else "f")
        elif isinstance(v, int | float):
            parts.append(repr(v))
        else:
            s = v if isinstance(v, str) else json.dumps(v)
            parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def filter_value(value: Any, col: ColumnSpec) -> tuple[bool, Any]:
    """(pushable, JSON value) for ``field = value``: integer, boolean and text columns only.

    Floats are not pushed down: the engine matches JSON text exactly, and ``1`` and ``1.0`` differ there
    while PostgreSQL calls them equal; PostgreSQL filters those rows itself.
    """
    if value is None or col.kind not in ("int", "bool", "text"):
        return False, None
    try:
        return True, payload_value(value, col)
    except ValueProblem:
        return False, None


class RowLayout:
    """Where a scan's columns go in a row (one entry per table column, in table order): computed once per set
    of columns read (``DriftFDW`` keeps one per set), shared by the ``RowMaker`` of every scan reading it."""

    __slots__ = ("distance_at", "id_at", "knob_at", "others", "query_at", "size")

    def __init__(self, spec: TableSpec, columns: set[str] | frozenset[str]) -> None:
        self.size = len(spec.columns)
        self.id_at: tuple[int, ...] = ()
        self.distance_at: tuple[int, ...] = ()
        self.query_at: tuple[int, ...] = ()
        self.knob_at: tuple[tuple[int, str], ...] = ()
        self.others: tuple[tuple[int, ColumnSpec], ...] = ()  # embedding, field and payload columns
        for i, (name, c) in enumerate(spec.columns.items()):
            if name not in columns:
                continue
            if c.role == "id":
                self.id_at += (i,)
            elif c.role == "distance":
                self.distance_at += (i,)
            elif c.role == "query":
                self.query_at += (i,)
            elif c.role in ("field", "embedding", "payload"):
                self.others += ((i, c),)
            else:  # knobs
                self.knob_at += ((i, c.role),)


class RowMaker:
    """A scan's rows as lists in the table's column order (see the module docstring).

    ``make(ident, distance, vector, payload)`` gives one row: ``distance`` None for scans without a query,
    ``vector`` / ``payload`` None when the columns that show them are not read. ``rows(ids, distances)``
    gives the rows of hits that need neither (``layout.others`` empty), in one loop.
    """

    def __init__(
        self,
        spec: TableSpec,
        columns: set[str] | frozenset[str],
        echo: str | None,
        knobs: dict[str, int],
        layout: RowLayout | None = None,
    ) -> None:
        lay = layout if layout is not None else RowLayout(spec, columns)
        self.layout = lay
        template: list[Any] = [None] * lay.size
        for i in lay.query_at:
            template[i] = echo
        for i, role in lay.knob_at:
            template[i] = knobs.get(role)
        self.template = template
        self.id_at = lay.id_at
        self.distance_at = lay.distance_at
        self.others = lay.others

    def make(self, ident: int, distance: float | None, vector: Any, payload: Any) -> list[Any]:
        row = self.template.copy()
        for i in self.id_at:
            row[i] = ident
        if distance is not None and self.distance_at:
            value = float(distance)
            for i in self.distance_at:
                row[i] = value
        for i, c in self.others:
            if c.role == "field":
                row[i] = pg_value(payload.get(c.key), c, ident) if payload else None
            elif c.role == "embedding":
                row[i] = None if vector is None else vector_literal(vector, c.pgvector)
            else:
                row[i] = None if payload is None else pg_value(payload, c, ident)
        return row

    def rows(self, ids: Sequence[int], distances: Sequence[float]) -> list[list[Any]]:
        """``[make(i, d, None, None) for i, d in zip(ids, distances)]`` for floats ``distances``, with no
        call per row (only for a layout without ``others``: the caller checks)."""
        template = self.template
        out = []
        if len(self.id_at) == 1 and len(self.distance_at) == 1:  # the common shape: one id, one distance column
            at_id, at_distance = self.id_at[0], self.distance_at[0]
            for ident, distance in zip(ids, distances, strict=True):
                row = template.copy()
                row[at_id] = ident
                row[at_distance] = distance
                out.append(row)
            return out
        for ident, distance in zip(ids, distances, strict=True):
            row = template.copy()
            for i in self.id_at:
                row[i] = ident
            for i in self.distance_at:
                row[i] = distance
            out.append(row)
        return out
