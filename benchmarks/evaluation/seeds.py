"""Several seeds of the trained tower: each run's figures, their mean and spread, and the
interval of the seeds' mean against the reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.evaluation.protocol import Fold, Ranked, bootstrap_ci, per_user_ndcg10

SEEDS_PROTOCOL = (
    "the first seed chooses epochs and cold-item blend on validation; every seed refits on "
    "train + validation with them (its own initialisation and batch order) and is tested once"
)


def seed_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-seed runs of one method with the mean and spread of their NDCG@10."""
    values = np.array([r["ndcg@10"] for r in runs])
    return {
        "protocol": SEEDS_PROTOCOL,
        "runs": list(runs),
        "ndcg@10_mean": float(values.mean()),
        "ndcg@10_std": float(values.std(ddof=1)),
    }


def seed_mean_vs(
    rankings: Sequence[Ranked],
    reference: Sequence[Ranked],
    fold: Fold,
    seed: int,
    reference_name: str,
) -> dict[str, Any]:
    """The seeds' mean NDCG@10 against the reference's: the ratio, and the paired bootstrap
    interval of the difference, each user's NDCG@10 averaged over the seeds' models first
    (and over the reference's seeds, when it has several).

    The headline is the mean over seeds, so its interval resamples users once with every
    seed's ranking of them: the spread left is the test users', not the initialisations'."""
    per_user = np.mean([per_user_ndcg10(r, fold) for r in rankings], axis=0)
    ref = np.mean([per_user_ndcg10(r, fold) for r in reference], axis=0)
    return {
        "reference": reference_name,
        "ndcg@10_mean_vs_reference": float(per_user.mean() / ref.mean()) if ref.mean() else None,
        "ndcg@10_mean_minus_reference_ci95": list(bootstrap_ci(per_user - ref, seed=seed)),
    }


def headline(m: Mapping[str, Any]) -> dict[str, float]:
    """The figures each seed's run reports."""
    keys = ("ndcg@10", "recall@10", "recall@100", "cold_recall@100")
    return {k: float(m.get(k, float("nan"))) for k in keys}
