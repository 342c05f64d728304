"""`duorank bench scale-encode`: `bench scale`'s encoding rows at 1M items, in one run.

One configuration takes most of an hour on 2 cores, so this is a benchmark of its own rather
than a size of `bench scale`: the 1M synthetic catalog (2k with ``--quick``) encoded by the
bundled MiniLM without a cache, on Ray Data with 2 encoder actors (the configuration a nightly
build uses), then on Ray with 1 actor (the longest row: one core's torch), then in this process
(the local build's path), in that order: the efficiency pair comes first because it is the
figure the run exists for. The record is written after every row (``"complete": false`` until
the last), so a run stopped early still leaves the rows it finished, side by side on one
machine.

The figures are those of `bench scale`: items per second per configuration, the efficiency of
2 actors against 1 (wall-clock ratio over 2) and Ray against the local path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.bench_scale import _encode_local, _encode_ray, synthetic_items
from benchmarks.contract import BenchContext, BenchReport, Target

#: Rows in the order they run: (engine, workers).
CONFIGS: tuple[tuple[str, int], ...] = (("ray", 2), ("ray", 1), ("local", 1))


def report(n: int, quick: bool, rows: list[dict[str, Any]]) -> BenchReport:
    """The record of the rows finished so far (targets only once their inputs exist)."""
    seconds = {(r["engine"], r["workers"]): float(r["seconds"]) for r in rows}
    results: dict[str, Any] = {"encode": rows}
    targets = []
    if ("ray", 1) in seconds and ("ray", 2) in seconds:
        efficiency = seconds["ray", 1] / seconds["ray", 2] / 2
        results["ray_2_vs_1_efficiency"] = efficiency
        targets.append(
            Target(
                f"Ray: 2 actors vs 1, efficiency on 2 cores at {n:,} items",
                round(efficiency, 3),
                0.5,
            )
        )
    if ("local", 1) in seconds:
        for workers in (1, 2):
            if ("ray", workers) in seconds:
                results[f"ray_{workers}_vs_local"] = seconds["local", 1] / seconds["ray", workers]
    return BenchReport(
        name="scale-encode",
        params={
            "quick": quick,
            "items": n,
            "order": [f"{e} x{w}" for e, w in CONFIGS],
            "model": "all-MiniLM-L6-v2 (bundled)",
            "ray_cpus": 2,
            "complete": len(rows) == len(CONFIGS),
        },
        results=results,
        targets=targets,
        table=rows,
    )


def run(
    quick: bool,
    ctx: BenchContext | None = None,
    encode: Callable[[str, int, dict[str, Any], Any], float] | None = None,
) -> BenchReport:
    """Runs the rows, writing the record after each (``encode`` times one configuration;
    tests pass their own)."""
    import ray

    from retrieval.encoder import Encoder

    ctx = ctx or BenchContext()
    n = 2_000 if quick else 1_000_000
    items = synthetic_items(n)
    encoder: Any = None
    if encode is None:
        encoder = Encoder(device="cpu")
        _encode_local(synthetic_items(64), encoder)  # warm the model

        def encode(engine: str, workers: int, items: dict[str, Any], enc: Any) -> float:
            if engine == "local":
                return _encode_local(items, enc)
            if not ray.is_initialized():
                ray.init(
                    num_cpus=2,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            return _encode_ray(items, enc, workers)

    rows: list[dict[str, Any]] = []
    try:
        for engine, workers in CONFIGS:
            if engine == "local" and ray.is_initialized():
                ray.shutdown()  # the local row shares the cores with nothing (Ray rows restart it)
            took = encode(engine, workers, items, encoder)
            rows.append(
                {
                    "part": "encode",
                    "engine": engine,
                    "workers": workers,
                    "items": n,
                    "seconds": took,
                    "items_per_s": n / took,
                }
            )
            report(n, quick, rows).write(ctx.output)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return report(n, quick, rows)
