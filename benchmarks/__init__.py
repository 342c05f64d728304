"""Offline quality (``benchmarks.evaluation``, the baselines in ``benchmarks.baselines``) and
speed benchmarks (``bench_*.py``, each a ``duorank bench NAME``) with their JSON contract; the
metrics themselves live in the ``metrics`` package."""
