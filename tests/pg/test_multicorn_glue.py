"""``multicorn_glue.memoise_helper_classes``: Multicorn's helper classes resolve as before, once."""

from __future__ import annotations

import sys
import types

import pytest

multicorn = pytest.importorskip("multicorn")

from drift_fdw import multicorn_glue  # noqa: E402 - needs multicorn, checked above


def test_helper_classes_resolve_to_the_same_classes_and_others_pass_through() -> None:
    multicorn_glue.memoise_helper_classes()
    first = multicorn.get_class
    multicorn_glue.memoise_helper_classes()  # idempotent: no wrapper around the wrapper
    assert multicorn.get_class is first
    for name in ("Qual", "SortKey", "ColumnDefinition"):
        assert multicorn.get_class(f"multicorn.{name}") is getattr(multicorn, name)
        assert multicorn.get_class(f"multicorn.{name}") is getattr(multicorn, name)
    module = types.ModuleType("drift_glue_probe")
    module.Wrapper = type("Wrapper", (), {})
    sys.modules["drift_glue_probe"] = module
    try:
        assert multicorn.get_class("drift_glue_probe.Wrapper") is module.Wrapper
        module.Wrapper = type("Replaced", (), {})  # a wrapper's own class is looked up every time, as before
        assert multicorn.get_class("drift_glue_probe.Wrapper") is module.Wrapper
    finally:
        del sys.modules["drift_glue_probe"]
    with pytest.raises((ImportError, AttributeError)):
        multicorn.get_class("multicorn.NoSuchClass")
