"""Moved to ``drift_engine.l1.hydrate`` (the L1 package); this name stays for the modules that still import it here."""

from drift_engine.l1.hydrate import load_snapshot, referenced_segments

__all__ = ["load_snapshot", "referenced_segments"]
