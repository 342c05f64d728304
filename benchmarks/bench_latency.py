"""`duorank bench latency`: where one recommend call's time goes, lever by lever, and what each
lever does to quality.

Each configuration runs in a fresh interpreter (its own thread pools and heap, and its own
``OMP_WAIT_POLICY``, which OpenMP reads when it loads) that builds the
:class:`serving.recommender.Recommender` and calls it in process (no HTTP: ``bench serving``
measures the server), one call at a time, for the same random users (300 calls for a
cross-encoder's row, 1,200 for the ranking stage's), after a few warm-up calls. Per
configuration: end-to-end and per-stage p50/p95/p99.

1. **Levers**, in the order they were applied to the first default (the cross-encoder over
   the tower's top 100, torch fp32): the backend ``auto`` picks for this CPU; ONNX int8 with
   ONNX Runtime's threads spinning between runs (its default), then sleeping; every OpenMP
   pool sleeping when idle; no transformer pass where the fitted head gives the text no
   weight; beside the ``auto`` row, a student distilled to 2 layers (``reranker-distilled``)
   and a model whose item side's first layers are cached in Redis (``reranker-split``, every
   item's states written before the timed calls); the ranking stage instead of the
   cross-encoder, first with LightGBM's thread pool for a request's rows, then on the calling
   thread; the default. The cross-encoder rows need a reranker under the home (``train
   reranker``, ``rerank export``); the student and the split model are timed when present.
2. **Candidate depth**: the tower's depth from 10 to 200 (the other sources at their
   defaults). Quality on the ranker's own validation lists (the training split's histories,
   each user's validation event, the served tower and tables fitted on the training split, as
   ``train ranker`` validates): NDCG@10 of the ranker's order, its ratio to depth 100's (the
   trained depth, the unoptimised reference), and agreement with depth 100's order: mean
   Spearman correlation of the two rankings over the union of their top 10s (an item outside
   a top 10 ranks 11th) and mean top-10 overlap. The fast path's depth is the smallest that
   keeps NDCG@10 within 1% and Spearman >= 0.99. Latency from the default's process at each
   depth.
3. **Cascade** (lever 2): the cross-encoder reorders the ranker's top 10, 20 or 50, timed with
   its text pass and scored on the same validation lists (NDCG@10 against the ranker's order).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.contract import BenchContext, BenchReport, Target
from benchmarks.latency.configs import (
    BEFORE,
    CASCADE,
    CASCADE_DEPTHS,
    DEFAULT,
    DEPTHS,
    DISTILLED,
    REFERENCE_DEPTH,
    SPLIT,
    TEXT_SKIPPED,
    UNOPTIMISED,
    Config,
    card_quality,
    layers_of,
)
from benchmarks.latency.harness import in_child
from benchmarks.latency.quality import cascade_quality, depth_quality, validation_stage
from catalog.progress import Progress

DEPTH_COLUMNS = (
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
CASCADE_COLUMNS = (
    "cross_encoder_depth",
    "ndcg@10",
    "ndcg_vs_ranker",
    "spearman_top10_vs_ranker",
    "p50_ms",
    "p95_ms",
    "p_like_p95_ms",
)


def cross_encoder_configs(models: Path) -> tuple[list[Config], str]:
    """The cross-encoder's rows (lever 1's backends and thread settings, the text-free head,
    the distilled student, the item-layers model), each only where its model is saved, and
    the backend ``auto`` picks (``"none"`` without a cross-encoder)."""
    from rerank.cross_encoder.backends import exported, resolve_backend
    from rerank.cross_encoder.inference import unweighted_text_head

    reranker_dir = models / "reranker"
    if not (reranker_dir / "reranker.json").is_file():
        return [], "none"
    auto = resolve_backend(reranker_dir, "auto")
    configs = [Config(BEFORE, reranker="torch", wait_policy=None, text_pass=True)]
    if auto != "torch":
        configs.append(
            Config(f"+ backend auto ({auto})", reranker=auto, wait_policy=None, text_pass=True)
        )
    if exported(reranker_dir, "onnx-int8"):
        configs += [
            Config(
                "cross-encoder, ONNX int8, ONNX Runtime threads spinning (its default)",
                reranker="onnx-int8",
                spin=True,
                wait_policy=None,
                text_pass=True,
            ),
            Config(
                "+ ONNX Runtime threads sleep between runs",
                reranker="onnx-int8",
                wait_policy=None,
                text_pass=True,
            ),
            Config(
                "+ OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)",
                reranker="onnx-int8",
                text_pass=True,
            ),
        ]
    if unweighted_text_head(reranker_dir) is not None:
        configs.append(Config(TEXT_SKIPPED, reranker=auto))
    student = models / DISTILLED
    if (student / "reranker.json").is_file():  # lever 3, beside the teacher's auto row
        configs.append(
            Config(
                f"cross-encoder distilled to {layers_of(student)} layers, backend auto ({auto})",
                reranker=auto,
                wait_policy=None,
                folder=DISTILLED,
                text_pass=True,
            )
        )
    split = models / SPLIT
    if (split / "reranker.json").is_file():  # lever 1, beside the auto row
        split_backend = auto if auto.startswith("torch") else "torch"
        layers = json.loads((split / "reranker.json").read_text())["item_layers"]
        configs.append(
            Config(
                f"cross-encoder, item side's first {layers} layers cached in Redis, "
                f"backend {split_backend}",
                reranker=split_backend,
                wait_policy=None,
                folder=SPLIT,
                text_pass=True,
                item_cache=True,
            )
        )
    return configs, auto


def lever_configs(models: Path) -> tuple[list[Config], str]:
    """Every row of the levers table in the order the levers were applied, the default last,
    and the backend ``auto`` picks."""
    configs, auto = cross_encoder_configs(models)
    configs += [
        UNOPTIMISED,
        Config("+ a request's trees on the calling thread", wait_policy=None),
        Config(DEFAULT, depths=DEPTHS),
    ]
    return configs, auto


def chosen_depth(quality: list[dict[str, Any]]) -> int:
    """The fast path's depth: the smallest that keeps both quality bars against the trained
    depth (NDCG@10 within 1%, the orders' Spearman >= 0.99)."""
    kept = [
        r["depth"]
        for r in quality
        if r["ndcg_vs_reference"] >= 0.99 and r["spearman_top10_vs_reference"] >= 0.99
    ]
    return int(min(kept))


def depths_that_pay(cascade: list[dict[str, Any]]) -> list[int]:
    """The cascade's depths that beat the ranker's order by more than one standard error."""
    return [
        r["cross_encoder_depth"]
        for r in cascade
        if r["cross_encoder_depth"] and r["ndcg@10"] - cascade[0]["ndcg@10"] > r["minus_ranker_se"]
    ]


def targets(default: dict[str, Any], chosen: int) -> list[Target]:
    """The default call's tail and the served depth, against their bars."""
    return [
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


def table(
    levers: list[dict[str, Any]], quality: list[dict[str, Any]], cascade: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The printed table: each lever's p50/p95 per stage, then the depth curve, then the
    cascade (the JSON keeps every column)."""
    return [
        *(
            {
                k: v
                for k, v in r.items()
                if k == "configuration" or (k.endswith("_ms") and "_p99_" not in k)
            }
            for r in levers
        ),
        *({k: v for k, v in r.items() if k in DEPTH_COLUMNS} for r in quality),
        *({k: v for k, v in r.items() if k in CASCADE_COLUMNS} for r in cascade),
    ]


def time_levers(
    configs: list[Config],
    ctx: BenchContext,
    sample: list[str],
    long_sample: list[str],
    warmup: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each configuration timed in its own process: one levers row per configuration (at the
    reference depth) and the default's rows per depth."""
    levers: list[dict[str, Any]] = []
    by_depth: dict[str, Any] = {}
    # Counted in this process, between the children's timed calls (never during them).
    with Progress("latency configurations", len(configs), "configurations") as bar:
        for config in configs:
            users_of = sample if config.reranker else long_sample
            rows = in_child(config, ctx.home, users_of, warmup, ctx.redis_url)
            levers.append({"configuration": config.name, **rows[str(REFERENCE_DEPTH)]})
            if config.name == DEFAULT:
                by_depth = rows
            bar.update()
    return levers, by_depth


def model_cards(models: Path) -> dict[str, dict[str, Any]]:
    """Levers 1 and 3's quality from the models' own cards, where those models are saved."""
    reranker_dir, split = models / "reranker", models / SPLIT
    out: dict[str, dict[str, Any]] = {"distillation": {}, "item_layers": {}}
    if (models / DISTILLED / "reranker.json").is_file():
        out["distillation"] = {
            "teacher": card_quality(reranker_dir),
            "student": card_quality(models / DISTILLED),
        }
    if (split / "reranker.json").is_file():
        out["item_layers"] = {"whole": card_quality(reranker_dir), "split": card_quality(split)}
    return out


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs the quickstart's home (dataset, tower, ranker, an index built with them); the
    cross-encoder rows need ``train reranker`` (and ``rerank export`` for ONNX)."""
    from catalog.store import load_catalog
    from rerank.ranker.model import GBDTRanker

    ctx = ctx or BenchContext()
    models = ctx.home / "models"
    catalog = load_catalog(ctx.home / "datasets" / "ml-latest-small")
    ranker = GBDTRanker.load(models / "ranker")
    users = sorted(catalog.users) or sorted(set(catalog.interactions.user_ids.tolist()))
    calls = 60 if quick else 300
    # The ranking stage's rows take 1,200 calls: a p99 of 300 is their third-worst call, and
    # at ~10 ms a call they are cheap (the cross-encoder rows keep 300).
    stage_calls = 60 if quick else 1200
    long_sample = random.Random(0).choices(users, k=stage_calls)
    sample = long_sample[:calls]
    warmup = 5 if quick else 20

    configs, auto = lever_configs(models)
    levers, by_depth = time_levers(configs, ctx, sample, long_sample, warmup)
    # One validation setup (text vectors, tower index, the stage's tables) for both curves.
    stage, setup = validation_stage(ctx.home, ctx.redis_url, ranker)
    quality = depth_quality(stage, setup, ranker, quick)
    for row in quality:
        row.update(by_depth[str(row["depth"])])
    reference = next(r for r in quality if r["depth"] == REFERENCE_DEPTH)
    chosen = chosen_depth(quality)
    default = levers[-1]
    cascade: list[dict[str, Any]] = []
    if auto != "none":  # lever 2: the cross-encoder over the ranker's top N
        cascading = Config(CASCADE, reranker=auto, cascade=True, text_pass=True)
        timed = in_child(cascading, ctx.home, sample, warmup)
        cascade = cascade_quality(ctx, stage, setup, ranker, auto, quick)
        for row in cascade:
            depth = row["cross_encoder_depth"]
            row.update(timed[str(depth)] if depth else default)
    return BenchReport(
        name="latency",
        params={
            "quick": quick,
            "calls": calls,
            "ranking_stage_calls": stage_calls,
            "warmup": warmup,
            "k": 10,
            "backend_auto": auto,
            "depths": list(DEPTHS),
            "reference_depth": REFERENCE_DEPTH,
            "validation_lists": reference["lists"],
            "configs": [asdict(c) for c in configs],
            "cascade_depths": list(CASCADE_DEPTHS),
        },
        results={
            "levers": levers,
            "depth": quality,
            "chosen_depth": chosen,
            "cascade": cascade,
            "cascade_depths_that_pay": depths_that_pay(cascade),
            **model_cards(models),
        },
        targets=targets(default, chosen),
        table=table(levers, quality, cascade),
    )
