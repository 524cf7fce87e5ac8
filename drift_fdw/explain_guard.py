"""Keep EXPLAIN from crashing the backend on conditions whose values are known only at run time.

Why: Multicorn2 3.2's ``ExplainForeignScan`` converts every pushed-down condition to Python, and for a
condition whose right side is not a constant (``query = (SELECT ...)``, ``id = ANY(ARRAY(SELECT ...))``, a
parameter of a generic plan in ``EXPLAIN EXECUTE``) it converts an unset datum (address 0): for array
and other by-reference types the backend dies with signal 11 and PostgreSQL restarts the whole cluster.
That happens in C, before ``DriftFDW.explain`` is called, so no Python code can catch it.

Contract:

* ``protect(instance)`` (called by ``DriftFDW.get_rel_size`` on every planning) makes sure the relation
  cache's ``FdwRoutine`` of the instance's foreign table points ``ExplainForeignScan`` at ``_explain``,
  a ctypes callback. The executor copies that routine into each scan, so every later EXPLAIN of the
  table (generic cached plans included) goes through it. Cheap when already done (three C calls).
* ``_explain(node, es)`` hides the scan's non-constant conditions from Multicorn for the duration of the
  call (their ``right_type`` is set to 0, which Multicorn skips, and restored afterwards), tells
  ``DriftFDW.explain`` how many it hid (``take_hidden()``), and calls Multicorn's own function: EXPLAIN
  then shows what drift pushes down, without the values nobody knows yet. When anything does not look
  exactly as expected it prints one line and does not call Multicorn at all (no crash, less detail).
* Only PostgreSQL 15 (struct offsets measured against its headers) with Multicorn2 3.x (its
  ``InstancesHash`` and ``MulticornExecState`` layouts) is protected; elsewhere ``protect`` does nothing.
* ``DriftFDW.explain`` must never raise: an ERROR raised by Multicorn inside ``_explain`` would jump
  over the Python frames of the callback.
"""

from __future__ import annotations

import ctypes
from typing import Any

# PostgreSQL 15, x86-64 / aarch64 (LP64): offsetof() measured against the server headers.
_PG_MAJOR = 15
_T_FOREIGN_SCAN_STATE = 87
_T_FDW_ROUTINE = 426
_T_PARAM = 112
_OFF_EXPLAIN_FOREIGN_SCAN = 232  # FdwRoutine.ExplainForeignScan
_OFF_FDW_STATE = 256  # ForeignScanState.fdw_state
_OFF_LIST_LENGTH, _OFF_LIST_ELEMENTS = 4, 16  # List (PostgreSQL 13+)
# Multicorn2 3.x: MulticornExecState {PyObject *fdw_instance; PyObject *p_iterator; List *target_list;
# List *qual_list; ...}; MulticornBaseQual {AttrNumber varattno; NodeTag right_type; ...};
# CacheEntry {Oid hashkey; PyObject *value; ...}.
_OFF_QUAL_LIST = 24
_OFF_RIGHT_TYPE = 4
_OFF_ENTRY_VALUE = 8
_HASH_SEQ_STATUS_BYTES = 64  # 24 in PostgreSQL 15; room to spare

_EXPLAIN_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_ORIGINAL_FN = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)  # keeps the GIL: Multicorn needs it
_state: dict[str, Any] = {"ready": None, "original": None, "hidden": 0, "relids": {}}


def _lib() -> Any:
    lib = ctypes.CDLL(None)
    for name, restype, argtypes in (
        ("GetConfigOptionByName", ctypes.c_char_p, [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_bool]),
        ("RelationIdGetRelation", ctypes.c_void_p, [ctypes.c_uint]),
        ("RelationClose", None, [ctypes.c_void_p]),
        ("GetFdwRoutineForRelation", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_bool]),
        ("hash_seq_init", None, [ctypes.c_void_p, ctypes.c_void_p]),
        ("hash_seq_search", ctypes.c_void_p, [ctypes.c_void_p]),
        ("hash_seq_term", None, [ctypes.c_void_p]),
        ("ExplainPropertyText", None, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _ready() -> Any:
    """The C library handle when the guard can work here, else None (decided once per backend)."""
    if _state["ready"] is None:
        _state["ready"] = False
        try:
            lib = _lib()
            ctypes.c_void_p.in_dll(lib, "InstancesHash")
            version = lib.GetConfigOptionByName(b"server_version_num", None, True)
            if version is not None and int(version) // 10000 == _PG_MAJOR:
                _state["ready"] = lib
        except (OSError, AttributeError, ValueError):
            pass
    return _state["ready"] or None


def _word(addr: int) -> int:
    return ctypes.c_void_p.from_address(addr).value or 0


def _int(addr: int) -> int:
    return ctypes.c_int.from_address(addr).value


def _relid(lib: Any, instance: Any) -> int | None:
    """The foreign table's OID: the key of Multicorn's ``InstancesHash`` entry holding ``instance``."""
    htab = ctypes.c_void_p.in_dll(lib, "InstancesHash").value
    if not htab:
        return None
    status = ctypes.create_string_buffer(_HASH_SEQ_STATUS_BYTES)
    lib.hash_seq_init(status, htab)
    found = None
    while True:
        entry = lib.hash_seq_search(status)
        if not entry:
            return found  # the scan ended by itself: no hash_seq_term
        if _word(entry + _OFF_ENTRY_VALUE) == id(instance):
            found = ctypes.c_uint.from_address(entry).value
            lib.hash_seq_term(status)
            return found


def protect(instance: Any) -> None:
    """Route EXPLAIN of ``instance``'s foreign table through ``_explain`` (see the module docstring)."""
    lib = _ready()
    if lib is None:
        return
    relids: dict[int, int] = _state["relids"]
    relid = relids.get(id(instance))
    if relid is None:
        relid = _relid(lib, instance)
        if relid is None:
            return
        relids[id(instance)] = relid
    rel = lib.RelationIdGetRelation(relid)
    if not rel:
        return
    try:
        routine = lib.GetFdwRoutineForRelation(rel, False)
        if not routine or _int(routine) != _T_FDW_ROUTINE:
            return
        slot = ctypes.c_void_p.from_address(routine + _OFF_EXPLAIN_FOREIGN_SCAN)
        mine = ctypes.cast(_CALLBACK, ctypes.c_void_p).value
        if slot.value == mine:
            return
        if _state["original"] is None:
            _state["original"] = _ORIGINAL_FN(slot.value)
        slot.value = mine
    finally:
        lib.RelationClose(rel)


def take_hidden() -> int:
    """How many conditions the running ``_explain`` hid from Multicorn (0 outside of it)."""
    return int(_state["hidden"])


def _quals(node: int) -> list[int] | None:
    """Addresses of the scan's Multicorn quals, or None when the node is not what we expect."""
    if _int(node) != _T_FOREIGN_SCAN_STATE:
        return None
    state = _word(node + _OFF_FDW_STATE)
    if not state or _word(state) not in _state["relids"]:
        return None  # fdw_instance must be one of this backend's DriftFDW instances
    lst = _word(state + _OFF_QUAL_LIST)
    if not lst:
        return []
    n = _int(lst + _OFF_LIST_LENGTH)
    cells = _word(lst + _OFF_LIST_ELEMENTS)
    if n < 0 or n > 10_000 or (n and not cells):
        return None
    return [_word(cells + 8 * i) for i in range(n)]


def _explain(node: int, es: int) -> None:
    try:
        quals = _quals(node) if node else None
        original = _state["original"]
        if quals is None or original is None or any(q == 0 for q in quals):
            lib = _ready()
            if lib is not None and es:
                lib.ExplainPropertyText(b"Multicorn", b"drift: (no details for this scan)", es)
            return
        hidden = [q for q in quals if _int(q + _OFF_RIGHT_TYPE) == _T_PARAM]
        for q in hidden:
            ctypes.c_int.from_address(q + _OFF_RIGHT_TYPE).value = 0
        _state["hidden"] = len(hidden)
        try:
            original(node, es)
        finally:
            _state["hidden"] = 0
            for q in hidden:
                ctypes.c_int.from_address(q + _OFF_RIGHT_TYPE).value = _T_PARAM
    except Exception:  # never let anything escape into C
        return


_CALLBACK = _EXPLAIN_FN(_explain)
