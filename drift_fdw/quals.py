"""From Multicorn quals to what the engine is asked (``ScanPlan``), and what EXPLAIN says about it.

Contract of ``plan_scan(quals, spec, dim)``:

* ``query = v`` (one vector; a second, different one is an error) -> a kNN stream ordered by distance.
  ``query`` is echoed back on every row exactly as given, so PostgreSQL's re-check of it passes.
* ``distance < x`` / ``<= x`` -> the stream stops after the first row farther than the smallest such x.
  Other distance conditions are left to PostgreSQL. A distance condition without ``query`` is an error.
* ``id = x`` / ``id = ANY(...)`` (several intersect) -> a point lookup; ``id IS NULL`` matches nothing.
* ``k = n`` (rows wanted: the first round's size and a cap), ``nprobe = n``, ``ef = n``, ``rerank = n``:
  knobs for this query, echoed back. Any other operator on them is an error.
* ``field = value`` on an integer, boolean or text payload column -> pushed down as an equality filter
  (two different values for one field match nothing). Everything else (other operators, IN lists,
  floats, jsonb, NULL tests) stays with PostgreSQL, which re-checks every qual anyway.
* Values arrive as text or as Python values (see ``rows``); malformed ones raise ``ValueProblem``.
  ``vectors=False`` keeps the query value unparsed (``query_echo`` is its literal); ``parse_query(plan,
  dim)`` parses it later, with the same checks (the FDW's kNN scan may leave the parse to the server).
  During planning and EXPLAIN, parameters have no value yet (``None``): the plan then only describes
  itself. With ``executing=True`` (the scan itself) a NULL query or knob is an error (22004): ``query IS
  NULL``, ``query = $1`` or ``k = $1`` with a NULL parameter would otherwise return nothing, or the defaults,
  without saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift_fdw.options import KNOB_ROLES, TableSpec
from drift_fdw.rows import (
    NULL_VALUE,
    ValueProblem,
    echo_vector,
    filter_value,
    parse_float,
    parse_int,
    parse_vector,
)

_LIMITS = {"k": (1, 10_000), "nprobe": (1, 1_000_000), "ef": (1, 100_000), "rerank": (1, 1_000)}


@dataclass
class ScanPlan:
    query: np.ndarray | None = None
    query_echo: str | None = None
    query_value: Any = None  # the query as Multicorn gave it, when the plan was made without parsing it
    query_col: Any = None
    ids: list[int] | None = None
    max_distance: float | None = None
    filter: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, int] = field(default_factory=dict)  # k, nprobe, ef, rerank
    empty: bool = False  # the quals contradict each other: no rows
    pushed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # left to PostgreSQL

    @property
    def mode(self) -> str:
        if self.empty:
            return "empty"
        if self.ids is not None:
            return "lookup"
        if self.query is not None or self.query_echo is not None:
            return "knn"
        return "scan"


def _op(qual: Any) -> tuple[str, bool]:
    """(operator, is an ANY list)."""
    op = qual.operator
    if isinstance(op, tuple):
        return op[0], bool(op[1])
    return op, False


def describe(qual: Any) -> str:
    op, is_any = _op(qual)
    if isinstance(qual.operator, tuple):
        return f"{qual.field_name} {op} {'ANY' if is_any else 'ALL'}(...)"
    value = qual.value
    if isinstance(value, list | tuple) and len(value) > 4:
        shown = f"<{len(value)} values>"
    elif isinstance(value, str) and len(value) > 40:
        shown = f"<{value[:20]}...>"
    else:
        shown = repr(value)
    return f"{qual.field_name} {op} {shown}"


def plan_scan(
    quals: list[Any], spec: TableSpec, dim: int | None, *, vectors: bool = True, executing: bool = False
) -> ScanPlan:
    """The plan for these quals; ``vectors=False`` (planning) skips parsing the query vector; ``executing``
    refuses NULL query and knob values (see the module docstring)."""
    plan = ScanPlan()
    for qual in quals:
        col = spec.columns.get(qual.field_name)
        if col is None:
            plan.left.append(describe(qual))
            continue
        op, is_any = _op(qual)
        list_op = isinstance(qual.operator, tuple)
        value = qual.value
        role = col.role
        if role == "query":
            _query(plan, qual, op, list_op, col, dim, vectors, executing)
        elif role == "distance":
            _distance(plan, qual, op, list_op)
        elif role == "id":
            _ids(plan, qual, op, is_any, list_op)
        elif role in KNOB_ROLES:
            _knob(plan, qual, op, list_op, role, executing)
        elif role == "field" and op == "=" and not list_op and value is not None:
            ok, fval = filter_value(value, col)
            if not ok:
                plan.left.append(describe(qual))
            elif col.key in plan.filter and plan.filter[col.key] != fval:
                plan.empty = True
            else:
                plan.filter[col.key] = fval
                plan.pushed.append(f"filter {col.key} = {json.dumps(fval)}")
        else:
            plan.left.append(describe(qual))
    if plan.max_distance is not None and plan.query_echo is None and not plan.empty:
        raise ValueProblem(
            "drift: a distance condition needs a query vector",
            hint="add  query = '{...}'  to the WHERE clause (distance is only defined against a query)",
        )
    return plan


def _query(
    plan: ScanPlan, qual: Any, op: str, list_op: bool, col: Any, dim: int | None, parse: bool, executing: bool
) -> None:
    if op != "=" or list_op:
        raise ValueProblem(
            f"drift: {qual.field_name} only takes  {qual.field_name} = <vector>", hint="the query column is an input"
        )
    if qual.value is None and executing:  # query IS NULL, or a NULL parameter
        raise ValueProblem(
            f"drift: {qual.field_name} is NULL; a kNN search needs a query vector",
            hint=f"write  {qual.field_name} = '{{0.1,0.2,...}}'  with a non-NULL vector",
            sqlstate=NULL_VALUE,
        )
    if qual.value is None:  # a parameter while planning or during EXPLAIN
        plan.query_echo = plan.query_echo or "$param"
        plan.pushed.append("kNN stream: query = <parameter>")
        return
    echo = echo_vector(qual.value, col)
    if plan.query_echo is not None and plan.query_echo != echo:
        raise ValueProblem("drift: two different query vectors in one scan", hint="give one  query = ...  condition")
    plan.query_echo = echo
    if not parse:
        plan.query_value, plan.query_col = qual.value, col
        plan.pushed.append("kNN stream: query = <vector>, rows in distance order")
        return
    plan.query = parse_vector(qual.value, col, dim)
    plan.pushed.append(f"kNN stream: query = <{plan.query.size}-d vector>, rows in distance order")


def parse_query(plan: ScanPlan, dim: int | None) -> np.ndarray | None:
    """``plan.query``, parsed (once) from the value a plan made with ``vectors=False`` kept; raises
    ``ValueProblem`` as ``plan_scan`` would have."""
    if plan.query is None and plan.query_value is not None:
        plan.query = parse_vector(plan.query_value, plan.query_col, dim)
    return plan.query


def _distance(plan: ScanPlan, qual: Any, op: str, list_op: bool) -> None:
    if op in ("<", "<=") and not list_op and qual.value is not None:
        bound = parse_float(qual.value, "a distance bound")
        if plan.max_distance is None or bound < plan.max_distance:
            plan.max_distance = bound
        plan.pushed.append(f"range: stop after distance > {bound:g}")
    elif op in ("<", "<=") and not list_op:
        plan.max_distance = float("inf")  # EXPLAIN of a parameter: the bound is known at run time
        plan.pushed.append("range: stop after distance > <parameter>")
    else:
        plan.left.append(describe(qual))


def _ids(plan: ScanPlan, qual: Any, op: str, is_any: bool, list_op: bool) -> None:
    if op != "=" or (list_op and not is_any):
        plan.left.append(describe(qual))
        return
    if qual.value is None:
        if list_op:  # a parameter list during EXPLAIN
            plan.ids = plan.ids if plan.ids is not None else []
            plan.pushed.append("point lookup: id = ANY(<parameter>)")
        else:
            plan.empty = True  # id IS NULL, or a NULL parameter
        return
    values = qual.value if list_op else [qual.value]
    ids = {parse_int(v, "id") for v in values if v is not None}
    plan.ids = sorted(ids) if plan.ids is None else [i for i in plan.ids if i in ids]
    if not plan.ids:
        plan.empty = True
    plan.pushed.append(f"point lookup: {len(plan.ids)} id(s)")


def _knob(plan: ScanPlan, qual: Any, op: str, list_op: bool, role: str, executing: bool) -> None:
    if op != "=" or list_op:
        raise ValueProblem(
            f"drift: {qual.field_name} is a per-query setting and only takes  {qual.field_name} = <integer>",
            hint=f"e.g.  AND {qual.field_name} = 10",
        )
    if qual.value is None and executing:  # k IS NULL, or a NULL parameter
        low, high = _LIMITS[role]
        raise ValueProblem(
            f"drift: {qual.field_name} must not be NULL",
            hint=f"give an integer from {low} to {high}, or leave the condition out for the default",
            sqlstate=NULL_VALUE,
        )
    if qual.value is None:
        plan.pushed.append(f"{role} = <parameter>")
        return
    value = parse_int(qual.value, qual.field_name)
    low, high = _LIMITS[role]
    if not low <= value <= high:
        raise ValueProblem(f"drift: {qual.field_name} = {value} is out of range [{low}, {high}]")
    if role in plan.knobs and plan.knobs[role] != value:
        plan.empty = True
    plan.knobs[role] = value
    plan.pushed.append(f"{role} = {value}")
