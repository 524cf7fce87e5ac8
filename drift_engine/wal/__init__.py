"""The write-ahead log (WAL): every write is a record here before it touches the memtable.

* ``log.WriteAheadLog`` -- append-only files ``wal/NNNNNNNNNNNNNNNN.log`` of framed, CRC32C-checked
  records with consecutive lsns; group-committed ``fdatasync`` (``sync`` / ``batch`` / ``off``
  durability); at open (``recovery``) a torn tail -- a short write -- is truncated, any other damage
  (a complete record failing its checksum, even the last one) refuses to open; ``replay(after_lsn)``
  / ``records(after_lsn)`` for recovery and ``truncate_upto(applied_lsn)`` once L1 has committed.
* ``frame`` -- the byte format (file header, record frame, CRC) and record classification.
* ``records`` -- record type constants (UPSERT, DELETE, CREATE, DROP, PARAMS) and their compact,
  versioned binary bodies.  A batch is one record, so it is atomic.

Contracts (ordering, durability, thread-safety) are in each module's docstring.
"""
