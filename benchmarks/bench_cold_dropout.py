"""`duorank bench cold-dropout`: the share of rows in the ranker's cold copies, chosen on
validation, then measured on new arrivals.

Per seed, the new-arrivals protocol's models (:func:`benchmarks.evaluation.arrivals.
fit_before_cutoff`: the tower and the ranking stage fitted on the events before the global
cut-off) and, on the same training lists, one ranker per share in :data:`RATES`
(:mod:`rerank.ranker.cold`; 0 is the ranker without cold copies). Each is read twice:

- **on validation** (the stage's own validation lists, before the cut-off): NDCG@10 as the lists
  are (warm) and with every candidate read as an item with no events (the cold view: the stage
  ordering by content alone), with the paired difference from share 0 and its standard error;
- **on the new-arrivals test events** (after the cut-off): the shelf, new items in the full
  catalog, cold users and every event, as ``duorank eval`` reports them.

The choice uses validation only: the share with the best mean cold view among those whose warm
NDCG@10 is not below share 0's by more than one standard error (mean over seeds). The test
figures say what that choice buys; they never choose.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport

RATES = (0.0, 0.25, 0.5)
"""The shares tried (0: no cold copies)."""
SEEDS = (0, 1, 2)
log = logging.getLogger(__name__)


def _one_seed(catalog: Any, encoder: Any, seed: int, quick: bool) -> dict[str, dict[str, Any]]:
    """Every share's validation and test figures on one seed's models."""
    from benchmarks.evaluation.arrivals import (
        Arrivals,
        StageScorer,
        figures,
        fit_before_cutoff,
        rank_events,
    )
    from benchmarks.evaluation.ranking import quick_stage_args
    from catalog.splits import heldout_start, leave_one_out
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import RankingStageArgs, cold_view_ndcg10, list_ndcg10
    from retrieval.encoder import encode_catalog
    from retrieval.sequential import SequentialConfig

    dated = catalog.as_of(heldout_start(leave_one_out(catalog.interactions, seed=seed)))
    arrivals = Arrivals.of(dated, max_events=200 if quick else None, seed=seed)
    text = encode_catalog(encoder, arrivals.catalog.items)
    tower = SequentialConfig(seed=seed)
    stage_args = quick_stage_args() if quick else RankingStageArgs()
    fitted = fit_before_cutoff(
        arrivals,
        dated,
        text,
        tower.reduced() if quick else tower,
        stage_args,
        seed,
        lambda message: log.info("seed %d: %s", seed, message),
    )
    val = fitted.trained.val_lists
    out: dict[str, dict[str, Any]] = {}
    for rate in RATES:
        config = replace(stage_args.ranker, cold_dropout=rate)
        ranker = GBDTRanker.fit(fitted.trained.train_lists, config)
        log.info("seed %d: share %s of cold rows, %d trees", seed, rate, ranker.record["rounds"])
        scorer = StageScorer(arrivals, fitted.stage, ranker)
        test = figures(
            arrivals,
            rank_events(arrivals, arrivals.events, scorer),
            rank_events(arrivals, arrivals.cold, scorer),
            seed,
        )
        out[str(rate)] = {
            "validation": list_ndcg10(ranker.score(val.x), val),
            "cold_view": cold_view_ndcg10(ranker, val),
            "test": test,
            "rounds": ranker.record["rounds"],
        }
    return out


def _summary(seeds: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per share: means over seeds, the warm difference paired per list within each
    seed (its mean and mean standard error)."""
    rows = []
    for rate in RATES:
        key = str(rate)
        diffs = [s[key]["validation"] - s["0.0"]["validation"] for s in seeds.values()]

        def mean(pick: Any, key: str = key) -> float:
            return float(np.mean([pick(s[key]) for s in seeds.values()]))

        rows.append(
            {
                "cold_dropout": rate,
                "validation_ndcg@10": mean(lambda r: r["validation"].mean()),
                "minus_no_copies": float(np.mean([d.mean() for d in diffs])),
                "minus_no_copies_se": float(
                    np.mean([d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0 for d in diffs])
                ),
                "cold_view_ndcg@10": mean(lambda r: r["cold_view"]),
                "shelf_ndcg@10": mean(lambda r: r["test"]["shelf"]["ndcg@10"]),
                "new_items_ndcg@10": mean(lambda r: r["test"]["new_items"]["ndcg@10"]),
                "new_items_recall@50": mean(lambda r: r["test"]["new_items"]["recall@50"]),
                "cold_users_ndcg@10": mean(lambda r: r["test"]["cold_users"]["ndcg@10"]),
                "all_events_ndcg@10": mean(lambda r: r["test"]["all_events_ndcg@10"]),
            }
        )
    return rows


def choose(rows: list[dict[str, Any]]) -> float:
    """The share with the best cold view among those whose warm NDCG@10 is within one
    standard error of share 0's (validation only)."""
    allowed = [r for r in rows if r["minus_no_copies"] >= -r["minus_no_copies_se"]]
    return float(max(allowed, key=lambda r: r["cold_view_ndcg@10"])["cold_dropout"])


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    from catalog.movielens import load_movielens
    from rerank.ranker.model import RankerConfig
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder
    from retrieval.redis_client import open_redis

    catalog = load_movielens(ctx.data)
    seeds = SEEDS[:1] if quick else SEEDS
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        per_seed = {seed: _one_seed(catalog, encoder, seed, quick) for seed in seeds}
    finally:
        client.close()
        if server is not None:
            server.close()
    rows = _summary(per_seed)
    chosen = choose(rows)
    results = {
        "rows": rows,
        "chosen": chosen,
        "default": RankerConfig().cold_dropout,
        "per_seed": {
            str(seed): {
                rate: {
                    "validation_ndcg@10": float(r["validation"].mean()),
                    "cold_view_ndcg@10": r["cold_view"],
                    "rounds": r["rounds"],
                    "test": r["test"],
                }
                for rate, r in figures.items()
            }
            for seed, figures in per_seed.items()
        },
    }
    params = {"rates": list(RATES), "seeds": list(seeds), "data": str(ctx.data), "quick": quick}
    return BenchReport("cold-dropout", params, results, table=rows)
