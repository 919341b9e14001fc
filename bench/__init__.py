"""Benchmarks: scripts that print numbers (``make bench``, ``python -m bench.run``)."""
