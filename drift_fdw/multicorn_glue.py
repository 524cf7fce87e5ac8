"""Multicorn's own per-statement Python work that drift can take off safely.

Contract of ``memoise_helper_classes()``: Multicorn's C code resolves its helper classes by name through
``multicorn.get_class`` on every statement (``multicorn.Qual``, ``multicorn.SortKey``,
``multicorn.ColumnDefinition``: four lookups, each splitting the name and importing the module again).
This replaces ``multicorn.get_class`` with a wrapper that remembers the classes of the ``multicorn``
package itself (fixed for the life of the backend) and passes every other name (the wrappers' own classes,
resolved once per foreign table) to the original. Idempotent; a ``multicorn`` without ``get_class`` is
left alone.
"""

from __future__ import annotations

from typing import Any

import multicorn

_HELPERS = "multicorn."


def memoise_helper_classes() -> None:
    """See the module docstring."""
    original = getattr(multicorn, "get_class", None)
    if original is None or getattr(original, "drift_memoised", False):
        return
    known: dict[str, Any] = {}

    def get_class(module_path: str) -> Any:
        cls = known.get(module_path)
        if cls is None:
            cls = original(module_path)
            if module_path.startswith(_HELPERS) and module_path.count(".") == 1:
                known[module_path] = cls
        return cls

    get_class.drift_memoised = True  # type: ignore[attr-defined]
    get_class.original = original  # type: ignore[attr-defined]
    multicorn.get_class = get_class
