"""L1 index building blocks (DESIGN §5, §7, §8): pure functions and small data types, no I/O.

- ``adc``: numba ADC kernels scanning SQ8 codes (fused decode, skip masks, bounded top-R heap) and the exact
  float32 re-rank; ``adc.warmup()`` loads every query-path kernel.
- ``topk``: the (distance, row) max-heap the scan kernels share, and ``TopK`` to accumulate across blocks.
- ``routing``: ``RoutingTable`` (one per snapshot) and drift-aware bucket routing (``route``, ``route_batch``).
- ``buckets``: ``BucketHeader`` (centroid, live count, running sums, extents; versioned bytes) and
  ``routing_table`` to build a snapshot's table from headers.
- ``train``: k-means (k-means++ seeding, sample-based Lloyd) and nearest-centroid ``assign``.

Distances follow pgvector everywhere: l2 = Euclidean, ip = −dot, cosine = 1 − cos (unit vectors).
"""
