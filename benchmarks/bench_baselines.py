"""What each baseline costs and what its validation grid found.

Every tuned baseline of ``duorank eval`` (ALS, BPR, item-kNN, EASE, SASRec), on the same
leave-one-out folds of the bundled data: each grid point's validation NDCG@10 and seconds, the
chosen settings, the refit on train + validation and its test NDCG@10. The grids are those of
:mod:`benchmarks.baselines.grids`, so this is the eval's tuning, run alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.baselines import ItemKNNScorer
from benchmarks.baselines.grids import baseline_grids
from benchmarks.contract import BenchContext, BenchReport, Target
from benchmarks.evaluation.protocol import metrics_of, rank_with, tune_staged
from benchmarks.evaluation.run import make_folds
from catalog import load_movielens

log = logging.getLogger(__name__)

SASREC_MINUTES = 30.0
"""SASRec's whole grid must fit a nightly slot on a 2-core CPU."""


def _settings(params: dict[str, Any], keys: list[str]) -> str:
    """The settings the grid tunes, as ``k=v`` pairs."""
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params) or "-"


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Tunes, refits and tests every baseline; one table of costs, one of the grids."""
    ctx = ctx or BenchContext()
    seed = 0
    catalog = load_movielens(ctx.data)
    folds = make_folds(catalog, quick=quick, seed=seed)
    summary: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for name, grid in baseline_grids(quick, seed).items():
        best, rows = tune_staged(
            grid.make, grid.start, grid.stages, folds.val, progress=log.info, name=name
        )
        started = time.perf_counter()
        final = best.refitted().fit(folds.test.data)
        refit_s = time.perf_counter() - started
        ItemKNNScorer.release_cache()
        test = metrics_of(rank_with(final, folds.test), folds.test)
        tune_s = float(sum(r["seconds"] for r in rows))
        best_val = max(r["ndcg@10"] for r in rows)
        results[name] = {
            "chosen": final.params,
            "grid": rows,
            "tune_seconds": tune_s,
            "refit_seconds": refit_s,
            "validation_ndcg@10": best_val,
            "test": {k: test[k] for k in ("ndcg@10", "recall@10", "recall@100")},
        }
        summary.append(
            {
                "baseline": name,
                "chosen": _settings(final.params, grid.tuned),
                "grid": len(rows),
                "tune_min": tune_s / 60,
                "refit_min": refit_s / 60,
                "val_ndcg@10": best_val,
                "test_ndcg@10": test["ndcg@10"],
            }
        )
        points += [
            {
                "baseline": name,
                "stage": r.get("stage", 1),
                "settings": _settings(r.get("refit_params", r["params"]), grid.tuned),
                "val_ndcg@10": r["ndcg@10"],
                "seconds": r["seconds"],
            }
            for r in rows
        ]
    sasrec = results["sasrec"]
    minutes = (sasrec["tune_seconds"] + sasrec["refit_seconds"]) / 60
    return BenchReport(
        name="baselines",
        params={
            "quick": quick,
            "seed": seed,
            "data": str(ctx.data),
            "users": len(folds.test.users),
        },
        results=results,
        targets=[Target("SASRec grid + refit minutes on this CPU", minutes, SASREC_MINUTES, "<=")],
        table=summary + points,
    )
