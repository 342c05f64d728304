"""Offline quality and speed benchmarks, and the metrics they use."""
