"""Background work on L1: flush (janitor), and the SPFresh-style maintenance of DESIGN §9.

It changes L1 only through ``drift_engine.l1`` (never the engine façade); ``drift_engine.api`` wires its workers
into each collection.

* ``janitor``   — flushes frozen memtables into L1;
* ``scheduler`` — per-bucket drift statistics, job urgency (the priority queue), the rate-limited Maintainer;
* ``runner``    — runs jobs under the L1 lock (``Collection.maintain``, the Maintainer, the write path's hard cap);
* ``split`` / ``merge`` / ``compact`` — plan one job each (split with neighbour stealing and re-centring,
  scatter merge and reassignment, bucket and tiered segment compaction) as an ``l1.rewrite.Plan``, which
  ``l1.rewrite.commit`` applies (compare-and-set, segment, one LMDB transaction, publish, retire);
* ``verify``    — the L1 consistency check (every live vector in exactly one bucket, exact statistics, LMDB
  agrees with the segments).
"""
