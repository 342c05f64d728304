"""Offline evaluation: full ranking, honest baselines, seeds and paired intervals, a report.

:func:`run_eval` runs one step per method (:mod:`benchmarks.evaluation.methods`) over the
protocol's folds (:mod:`benchmarks.evaluation.protocol`); :func:`write_report` writes it.
"""

from benchmarks.evaluation.protocol import (
    KS,
    RERANK_DEPTH,
    Fold,
    Ranked,
    bootstrap_ci,
    make_fold,
    metrics_of,
)
from benchmarks.evaluation.report import write_report
from benchmarks.evaluation.run import Folds, make_folds, run_eval

__all__ = [
    "KS",
    "RERANK_DEPTH",
    "Fold",
    "Folds",
    "Ranked",
    "bootstrap_ci",
    "make_fold",
    "make_folds",
    "metrics_of",
    "run_eval",
    "write_report",
]
