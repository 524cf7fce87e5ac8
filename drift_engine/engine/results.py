"""The engine's result types: defined in ``drift_engine.results`` (light, shared with the clients)."""

from drift_engine.results import GetResult, SearchResult, StreamBatch, StreamHit

__all__ = ["GetResult", "SearchResult", "StreamBatch", "StreamHit"]
