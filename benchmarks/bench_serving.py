"""`duorank bench serving`: the HTTP service under 1, 4 and 16 concurrent clients, for the
default (the ranking stage) and the previous default (the cross-encoder over the tower's top
100) side by side in one run, and the default again with 2 worker processes (`serve --workers
2`) and, when ``DUORANK_REDIS_URL`` names a Redis, with its users read from the online user
store by 2 worker processes that hold no user data (`users publish`, then `serve --user-store
--workers 2`).

Starts ``duorank serve`` as a separate process on 127.0.0.1 (so the load generator does not
share its interpreter) once per configuration, then each client, a kept-alive connection of the
light asyncio generator (:mod:`benchmarks.latency.loadgen`), sends ``POST /recommend``
(candidates=100, k=10) for random ml-latest-small users, bounded in count and time. Each
16-client level (the throughput targets') runs three passes and reports the pass of median
throughput (the host is shared; a pass lasts seconds). The two workers' 16-client level runs
once more under httpx in a thread per client (the generator of the earlier runs), so the
generators' own cost shows in one run. Reports p50/p95/p99 latency, throughput, errors and 429s,
and the per-stage split the server returns (the ranking stage's `candidates`, `rank` and
`p_like`; the cross-encoder's `rerank`). The cross-encoder's single-stream ceiling is 1 / its
median rerank time at one client. One more single-client level asks the default for explanations
(``explain: true``, the explorer page's call), so their cost is measured beside the plain call.
A cross-encoder whose head gives the text no weight serves from its features alone (no
transformer pass, the same scores): its row says so, and the default-against-previous target is
then left out.

Quality kept: the served fast path and the ranking stage before the latency levers (LightGBM's
thread pool, OpenMP's default wait) each score the ranker's validation lists one request at a
time in a process of their own (:func:`benchmarks.latency.harness.fast_path_quality`); the
targets are the ratio of their NDCG@10 and the Spearman correlation of their orders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.contract import BenchContext, BenchReport, Target
from benchmarks.latency.harness import fast_path_quality
from benchmarks.latency.server import ASYNCIO, HTTPX, PASSES, busiest, level, rss_mb, serve_process


def _publish_users(ctx: BenchContext) -> None:
    """``duorank users publish`` into the home's dataset's users (the store the server reads)."""
    exe = Path(sys.executable).with_name("duorank")
    subprocess.run(
        [str(exe), "--home", str(ctx.home), "--log-level", "WARNING", "users", "publish"],
        check=True,
        capture_output=True,
    )


DEFAULT = "ranking stage (default)"
PREVIOUS = "cross-encoder over the tower's top 100 (previous default)"
PREVIOUS_TEXT_FREE = (
    "tower's top 100, P(like) from the cross-encoder's features (previous default; its head "
    "gives the text no weight, so no transformer pass)"
)
EXPLAINED = "ranking stage + explain (the explorer page's call)"
WORKERS = "ranking stage, 2 worker processes"
USER_STORE = "ranking stage, users read from the online user store (Redis), 2 worker processes"


def _rps(rows: list[dict[str, Any]], config: str, clients: int, generator: str = ASYNCIO) -> float:
    """The throughput of ``config`` at ``clients`` under ``generator`` (NaN when not run)."""
    found = [
        r
        for r in rows
        if r["config"] == config and r["clients"] == clients and r["generator"] == generator
    ]
    return round(found[0]["throughput_rps"], 2) if found else float("nan")


def _latency_targets(rows: list[dict[str, Any]], single: dict[str, dict[str, Any]]) -> list[Target]:
    """The serving targets: the default's latency and throughput, what explanations cost, and
    the default against the previous default."""
    targets: list[Target] = []
    if DEFAULT in single:
        one = single[DEFAULT]
        p_like = one.get("p_like_p95_ms", float("nan"))

        targets += [
            Target("default: P(like) p95 ms at 1 client", round(p_like, 3), 5.0, "<="),
            Target("default: end-to-end p95 ms at 1 client", round(one["p95_ms"], 2), 50.0, "<="),
            Target(
                "default: p99 / p95 at 1 client", round(one["p99_ms"] / one["p95_ms"], 3), 1.5, "<="
            ),
            Target(
                "default: req/s at 16 clients",
                _rps(rows, DEFAULT, 16),
                20.0,
            ),
            Target(
                "default: req/s at 16 clients, 2 worker processes",
                _rps(rows, WORKERS, 16),
                150.0,
            ),
            Target(
                "default: req/s at 16 clients, 2 worker processes, httpx threads generator",
                _rps(rows, WORKERS, 16, HTTPX),
                150.0,
            ),
            Target(
                "default: end-to-end p95 ms at 1 client (moonshot)",
                round(one["p95_ms"], 2),
                20.0,
                "<=",
            ),
        ]
    if USER_STORE in single:
        targets += [
            Target(
                "user store: end-to-end p95 ms at 1 client",
                round(single[USER_STORE]["p95_ms"], 2),
                25.0,
                "<=",
            ),
            Target("user store: req/s at 16 clients", _rps(rows, USER_STORE, 16), 150.0),
        ]
    if DEFAULT in single and EXPLAINED in single:
        targets.append(
            Target(
                "1 client: explain p95 / default p95 (cheap enough for the page)",
                round(single[EXPLAINED]["p95_ms"] / single[DEFAULT]["p95_ms"], 3),
                1.5,
                "<=",
            )
        )
    if DEFAULT in single and PREVIOUS in single:  # a cross-encoder that reads its text
        targets.append(
            Target(
                "1 client: default p95 / previous default's p95",
                round(single[DEFAULT]["p95_ms"] / single[PREVIOUS]["p95_ms"], 3),
                1.0,
                "<=",
            )
        )
    return targets


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs a dataset, index and ranker (and, for the previous default, a reranker) under
    the home (run the quickstart, then `train reranker` for the comparison)."""
    from catalog.store import load_catalog

    ctx = ctx or BenchContext()
    data = ctx.home / "datasets" / "ml-latest-small"
    reranker = ctx.home / "models" / "reranker"
    ranker = ctx.home / "models" / "ranker"
    backend = "onnx-int8" if (reranker / "onnx" / "model-int8.onnx").is_file() else "torch"
    users = sorted(set(load_catalog(data).interactions.user_ids.tolist()))
    configs: dict[str, list[str]] = {}
    if (ranker / "ranker.json").is_file():
        configs[DEFAULT] = ["--ranker", str(ranker)]
        configs[WORKERS] = ["--ranker", str(ranker), "--workers", "2"]
        if os.environ.get("DUORANK_REDIS_URL"):  # a server both processes reach
            _publish_users(ctx)
            configs[USER_STORE] = ["--ranker", str(ranker), "--user-store", "--workers", "2"]
    previous = PREVIOUS
    if (reranker / "reranker.json").is_file():
        from rerank.cross_encoder.inference import unweighted_text_head

        previous = PREVIOUS_TEXT_FREE if unweighted_text_head(reranker) else PREVIOUS
        configs[previous] = ["--no-ranker"]
    if not configs:
        raise RuntimeError(f"no ranker or reranker under {ctx.home / 'models'}: run quickstart")
    # p99 of 120 calls is their second-worst: 600 make the tail targets mean something.
    per_level = 30 if quick else 600
    passes = 1 if quick else PASSES
    budget = 60.0 if quick else 240.0
    rows: list[dict[str, Any]] = []
    memory: dict[str, list[float]] = {}
    for name, extra in configs.items():
        with serve_process(ctx.home, backend, extra) as (url, pid):
            for clients in (1, 4):
                rows.append({"config": name, **level(url, users, clients, per_level, budget)})
            rows.append({"config": name, **busiest(url, users, per_level, budget, passes)})
            if name == WORKERS:  # the earlier runs' generator, on the same servers
                rows.append(
                    {"config": name, **busiest(url, users, per_level, budget, passes, HTTPX)}
                )
            if name == DEFAULT:  # what explanations cost, on the same server
                explained = level(url, users, 1, per_level, budget, {"explain": True})
                rows.append({"config": EXPLAINED, **explained})
            memory[name] = rss_mb(pid)  # after the load: each process's resident set
    errors = sum(r.get("errors_every_pass", r["errors"]) for r in rows)
    targets = [Target("errors at every level (every pass)", errors, 0, "<=")]
    quality: dict[str, Any] = {}
    if DEFAULT in configs:
        quality = fast_path_quality(ctx, quick)
        targets += [
            Target(
                "quality: fast path NDCG@10 / unoptimised stage's (validation lists)",
                round(quality["ndcg_ratio"], 4),
                0.99,
            ),
            Target(
                "quality: Spearman of the fast path's and the unoptimised stage's orders",
                round(quality["spearman_top10"], 4),
                0.99,
            ),
        ]
    single = {r["config"]: r for r in rows if r["clients"] == 1}
    targets += _latency_targets(rows, single)
    ceiling = float("nan")
    if PREVIOUS in single and single[PREVIOUS]["rerank_median_s"]:
        ceiling = 1.0 / single[PREVIOUS]["rerank_median_s"]
        for row in rows:
            if row["config"] == PREVIOUS:
                row["throughput_vs_ceiling"] = row["throughput_rps"] / ceiling
    return BenchReport(
        name="serving",
        params={
            "quick": quick,
            "backend": backend,
            "configs": {k: v for k, v in configs.items()},
            "previous_default": previous if previous in configs else None,
            "candidates": 100,
            "k": 10,
            "requests_per_level": per_level,
            "time_budget_s": budget,
            "max_in_flight": 1,
            "max_queue": 64,
            "cross_encoder_single_stream_ceiling_rps": ceiling,
        },
        results={"levels": rows, "quality": quality, "rss_mb_by_process": memory},
        targets=targets,
        table=[
            {k: v for k, v in r.items() if not k.startswith(("embed", "retrieve"))} for r in rows
        ],
    )
