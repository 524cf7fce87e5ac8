"""Give the FDW's errors their SQLSTATE: Multicorn2 reports every one of them as XX000.

Why: ``multicorn.utils.log_to_postgres(message, ERROR, hint=...)`` raises a ``MulticornException`` that
Multicorn2 3.2's C side reports with ``errmsg`` and ``errhint`` only (there is no way to pass a code), so a
bad vector, an unknown collection and a stopped engine all reach the client as ``XX000 internal_error``,
while the ``drift.*`` functions report ``22023``, ``42704``, ``08006``, ... for the same problems.

Contract:

* ``fail(problem)`` never returns. It records ``(problem.sqlstate, problem.message)`` as the pending error
  of this backend, makes sure the hook below is installed, and raises through ``log_to_postgres(ERROR)``
  (the raised exception also carries ``sqlstate``, for code that re-raises it elsewhere, see ``copyin``).
* The hook is an ``emit_log_hook``, installed once per backend, chained to whatever hook was there before
  (called after ours, so it sees the final code). When PostgreSQL reports an error whose level is ERROR,
  whose code is still XX000 and whose message is byte for byte the pending message, it sets the error's
  ``sqlerrcode`` to the pending SQLSTATE and clears the pending error. It touches nothing else, never
  raises, and every other report passes through unchanged.
* Guarded: installed only on PostgreSQL 15 (``server_version_num``) on an LP64 platform, where the
  ``ErrorData`` offsets below were measured against ``utils/elog.h`` (``tests/pg/test_fdw_sqlstate.py``
  checks them against the installed server headers). Elsewhere ``fail`` still raises the same ERROR, as
  XX000. Self-checking: a report is changed only when level, current code and message all match, which a
  wrong layout cannot produce by accident. ``installed()`` tells whether the hook is in place.
* Limits: the code is set when the error is *reported* (``EmitErrorReport``): what the client, the server
  log and an uncaught error in PL/Python or PL/pgSQL show. A handler that catches the error before it is
  reported (PL/pgSQL ``EXCEPTION WHEN``, ``plpy.SPIError`` in PL/Python) still sees XX000; match those on
  the message (drift's own catchers use ``claim(message)`` to get the code back). With ``log_min_messages``
  above ERROR PostgreSQL calls no hook and the code stays XX000.
  Messages are compared as UTF-8 (the database encoding of drift's clusters; ASCII messages match in
  any encoding).
* The hook's state lives on the ``sys`` module, so a re-import of this module reuses the installed hook
  (PostgreSQL keeps its address for the life of the backend) instead of stacking a second one.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, NoReturn

# PostgreSQL 15, LP64: offsetof(ErrorData, ...) in utils/elog.h.
PG_MAJOR = 15
OFF_ELEVEL = 0
OFF_SQLERRCODE = 48
OFF_MESSAGE = 56
ERROR_LEVEL = 21  # ERROR in utils/elog.h

_HOOK_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_PREVIOUS_FN = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)  # keeps the GIL while the previous hook runs


def encode_sqlstate(code: str) -> int:
    """PostgreSQL's ``MAKE_SQLSTATE``: five characters packed six bits each."""
    if len(code) != 5 or not all(c.isdigit() or "A" <= c <= "Z" for c in code):
        raise ValueError(f"not a SQLSTATE: {code!r}")
    return sum(((ord(c) - ord("0")) & 0x3F) << (6 * i) for i, c in enumerate(code))


_INTERNAL = encode_sqlstate("XX000")
_state: dict[str, Any] = sys.__dict__.setdefault(
    "_drift_errcodes_state", {"ready": None, "hook": None, "previous": None, "pending": None, "applied": 0}
)


def _lib() -> Any:
    lib = ctypes.CDLL(None)
    fn = lib.GetConfigOptionByName
    fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_bool]
    return lib


def _install() -> bool:
    """Install the hook in this backend if it can work here (decided once)."""
    if _state["ready"] is None:
        _state["ready"] = False
        try:
            lib = _lib()
            slot = ctypes.c_void_p.in_dll(lib, "emit_log_hook")
            version = lib.GetConfigOptionByName(b"server_version_num", None, True)
            if ctypes.sizeof(ctypes.c_void_p) != 8 or version is None or int(version) // 10000 != PG_MAJOR:
                return False
            hook = _HOOK_FN(_hook)
            _state["previous"] = _PREVIOUS_FN(slot.value) if slot.value else None
            _state["hook"] = hook  # PostgreSQL keeps the address: the object must live as long as the backend
            slot.value = ctypes.cast(hook, ctypes.c_void_p).value
            _state["ready"] = True
        except (OSError, AttributeError, ValueError):
            return False
    return bool(_state["ready"])


def installed() -> bool:
    """True when this backend's errors get their SQLSTATE from ``fail``."""
    return bool(_state["ready"])


def _apply(edata: int) -> None:
    pending = _state["pending"]
    if pending is None:
        return
    if ctypes.c_int.from_address(edata + OFF_ELEVEL).value != ERROR_LEVEL:
        return
    code = ctypes.c_int.from_address(edata + OFF_SQLERRCODE)
    if code.value != _INTERNAL:
        return
    message = ctypes.c_void_p.from_address(edata + OFF_MESSAGE).value
    if not message or ctypes.string_at(message) != pending[1]:
        return
    code.value = pending[0]
    _state["pending"] = None
    _state["applied"] += 1


def _hook(edata: int | None) -> None:
    try:
        if edata:
            _apply(edata)
    except Exception:  # never let anything escape into C
        _state["pending"] = None
    previous = _state["previous"]
    if previous is not None:
        previous(edata)


def claim(message: str) -> str | None:
    """The pending SQLSTATE when ``message`` is the pending error's message (and then no longer pending).

    For code that catches the FDW's error before PostgreSQL reports it (``plpy.SPIError`` in the ``drift.*``
    functions and the COPY trigger) and raises it again with its SQLSTATE."""
    pending = _state["pending"]
    if pending is None or message.encode("utf-8", "replace") != pending[1]:
        return None
    _state["pending"] = None
    code = pending[0]
    return "".join(chr(((code >> (6 * i)) & 0x3F) + ord("0")) for i in range(5))


def fail(problem: Any) -> NoReturn:
    """Raise ``problem`` (``message``, ``hint``, ``sqlstate``) as a PostgreSQL ERROR with its SQLSTATE."""
    from multicorn.utils import ERROR, log_to_postgres

    message, hint, sqlstate = str(problem.message), problem.hint, problem.sqlstate or "XX000"
    try:
        code = encode_sqlstate(sqlstate)
    except ValueError:
        code, sqlstate = _INTERNAL, "XX000"
    try:
        if code != _INTERNAL and _install():
            _state["pending"] = (code, message.encode("utf-8", "replace"))
    except Exception:  # the error itself matters more than its code
        _state["pending"] = None
    try:
        log_to_postgres(message, ERROR, hint=hint)
    except Exception as exc:
        exc.sqlstate = sqlstate  # type: ignore[attr-defined]
        raise
    raise AssertionError("log_to_postgres(ERROR) returned")  # pragma: no cover - it always raises
