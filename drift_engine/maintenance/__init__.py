"""Background work on L1: flush (janitor), and the SPFresh-style maintenance of DESIGN §9.

* ``janitor``   — flushes frozen memtables into L1;
* ``scheduler`` — per-bucket drift statistics, job urgency (the priority queue), the rate-limited Maintainer;
* ``runner``    — runs jobs under the L1 lock (``Collection.maintain``, the Maintainer, the write path's hard cap);
* ``split`` / ``merge`` / ``compact`` — plan one job each (split with neighbour stealing and re-centring,
  scatter merge and reassignment, bucket and tiered segment compaction);
* ``rewrite``   — the one primitive they share: segment, one LMDB transaction with compare-and-set, publish;
* ``verify``    — the L1 consistency check (every live vector in exactly one bucket, exact statistics, LMDB
  agrees with the segments).
"""
