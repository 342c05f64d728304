"""`duorank bench latency`: where one recommend call's time goes, lever by lever, and what each
lever does to quality.

In this process (the :class:`serving.recommender.Recommender`, no HTTP: ``bench serving``
measures the server), one call at a time, the same random users for every configuration, a
few warm-up calls first. Per configuration: end-to-end and per-stage p50/p95/p99.

1. **Levers**, in the order they were applied to the first default (the cross-encoder over
   the tower's top 100, torch fp32): the backend ``auto`` picks for this CPU; ONNX int8 with
   ONNX Runtime's threads spinning between runs (its default) and not (ours: the user
   embedding's tail); the ranking stage instead of the cross-encoder (the default). Needs a
   reranker under the home (``train reranker``, ``rerank export``) for the first rows.
2. **Candidate depth**: the tower's depth from 10 to 200 (the other sources at their
   defaults). Quality on the ranker's own validation lists (the training split's histories,
   each user's validation event, the served tower and tables fitted on the training split, as
   ``train ranker`` validates): NDCG@10 of the ranker's order, its ratio to depth 100's (the
   trained depth, the unoptimised reference), and agreement with depth 100's order: mean
   Spearman correlation of the two rankings over the union of their top 10s (an item outside
   a top 10 ranks 11th) and mean top-10 overlap. Latency from the served Recommender at each
   depth.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target

DEPTHS = (10, 20, 50, 100, 200)
REFERENCE_DEPTH = 100
BEFORE = "cross-encoder, tower top 100, torch fp32 (first default)"


def _pct(values: Sequence[float], p: float) -> float:
    return float(np.percentile(values, p)) if len(values) else float("nan")


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
        "p50_ms": _pct(total, 50),
        "p95_ms": _pct(total, 95),
        "p99_ms": _pct(total, 99),
    }
    for name, values in stages.items():
        for p in (50, 95, 99):
            row[f"{name}_p{p}_ms"] = _pct(values, p)
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
    from duorank.jobs import ranker_validation
    from duorank.settings import Settings
    from rerank.candidates import CandidateStage
    from rerank.ranker_train import list_ndcg10
    from rerank.tables import ALSParams

    settings = Settings(home=ctx.home, redis_url=ctx.redis_url or "")
    card = ranker.record
    setup = ranker_validation(
        settings, ctx.home / "datasets" / "ml-latest-small", ctx.home / "models" / "tower"
    )
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


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs the quickstart's home (dataset, tower, ranker, an index built with them); the
    cross-encoder rows need ``train reranker`` (and ``rerank export`` for ONNX)."""
    from catalog.store import load_catalog
    from rerank import Reranker
    from rerank.gbdt import GBDTRanker
    from rerank.inference import exported, resolve_backend
    from serving.recommender import Recommender

    ctx = ctx or BenchContext()
    models = ctx.home / "models"
    catalog = load_catalog(ctx.home / "datasets" / "ml-latest-small")
    ranker = GBDTRanker.load(models / "ranker")
    reranker_dir = models / "reranker"
    users = sorted(catalog.users) or sorted(set(catalog.interactions.user_ids.tolist()))
    calls = 60 if quick else 300
    sample = random.Random(0).choices(users, k=calls)
    warmup = 5 if quick else 20

    levers: list[dict[str, Any]] = []

    def measure(name: str, recommender: Recommender, depth: int = REFERENCE_DEPTH) -> None:
        def call(user: str) -> Any:
            return recommender.recommend(user, k=10, candidates=depth)

        levers.append({"configuration": name, **_time_calls(call, sample, warmup)})

    auto = "none"
    if (reranker_dir / "reranker.json").is_file():
        auto = resolve_backend(reranker_dir, "auto")
        configs: list[tuple[str, str, bool]] = [(BEFORE, "torch", False)]
        if auto != "torch":
            configs.append((f"+ backend auto ({auto})", auto, False))
        if exported(reranker_dir, "onnx-int8"):
            configs += [
                (
                    "cross-encoder, ONNX int8, threads spinning (ONNX Runtime's default)",
                    "onnx-int8",
                    True,
                ),
                ("cross-encoder, ONNX int8, threads sleeping (ours)", "onnx-int8", False),
            ]
        for name, backend, spin in configs:
            reranker = Reranker(reranker_dir, backend=backend, spin=spin)
            measure(name, Recommender(ctx.home / "index", catalog, reranker))
            del reranker
    served = Recommender(ctx.home / "index", catalog, None, ranker=ranker)
    if served.ranker is None:
        raise RuntimeError("the ranker under the home did not beat the tower on validation")
    measure("ranking stage: features, trees, P(like) head (default)", served)

    quality = _depth_quality(ctx, ranker, quick)
    for row in quality:

        def call(user: str, depth: int = row["depth"]) -> Any:
            return served.recommend(user, k=10, candidates=depth)

        row.update(_time_calls(call, sample, warmup))
    reference = next(r for r in quality if r["depth"] == REFERENCE_DEPTH)
    within = [r["depth"] for r in quality if r["ndcg_vs_reference"] >= 0.99]
    smallest = min(within) if within else REFERENCE_DEPTH
    default = levers[-1]
    targets = [
        Target("default: p95 ms, 1 stream, in process", round(default["p95_ms"], 2), 50.0, "<="),
        Target("default: p99 / p95", round(default["p99_ms"] / default["p95_ms"], 3), 1.5, "<="),
        Target(
            f"depth {smallest} (smallest within 1%): NDCG@10 / depth {REFERENCE_DEPTH}'s",
            round(next(r for r in quality if r["depth"] == smallest)["ndcg_vs_reference"], 4),
            0.99,
        ),
    ]
    spinning = [r for r in levers if "spinning" in r["configuration"]]
    sleeping = [r for r in levers if "sleeping" in r["configuration"]]
    if spinning and sleeping:
        targets.append(
            Target(
                "cross-encoder path: embed p95 / p50 with sleeping threads",
                round(sleeping[0]["embed_p95_ms"] / sleeping[0]["embed_p50_ms"], 2),
                3.0,
                "<=",
            )
        )
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
        },
        results={"levers": levers, "depth": quality, "smallest_depth_within_1pct": smallest},
        targets=targets,
        table=[
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k in ("configuration", "p50_ms", "p95_ms", "p99_ms")
                    or k.endswith("p50_ms")
                    or k.endswith("p95_ms")
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
