"""Moved to ``drift_engine.l1.layout`` (the L1 package); this name stays for the modules that still import it here."""

from drift_engine.l1.layout import (
    DB_LOC,
    DB_META,
    DB_PAYLOAD,
    KEY_APPLIED_LSN,
    KEY_CONFIG,
    Location,
    kv_dir,
    segments_dir,
)

__all__ = ["DB_LOC", "DB_META", "DB_PAYLOAD", "KEY_APPLIED_LSN", "KEY_CONFIG", "Location", "kv_dir", "segments_dir"]
