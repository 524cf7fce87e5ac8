"""Moved to ``drift_engine.l1.snapshot`` (the L1 package); this name stays for the modules that still import it here."""

from drift_engine.l1.snapshot import SnapshotManager

__all__ = ["SnapshotManager"]
