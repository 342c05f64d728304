"""`duorank bench latency`: where one recommend call's time goes, lever by lever, and what each
lever does to quality.

Each configuration runs in a fresh interpreter (its own thread pools and heap, and its own
``OMP_WAIT_POLICY``, which OpenMP reads when it loads) that builds the
:class:`serving.recommender.Recommender` and calls it in process (no HTTP: ``bench serving``
measures the server), one call at a time, for the same random users, after a few warm-up
calls. Per configuration: end-to-end and per-stage p50/p95/p99.

1. **Levers**, in the order they were applied to the first default (the cross-encoder over
   the tower's top 100, torch fp32): the backend ``auto`` picks for this CPU; ONNX int8 with
   ONNX Runtime's threads spinning between runs (its default), then sleeping; every OpenMP
   pool sleeping when idle; the ranking stage instead of the cross-encoder, first with
   LightGBM's thread pool for a request's rows, then on the calling thread; the default. The
   cross-encoder rows need a reranker under the home (``train reranker``, ``rerank export``).
2. **Candidate depth**: the tower's depth from 10 to 200 (the other sources at their
   defaults). Quality on the ranker's own validation lists (the training split's histories,
   each user's validation event, the served tower and tables fitted on the training split, as
   ``train ranker`` validates): NDCG@10 of the ranker's order, its ratio to depth 100's (the
   trained depth, the unoptimised reference), and agreement with depth 100's order: mean
   Spearman correlation of the two rankings over the union of their top 10s (an item outside
   a top 10 ranks 11th) and mean top-10 overlap. The fast path's depth is the smallest that
   keeps NDCG@10 within 1% and Spearman >= 0.99. Latency from the default's process at each
   depth.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target, percentile

DEPTHS = (10, 20, 50, 100, 200)
REFERENCE_DEPTH = 100
BEFORE = "cross-encoder, tower top 100, torch fp32 (first default)"


def _time_calls(call: Callable[[str], Any], users: Sequence[str], warmup: int) -> dict[str, Any]:
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


def _order_agreement(
    a: np.ndarray, b: np.ndarray, ids_a: Sequence[int], ids_b: Sequence[int]
) -> tuple[float, float]:
    """Spearman correlation of two rankings over the union of their top 10s (items outside a
    top 10 rank 11th) and the overlap of the two top 10s."""
    top_a = [ids_a[i] for i in np.argsort(-a, kind="stable")[:10]]
    top_b = [ids_b[i] for i in np.argsort(-b, kind="stable")[:10]]
    union = list(dict.fromkeys(top_a + top_b))
    rank_a = np.array([top_a.index(i) + 1 if i in top_a else 11 for i in union], np.float64)
    rank_b = np.array([top_b.index(i) + 1 if i in top_b else 11 for i in union], np.float64)
    if np.array_equal(rank_a, rank_b):
        rho = 1.0
    elif rank_a.std() == 0 or rank_b.std() == 0:
        rho = 0.0
    else:
        rho = float(np.corrcoef(rank_a, rank_b)[0, 1])  # ranks already: Pearson = Spearman
    return rho, len(set(top_a) & set(top_b)) / 10


def _depth_quality(ctx: BenchContext, ranker: Any, quick: bool) -> list[dict[str, Any]]:
    """NDCG@10 and agreement with the reference depth on the validation lists."""
    from catalog import ItemTextTemplate
    from catalog.store import load_catalog
    from rerank.candidates import CandidateStage
    from rerank.ranker_train import list_ndcg10, ranker_validation
    from rerank.tables import ALSParams
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder
    from retrieval.redis_client import open_redis
    from retrieval.vectors import ItemVectors

    card = ranker.record
    catalog = load_catalog(ctx.home / "datasets" / "ml-latest-small")
    template = ItemTextTemplate()
    ids = [i for i, item in catalog.items.items() if template.render(item)]
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")  # the build's cache
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        text = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    finally:
        client.close()
        if server is not None:
            server.close()
    setup = ranker_validation(catalog, text, ctx.home / "models" / "tower")
    stage_args = card.get("stage", {})
    stage = CandidateStage.build(
        setup.catalog.items,
        setup.histories,
        setup.tower,
        setup.index,
        setup.text_vectors,
        als=ALSParams(**stage_args["als"]) if "als" in stage_args else ALSParams(),
        depths=stage_args.get("depths"),
    )
    val = setup.validation
    n = 150 if quick else len(val.requests)
    requests, excludes, targets = val.requests[:n], val.excludes[:n], list(val.targets[:n])
    per_depth = {}
    for depth in DEPTHS:
        lists = stage.lists(requests, excludes, targets, depths={"tower": depth})
        cols = np.array([lists.names.index(c) for c in ranker.names], dtype=np.int64)
        scores = ranker.score(lists.x[:, cols])
        per_depth[depth] = (lists, scores, list_ndcg10(scores, lists))
    ref_lists, ref_scores, ref_ndcg = per_depth[REFERENCE_DEPTH]
    rows = []
    for depth, (lists, scores, ndcg) in per_depth.items():
        rhos, overlaps = [], []
        for i in range(len(lists.sizes)):
            a = slice(lists.offsets[i], lists.offsets[i + 1])
            b = slice(ref_lists.offsets[i], ref_lists.offsets[i + 1])
            rho, overlap = _order_agreement(
                scores[a], ref_scores[b], lists.cols[a].tolist(), ref_lists.cols[b].tolist()
            )
            rhos.append(rho)
            overlaps.append(overlap)
        rows.append(
            {
                "depth": depth,
                "lists": len(lists.sizes),
                "mean_candidates": float(np.mean(lists.sizes)),
                "ndcg@10": float(ndcg.mean()),
                "ndcg_vs_reference": float(ndcg.mean() / ref_ndcg.mean()),
                "spearman_top10_vs_reference": float(np.mean(rhos)),
                "top10_overlap_vs_reference": float(np.mean(overlaps)),
            }
        )
    return rows


@dataclass(frozen=True)
class Config:
    """One row of the levers table: what serves, and how the child process is set up."""

    name: str
    reranker: str | None = None  # a backend for the cross-encoder, or None: the ranking stage
    spin: bool = False  # ONNX Runtime's threads busy-wait between runs
    threaded_trees: bool = False  # LightGBM's OpenMP pool for a request's rows
    wait_policy: str | None = "PASSIVE"
    """OMP_WAIT_POLICY of the process (OpenMP reads it when it loads); None leaves it unset:
    OpenMP's default, idle threads spin a while before they sleep."""
    depths: tuple[int, ...] = (REFERENCE_DEPTH,)


def _child() -> None:
    """Times one configuration in this (fresh) process: reads its spec from stdin, prints
    one JSON object, per depth a timing row."""
    spec = json.loads(sys.stdin.read())
    home = Path(spec["home"])
    import rerank.gbdt
    from catalog.store import load_catalog
    from rerank import Reranker
    from rerank.gbdt import GBDTRanker
    from serving.recommender import Recommender

    if spec["threaded_trees"]:
        rerank.gbdt.SERIAL_ROWS = 0
    catalog = load_catalog(home / "datasets" / "ml-latest-small")
    if spec["reranker"]:
        reranker = Reranker(
            home / "models" / "reranker", backend=spec["reranker"], spin=spec["spin"]
        )
        recommender = Recommender(home / "index", catalog, reranker)
    else:
        ranker = GBDTRanker.load(home / "models" / "ranker")
        recommender = Recommender(home / "index", catalog, None, ranker=ranker)
        if recommender.ranker is None:
            raise RuntimeError("the ranker under the home did not beat the tower on validation")
    out = {}
    for depth in spec["depths"]:

        def call(user: str, depth: int = depth) -> Any:
            return recommender.recommend(user, k=10, candidates=depth)

        out[str(depth)] = _time_calls(call, spec["users"], spec["warmup"])
    print(json.dumps(out))


def _in_child(config: Config, home: Path, users: Sequence[str], warmup: int) -> dict[str, Any]:
    """:func:`_child` in a fresh interpreter with ``config``'s thread-wait policy."""
    spec = {**asdict(config), "home": str(home.resolve()), "users": list(users), "warmup": warmup}
    code = "from benchmarks.bench_latency import _child; _child()"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if config.wait_policy is not None:
        env["OMP_WAIT_POLICY"] = config.wait_policy
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode:
        raise RuntimeError(f"{config.name}: the timing process failed:\n{done.stderr[-3000:]}")
    rows: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


DEFAULT = "ranking stage: features, trees, P(like) head; threads sleep when idle (default)"


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs the quickstart's home (dataset, tower, ranker, an index built with them); the
    cross-encoder rows need ``train reranker`` (and ``rerank export`` for ONNX)."""
    from catalog.store import load_catalog
    from rerank.gbdt import GBDTRanker
    from rerank.inference import exported, resolve_backend

    ctx = ctx or BenchContext()
    models = ctx.home / "models"
    catalog = load_catalog(ctx.home / "datasets" / "ml-latest-small")
    ranker = GBDTRanker.load(models / "ranker")
    reranker_dir = models / "reranker"
    users = sorted(catalog.users) or sorted(set(catalog.interactions.user_ids.tolist()))
    calls = 60 if quick else 300
    sample = random.Random(0).choices(users, k=calls)
    warmup = 5 if quick else 20

    configs: list[Config] = []
    auto = "none"
    if (reranker_dir / "reranker.json").is_file():
        auto = resolve_backend(reranker_dir, "auto")
        configs.append(Config(BEFORE, reranker="torch", wait_policy=None))
        if auto != "torch":
            configs.append(Config(f"+ backend auto ({auto})", reranker=auto, wait_policy=None))
        if exported(reranker_dir, "onnx-int8"):
            configs += [
                Config(
                    "cross-encoder, ONNX int8, ONNX Runtime threads spinning (its default)",
                    reranker="onnx-int8",
                    spin=True,
                    wait_policy=None,
                ),
                Config(
                    "+ ONNX Runtime threads sleep between runs",
                    reranker="onnx-int8",
                    wait_policy=None,
                ),
                Config(
                    "+ OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)",
                    reranker="onnx-int8",
                ),
            ]
    configs += [
        Config(
            "ranking stage: features, trees (LightGBM's thread pool), P(like) head",
            threaded_trees=True,
            wait_policy=None,
        ),
        Config("+ a request's trees on the calling thread", wait_policy=None),
        Config(DEFAULT, depths=DEPTHS),
    ]
    levers: list[dict[str, Any]] = []
    by_depth: dict[str, Any] = {}
    for config in configs:
        rows = _in_child(config, ctx.home, sample, warmup)
        levers.append({"configuration": config.name, **rows[str(REFERENCE_DEPTH)]})
        if config.name == DEFAULT:
            by_depth = rows

    quality = _depth_quality(ctx, ranker, quick)
    for row in quality:
        row.update(by_depth[str(row["depth"])])
    reference = next(r for r in quality if r["depth"] == REFERENCE_DEPTH)
    # The fast path's depth: the smallest that keeps both quality bars against the trained
    # depth (NDCG@10 within 1%, the orders' Spearman >= 0.99).
    kept = [
        r["depth"]
        for r in quality
        if r["ndcg_vs_reference"] >= 0.99 and r["spearman_top10_vs_reference"] >= 0.99
    ]
    chosen = min(kept)
    default = levers[-1]
    targets = [
        Target("default: p95 ms, 1 stream, in process", round(default["p95_ms"], 2), 50.0, "<="),
        Target("default: p99 / p95", round(default["p99_ms"] / default["p95_ms"], 3), 1.5, "<="),
        Target(
            "default: user embedding p95 / p50",
            round(default["embed_p95_ms"] / default["embed_p50_ms"], 2),
            2.0,
            "<=",
        ),
        Target(
            "served depth = smallest depth within 1% NDCG@10 and Spearman >= 0.99",
            chosen,
            REFERENCE_DEPTH,
            "<=",
        ),
    ]
    return BenchReport(
        name="latency",
        params={
            "quick": quick,
            "calls": calls,
            "warmup": warmup,
            "k": 10,
            "backend_auto": auto,
            "depths": list(DEPTHS),
            "reference_depth": REFERENCE_DEPTH,
            "validation_lists": reference["lists"],
            "configs": [asdict(c) for c in configs],
        },
        results={"levers": levers, "depth": quality, "chosen_depth": chosen},
        targets=targets,
        table=[
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k == "configuration" or (k.endswith("_ms") and "_p99_" not in k)
                }
                for r in levers
            ),
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k
                    in (
                        "depth",
                        "mean_candidates",
                        "ndcg@10",
                        "ndcg_vs_reference",
                        "spearman_top10_vs_reference",
                        "top10_overlap_vs_reference",
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                    )
                }
                for r in quality
            ),
        ],
    )
