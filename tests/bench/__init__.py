"""Benchmarks for portfolio-stream (SPEC §12): `make bench` or `python -m tests.bench`.

Not collected by pytest (``norecursedirs``); ``tests/test_bench_smoke.py`` runs a tiny pass.
"""
