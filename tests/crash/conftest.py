"""Fixtures of the crash matrix: ``crash_stats`` collects runs / crashes per point for the terminal summary."""

from __future__ import annotations

from typing import Any

import pytest

_STATS: dict[str, dict[str, Any]] = {}


@pytest.fixture
def crash_stats() -> dict[str, dict[str, Any]]:
    return _STATS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STATS:
        return
    terminalreporter.write_sep("-", "crash matrix: runs / crashed at the point / failed / op in flight at the crash")
    for key in sorted(_STATS):
        s = _STATS[key]
        line = f"{key:40s} {s['runs']:4d} runs  {s['crashed']:4d} crashed  {s['failed']:3d} failed"
        if s.get("in_flight"):
            line += "  in flight: " + ", ".join(f"{k} {v}" for k, v in sorted(s["in_flight"].items()))
        terminalreporter.write_line(line)
