"""L0: the memtable — recent vectors in an hnswlib graph (``hnsw.MemTable``), with replace, deletes and
tombstones that also hide older copies in L1.  One writer at a time, any number of concurrent readers; the
full contract (distances, visibility, thread-safety) is in ``hnsw``'s module docstring."""
