"""Reproducible benchmarks for drift (run with ``python -m bench.run``; see ``bench/README.md``).

Modules: ``common`` (threads, timing, recall, RSS, JSON, plots), ``ann`` (recall@10 vs queries/s for
drift, FAISS IVF-SQ8 / IVF-Flat and hnswlib), ``kernel`` (ADC scan throughput in code bytes/s),
``run`` (the command line). Importing this package has no side effects; ``bench.run`` pins every
numeric library to one thread before numpy, numba or faiss is imported.
"""
