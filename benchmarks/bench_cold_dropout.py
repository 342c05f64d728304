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

from benchmarks import shares
from benchmarks.contract import BenchContext, BenchReport
from benchmarks.shares import Seed, after_cutoff, fitted

RATES = (0.0, 0.25, 0.5)
"""The shares tried (0: no cold copies)."""
SEEDS = (0, 1, 2)
log = logging.getLogger(__name__)


def _one_seed(catalog: Any, encoder: Any, seed: int, quick: bool) -> Seed:
    """Every share's validation and test figures on one seed's models."""
    from benchmarks.evaluation.ranking import quick_stage_args
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import RankingStageArgs, cold_view_ndcg10, list_ndcg10

    stage_args = quick_stage_args() if quick else RankingStageArgs()
    arrivals, models = fitted(catalog, encoder, seed, quick, stage_args, log)
    val = models.trained.val_lists
    out: Seed = {}
    for rate in RATES:
        config = replace(stage_args.ranker, cold_dropout=rate)
        ranker = GBDTRanker.fit(models.trained.train_lists, config)
        log.info("seed %d: share %s of cold rows, %d trees", seed, rate, ranker.record["rounds"])
        out[str(rate)] = {
            "validation": list_ndcg10(ranker.score(val.x), val),
            "cold_view": cold_view_ndcg10(ranker, val),
            "test": after_cutoff(arrivals, models.stage, ranker, seed),
            "rounds": ranker.record["rounds"],
        }
    return out


def _summary(seeds: dict[int, Seed]) -> list[dict[str, Any]]:
    """One row per share (:func:`benchmarks.shares.summary`)."""
    return shares.summary(seeds, RATES, "cold_dropout", "cold_view")


def choose(rows: list[dict[str, Any]]) -> float:
    """The share with the best cold view among those whose warm NDCG@10 is within
    one standard error of share 0's (validation only)."""
    return shares.choose(rows, "cold_dropout", "cold_view")


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    from rerank.ranker.model import RankerConfig

    seeds = SEEDS[:1] if quick else SEEDS
    per_seed = shares.over_seeds(ctx, seeds, lambda c, e, seed: _one_seed(c, e, seed, quick))
    return shares.report(
        "cold-dropout",
        per_seed,
        RATES,
        "cold_dropout",
        "cold_view",
        RankerConfig().cold_dropout,
        ctx,
        quick,
    )
