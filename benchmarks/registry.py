"""Benchmark names and the modules that run them (imported lazily: each pulls heavy deps)."""

from __future__ import annotations

import importlib

from benchmarks.contract import BenchContext, BenchReport

BENCHMARKS: dict[str, str] = {
    "baselines": "benchmarks.bench_baselines",
    "metrics": "benchmarks.bench_metrics",
    "retrieval": "benchmarks.bench_retrieval",
    "indexer": "benchmarks.bench_indexer",
    "rerank": "benchmarks.bench_rerank",
    "serving": "benchmarks.bench_serving",
    "scale": "benchmarks.bench_scale",
    "scale-encode": "benchmarks.bench_scale_encode",
    "latency": "benchmarks.bench_latency",
    "cascade": "benchmarks.bench_cascade",
    "cold-dropout": "benchmarks.bench_cold_dropout",
    "short-histories": "benchmarks.bench_short_histories",
    "ranker-folds": "benchmarks.bench_ranker_folds",
    "online-scale": "benchmarks.bench_online_scale",
    "catalog-scale": "benchmarks.bench_catalog_scale",
    "stage-tables": "benchmarks.bench_stage_tables",
    "feast": "benchmarks.bench_feast",
    "live-events": "benchmarks.bench_live_events",
    "like-head": "benchmarks.bench_like_head",
}


def run_benchmark(name: str, quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Runs benchmark ``name``.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHMARKS))}")
    module = importlib.import_module(BENCHMARKS[name])
    report: BenchReport = module.run(quick, ctx or BenchContext())
    return report
