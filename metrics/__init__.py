"""Offline metrics: one file per metric, each docstring with its formula and a citation.

A leaf package (numpy only) below every layer, so that training code validates with the same
tested functions that the benchmarks report.
"""

from metrics._core import hits_and_counts, top_k
from metrics.auc import auc, per_user_auc
from metrics.coverage import coverage_at_k
from metrics.exposure import exposure_counts, gini_at_k, max_user_share_at_k, slot_share_at_k
from metrics.heldout import (
    ABSENT,
    heldout_ndcg,
    list_ranks,
    ndcg_at_k_from_ranks,
    recall_at_k_from_ranks,
    target_ranks,
)
from metrics.hit_rate import hit_rate_at_k
from metrics.logloss import expected_calibration_error, logloss
from metrics.map import map_at_k
from metrics.mrr import mrr_at_k
from metrics.ndcg import ndcg_at_k
from metrics.recall import recall_at_k

__all__ = [
    "ABSENT",
    "auc",
    "coverage_at_k",
    "expected_calibration_error",
    "exposure_counts",
    "gini_at_k",
    "heldout_ndcg",
    "hit_rate_at_k",
    "hits_and_counts",
    "list_ranks",
    "logloss",
    "map_at_k",
    "max_user_share_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "ndcg_at_k_from_ranks",
    "per_user_auc",
    "recall_at_k",
    "recall_at_k_from_ranks",
    "slot_share_at_k",
    "target_ranks",
    "top_k",
]
