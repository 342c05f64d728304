"""`duorank bench short-histories`: the share of the ranker's training lists learned again with
a cold user's history (one to three events), chosen on validation, then measured after the
new-arrivals cut-off.

Per seed, the new-arrivals protocol's models (:func:`benchmarks.evaluation.arrivals.
fit_before_cutoff`, every stacked list given a short copy) and, on the same lists, one ranker
per share in :data:`SHARES` (:func:`rerank.ranker.stacking.short_copies`; 0 is the ranker
without them). Each is read twice:

- **on validation** (the stage's validation lists, before the cut-off): NDCG@10 as the lists
  are (warm), with every history cut to its newest one to three events (the short view) and
  with every candidate read as a new arrival (the cold view), the warm and cold ones with the
  paired difference from share 0 and its standard error;
- **on the new-arrivals test events** (after the cut-off): cold users (new since the cut-off,
  one to three events before their target), the shelf and every event, as ``duorank eval``
  reports them.

The choice uses validation only: the share with the best mean short view among those whose
warm NDCG@10, and whose cold view (every candidate read as a new arrival, what the cold copies
teach), are not below share 0's by more than one standard error (mean over seeds).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks import shares
from benchmarks.contract import BenchContext, BenchReport
from benchmarks.shares import Seed, after_cutoff, fitted

SHARES = (0.0, 0.5, 1.0)
"""The shares tried (0: no short copies)."""
SEEDS = (0, 1, 2)
log = logging.getLogger(__name__)


def _one_seed(catalog: Any, encoder: Any, seed: int, quick: bool) -> Seed:
    """Every share's validation and test figures on one seed's models."""
    from benchmarks.evaluation.ranking import quick_stage_args
    from rerank.ranker.cold import as_cold
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.stacking import short_positions
    from rerank.ranker.train import RankingStageArgs, list_ndcg10

    stage_args = replace(quick_stage_args() if quick else RankingStageArgs(), short_histories=1.0)
    arrivals, models = fitted(catalog, encoder, seed, quick, stage_args, log)
    trained = models.trained
    assert trained.short_lists is not None
    stacked, ranker_seed = trained.stacked.lists, stage_args.ranker.seed
    every = np.array(short_positions(stacked, 1.0, ranker_seed))
    val, short_val = trained.val_lists, trained.short_val
    cold_val = as_cold(val.x, val.names, val.depths)
    out: Seed = {}
    for share in SHARES:
        picked = np.searchsorted(every, short_positions(stacked, share, ranker_seed))
        extra = trained.short_lists.select(picked.astype(np.int64)) if len(picked) else None
        ranker = GBDTRanker.fit(trained.train_lists, stage_args.ranker, extra=extra)
        log.info(
            "seed %d: share %s of short copies, %d trees", seed, share, ranker.record["rounds"]
        )
        out[str(share)] = {
            "validation": list_ndcg10(ranker.score(val.x), val),
            "short_view": float(list_ndcg10(ranker.score(short_val.x), short_val).mean()),
            "cold_view_lists": list_ndcg10(ranker.score(cold_val), val),
            "test": after_cutoff(arrivals, models.stage, ranker, seed),
            "rounds": ranker.record["rounds"],
        }
    first = list_ndcg10(short_val.column("retrieval_score"), short_val)
    out["first_stage"] = {"short_view": float(first.mean())}
    return out


def _summary(seeds: dict[int, Seed]) -> list[dict[str, Any]]:
    """One row per share (:func:`benchmarks.shares.summary`)."""
    return shares.summary(seeds, SHARES, "short_histories", "short_view")


def choose(rows: list[dict[str, Any]]) -> float:
    """The share with the best short view among those whose warm NDCG@10 is within
    one standard error of share 0's (validation only)."""
    return shares.choose(rows, "short_histories", "short_view")


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    from rerank.ranker.train import RankingStageArgs

    seeds = SEEDS[:1] if quick else SEEDS
    per_seed = shares.over_seeds(ctx, seeds, lambda c, e, seed: _one_seed(c, e, seed, quick))
    return shares.report(
        "short-histories",
        per_seed,
        SHARES,
        "short_histories",
        "short_view",
        RankingStageArgs().short_histories,
        ctx,
        quick,
        first_stage_short_view_ndcg10=float(
            np.mean([s["first_stage"]["short_view"] for s in per_seed.values()])
        ),
    )
