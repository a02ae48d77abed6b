"""Benchmarks for Tillflow; ``python -m bench.ingest`` (``make bench``) is the ingest benchmark.

Not part of the installed package: run from the repository root.
"""
