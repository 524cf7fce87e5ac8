"""L1: the buckets on disk (DESIGN §5, §7) — their state, its versions, and the one protocol that changes it.

Used alike by the engine (flush, bulk write, train, reads) and by maintenance (split, merge, compaction);
it imports neither.

* ``layout``   — a collection's folders and the LMDB record formats;
* ``snapshot`` — immutable L1 versions, pins, epoch-based retirement of segment files, payload history;
* ``hydrate``  — rebuilding the first snapshot from LMDB + segment files at open (LMDB is the truth);
* ``segments`` — writing new segment files grouped by bucket (step 1 of the commit order);
* ``commit``   — ``L1Store`` and ``L1Change``: the commit order itself (segments -> one LMDB transaction ->
  publish -> retire), with the crash points of each kind;
* ``batch``    — a flush or bulk write as one commit;
* ``train``    — k-means over every live row and the new layout as one commit;
* ``rewrite``  — the plan a maintenance job makes (rows to move, buckets to create, drop or re-derive) and
  its commit with compare-and-set.
"""
