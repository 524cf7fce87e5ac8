"""Disk formats and I/O: pages (4 KiB blocks, CRC32C, pread/pwrite), segment (.drift files),
sq8 (scalar quantisation), cache (S3-FIFO, bounded in bytes), kv (LMDB).  Each module's docstring
states its contract."""
