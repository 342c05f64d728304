"""Each configuration in a fresh interpreter (its own thread pools and heap, and its own
``OMP_WAIT_POLICY``, which OpenMP reads when it loads): the child entry points, and the parent's
side that starts them and reads their one line of JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, percentile
from benchmarks.latency.agreement import compare_orders
from benchmarks.latency.configs import (
    CASCADE_DEPTHS,
    DEFAULT,
    REFERENCE_DEPTH,
    UNOPTIMISED,
    Config,
)
from benchmarks.latency.quality import validation_stage


def time_calls(call: Callable[[str], Any], users: Sequence[str], warmup: int) -> dict[str, Any]:
    """p50/p95/p99 (ms) of every call and of each stage the calls report."""
    for user in users[:warmup]:
        call(user)
    total: list[float] = []
    stages: dict[str, list[float]] = {}
    for user in users:
        started = time.perf_counter()
        out = call(user)
        total.append((time.perf_counter() - started) * 1000)
        for name, ms in out.timings_ms.items():
            stages.setdefault(name, []).append(ms)
    row: dict[str, Any] = {
        "calls": len(total),
        "p50_ms": percentile(total, 50),
        "p95_ms": percentile(total, 95),
        "p99_ms": percentile(total, 99),
    }
    for name, values in stages.items():
        for p in (50, 95, 99):
            row[f"{name}_p{p}_ms"] = percentile(values, p)
    return row


def child() -> None:
    """Times one configuration in this (fresh) process: reads its spec from stdin, prints
    one JSON object, per depth a timing row."""
    spec = json.loads(sys.stdin.read())
    home = Path(spec["home"])
    import rerank.ranker.model
    from catalog import ItemTextTemplate
    from catalog.store import load_catalog
    from rerank import Reranker
    from rerank.ranker.model import GBDTRanker
    from serving.recommender import Recommender

    if spec["threaded_trees"]:
        rerank.ranker.model.SERIAL_ROWS = 0
    catalog = load_catalog(home / "datasets" / "ml-latest-small")
    reranker = None
    state_bytes = None
    if spec["reranker"]:
        cache = None
        if spec["item_cache"]:
            from retrieval.cache import EmbeddingCache
            from retrieval.redis_client import open_redis

            client, _server = open_redis(spec["redis_url"], home / "redis")
            cache = EmbeddingCache(client, namespace="duorank:bench-items", dtype="float16")
        reranker = Reranker(
            home / "models" / spec["folder"],
            backend=spec["reranker"],
            spin=spec["spin"],
            skip_unweighted_text=not spec["text_pass"],
            item_cache=cache,
        )
        if cache is not None:  # the nightly step: every item's states in Redis
            texts = [t for t in map(ItemTextTemplate().render, catalog.items.values()) if t]
            states = reranker.item_states(texts)
            state_bytes = 2 * sum(x.size for x in states) / len(states)
    ranker = None
    if spec["cascade"] or not spec["reranker"]:
        ranker = GBDTRanker.load(home / "models" / "ranker")
        if spec["cascade"]:  # without its own P(like) head the cross-encoder scores the top k
            ranker.like = None
    recommender = Recommender(home / "index", catalog, reranker, ranker=ranker)
    if ranker is not None and recommender.ranker is None:
        raise RuntimeError("the ranker under the home did not beat the tower on validation")
    calls: dict[str, Callable[[str], Any]] = {}
    if spec["cascade"]:  # the ranker's top N through the cross-encoder: k = N
        for n in CASCADE_DEPTHS:
            calls[str(n)] = partial(recommender.recommend, k=n, candidates=REFERENCE_DEPTH)
    else:
        for depth in spec["depths"]:
            calls[str(depth)] = partial(recommender.recommend, k=10, candidates=depth)
    out = {key: time_calls(call, spec["users"], spec["warmup"]) for key, call in calls.items()}
    if state_bytes is not None:
        for row in out.values():
            row["float16_state_bytes_per_item"] = state_bytes
    print(json.dumps(out))


def run_child(entry: str, spec: dict[str, Any], wait_policy: str | None, name: str) -> Any:
    """``entry`` (a function of this module) in a fresh interpreter whose OMP_WAIT_POLICY is
    ``wait_policy`` (None: unset), ``spec`` on its stdin; returns its last line of JSON."""
    code = f"from benchmarks.latency.harness import {entry}; {entry}()"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if done.returncode:
        raise RuntimeError(f"{name}: the child process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_child(
    config: Config,
    home: Path,
    users: Sequence[str],
    warmup: int,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter with ``config``'s thread-wait policy."""
    spec = {
        **asdict(config),
        "home": str(home.resolve()),
        "users": list(users),
        "warmup": warmup,
        "redis_url": redis_url,
    }
    rows: dict[str, Any] = run_child("child", spec, config.wait_policy, config.name)
    return rows


def quality_child() -> None:
    """Scores the validation lists one request at a time, as a served call does (the stage's
    candidates and features for one request, then the ranker on its rows), in this (fresh)
    process; prints each list's item columns, scores and NDCG@10."""
    spec = json.loads(sys.stdin.read())
    import rerank.ranker.model
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import list_ndcg10

    if spec["threaded_trees"]:
        rerank.ranker.model.SERIAL_ROWS = 0
    home = Path(spec["home"])
    ranker = GBDTRanker.load(home / "models" / "ranker")
    stage, setup = validation_stage(home, spec["redis_url"], ranker)
    val = setup.validation
    cols = np.array([stage.names.index(c) for c in ranker.names], dtype=np.int64)
    out: dict[str, list[Any]] = {"items": [], "scores": [], "ndcg": []}
    for i in range(min(spec["lists"], len(val.requests))):
        one = stage.lists(
            val.requests[i : i + 1],
            val.excludes[i : i + 1],
            val.targets[i : i + 1],
            batch=1,
            depths={"tower": REFERENCE_DEPTH},
        )
        scores = ranker.score(one.x[:, cols])
        out["items"].append(one.cols.tolist())
        out["scores"].append(scores.tolist())
        out["ndcg"].append(float(list_ndcg10(scores, one)[0]))
    print(json.dumps(out))


def fast_path_quality(ctx: BenchContext, quick: bool) -> dict[str, Any]:
    """The served fast path against the unoptimised ranking stage on the validation lists,
    each side in its own process with its own thread settings: NDCG@10 of each, their ratio,
    and the mean Spearman correlation and top-10 overlap of the two orders (the same
    measures as the depth curve)."""
    spec = {
        "home": str(ctx.home.resolve()),
        "redis_url": ctx.redis_url,
        "lists": 150 if quick else 1_000_000,
    }
    fast_config = Config(DEFAULT)
    sides = {
        config.name: run_child(
            "quality_child",
            {**spec, "threaded_trees": config.threaded_trees},
            config.wait_policy,
            config.name,
        )
        for config in (UNOPTIMISED, fast_config)
    }
    return {
        "unoptimised": UNOPTIMISED.name,
        "fast_path": fast_config.name,
        **compare_orders(sides[UNOPTIMISED.name], sides[fast_config.name]),
    }
