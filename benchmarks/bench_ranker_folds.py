"""`duorank bench ranker-folds`: how the ranker chooses its number of trees and what it serves,
over three seeds of the new-arrivals models.

Per seed, the new-arrivals protocol's tower and ranking stage fitted before the cut-off
(:func:`benchmarks.shares.fitted`), then, on the same training lists, one ranker per recipe in
:data:`RECIPES`:

- **one held-out share, refit** (the recipe before): 20% of users' lists pick the number of
  trees, then one model is refitted on every list;
- **five folds, refit**: the number of trees from five user folds grown in step (every list
  held out once), then one refit;
- **five folds, their mean** (the default): the same folds, and the mean of the five fold
  models serves (:mod:`rerank.ranker.bagging`).

Each is read on validation (the stage's validation lists: as they are, with every history cut
to one to three events, with every candidate read as a new arrival; the warm one paired per list
with the recipe before) and after the cut-off (:func:`benchmarks.shares.after_cutoff`), with its
fitting time and the cost of scoring one validation list (the served call's rank step).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport
from benchmarks.shares import after_cutoff, fitted, over_seeds

RECIPES: dict[str, dict[str, Any]] = {
    "one held-out share, refit": {"folds": 1, "bag": False},
    "five folds, refit": {"folds": 5, "bag": False},
    "five folds, their mean": {"folds": 5, "bag": True},
}
"""The recipes tried (RankerConfig settings); the first is the reference."""
SEEDS = (0, 1, 2)
SCORED_LISTS = 200
log = logging.getLogger(__name__)


def _score_us(ranker: Any, lists: Any) -> float:
    """Median microseconds to score one list (one request's candidates) on this thread."""
    off, times = lists.offsets, []
    for n in range(min(SCORED_LISTS, len(lists.sizes))):
        x = lists.x[off[n] : off[n + 1]]
        start = time.perf_counter()
        ranker.score(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def _one_seed(catalog: Any, encoder: Any, seed: int, quick: bool) -> dict[str, Any]:
    """Every recipe's figures on one seed's models."""
    from benchmarks.evaluation.ranking import quick_stage_args
    from rerank.ranker.cold import as_cold
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import RankingStageArgs, list_ndcg10

    stage_args = quick_stage_args() if quick else RankingStageArgs()
    arrivals, models = fitted(catalog, encoder, seed, quick, stage_args, log)
    trained = models.trained
    val, short_val = trained.val_lists, trained.short_val
    cold_val = as_cold(val.x, val.names, val.depths)
    out: dict[str, Any] = {}
    for name, settings in RECIPES.items():
        config = replace(stage_args.ranker, **settings)
        start = time.perf_counter()
        ranker = GBDTRanker.fit(trained.train_lists, config, extra=trained.short_lists)
        fit_s = time.perf_counter() - start
        log.info("seed %d: %s, %d trees", seed, name, ranker.booster.num_trees())
        out[name] = {
            "validation": list_ndcg10(ranker.score(val.x), val),
            "short_view": float(list_ndcg10(ranker.score(short_val.x), short_val).mean()),
            "cold_view": float(list_ndcg10(ranker.score(cold_val), val).mean()),
            "test": after_cutoff(arrivals, models.stage, ranker, seed),
            "rounds": ranker.record["rounds"],
            "trees": ranker.booster.num_trees(),
            "fit_s": fit_s,
            "score_us": _score_us(ranker, val),
        }
    out["first_stage"] = float(list_ndcg10(val.column("retrieval_score"), val).mean())
    return out


def summary(seeds: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe: means over seeds; the warm difference from the first recipe paired
    per list within each seed (the seeds' mean and mean standard error)."""
    reference = next(iter(RECIPES))
    rows = []
    for name in RECIPES:
        per = [s[name] for s in seeds.values()]
        diffs = [s[name]["validation"] - s[reference]["validation"] for s in seeds.values()]
        ses = [d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0 for d in diffs]

        def mean(key: str, per: list[dict[str, Any]] = per) -> float:
            return float(np.mean([r[key] for r in per]))

        def test(*path: str, per: list[dict[str, Any]] = per) -> float:
            values = []
            for r in per:
                value: Any = r["test"]
                for key in path:
                    value = value[key]
                values.append(value)
            return float(np.mean(values))

        rows.append(
            {
                "recipe": name,
                "validation_ndcg@10": float(np.mean([r["validation"].mean() for r in per])),
                "minus_before": float(np.mean([d.mean() for d in diffs])),
                "minus_before_se": float(np.mean(ses)),
                "per_seed_minus_before": [round(float(d.mean()), 4) for d in diffs],
                "short_view_ndcg@10": mean("short_view"),
                "cold_view_ndcg@10": mean("cold_view"),
                "shelf_ndcg@10": test("shelf", "ndcg@10"),
                "new_items_recall@50": test("new_items", "recall@50"),
                "cold_users_ndcg@10": test("cold_users", "ndcg@10"),
                "all_events_ndcg@10": test("all_events_ndcg@10"),
                "rounds": mean("rounds"),
                "trees": mean("trees"),
                "fit_s": mean("fit_s"),
                "score_us_per_list": mean("score_us"),
            }
        )
    return rows


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    seeds = SEEDS[:1] if quick else SEEDS
    per_seed = over_seeds(ctx, seeds, lambda c, e, seed: _one_seed(c, e, seed, quick))
    rows = summary(per_seed)
    results = {
        "rows": rows,
        "first_stage_validation_ndcg@10": float(
            np.mean([s["first_stage"] for s in per_seed.values()])
        ),
        "per_seed": {
            str(seed): {
                name: {k: v for k, v in r.items() if k != "validation"}
                | {"validation_ndcg@10": float(r["validation"].mean())}
                for name, r in figures.items()
                if name in RECIPES
            }
            for seed, figures in per_seed.items()
        },
    }
    params = {"recipes": RECIPES, "seeds": list(seeds), "data": str(ctx.data), "quick": quick}
    return BenchReport("ranker-folds", params, results, table=rows)
