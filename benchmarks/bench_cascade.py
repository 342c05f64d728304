"""`duorank bench cascade`: does the cross-encoder's logit earn a place as a ranking-stage feature?

On the ranker's own validation lists (the training split's histories, each user's validation
event, the served tower and the stage's tables fitted on the training split, as ``train
ranker`` validates), the features ranker orders every candidate; the home's cross-encoder
(``train reranker``, trained on the training split only, so it never saw a validation event)
scores each list's top 50 as text; for the top 10, 20 and 50 a second LightGBM pass sees the
logit next to every feature and reorders them, cross-fitted over two halves of the lists
(:mod:`rerank.ranker.cascade`). Per N: NDCG@10 against the ranker's order with the standard
error of the paired difference, overall and where text should matter (rare targets, short
histories), and the text pass's cost per call (the cross-encoder on one user's top N, the mean
over 50 calls). A control refits the same second pass with the logit held at zero: what
refitting trees on these lists gives without text. The N that serves must beat both the
ranker's order and the control by more than one standard error (the one-standard-error
rule), else no text pass serves.

Needs the home's ``models/ranker``, ``models/tower`` and ``models/reranker`` (trained with
``--no-calibrate``, or any reranker whose head still weighs its text).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport
from benchmarks.evaluation.text import cascade_side_by_side, text_logits
from benchmarks.latency.quality import ranked_lists, validation_stage
from rerank.ranker.cascade import DEPTHS, top_rows

TIMED_CALLS = 50
"""Calls timed per N for the cost of the text pass (mean milliseconds per call)."""
COLUMNS = (
    "top_n",
    "slice",
    "lists",
    "ndcg@10",
    "first_pass_ndcg@10",
    "minus_first_pass",
    "minus_first_pass_se",
    "control_ndcg@10",
    "minus_control",
    "minus_control_se",
    "ms_per_call",
)


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    from rerank import Reranker
    from rerank.ranker.model import GBDTRanker

    ranker = GBDTRanker.load(ctx.home / "models" / "ranker")
    reranker = Reranker(ctx.home / "models" / "reranker", backend="torch")
    if reranker.features_only is not None:
        raise ValueError(
            f"{reranker.folder}: its head gives the text no weight (the validation fusion set "
            "it to zero), so it has no text logit to read; train it with `duorank train "
            "reranker --no-calibrate`"
        )
    stage, setup = validation_stage(ctx.home, ctx.redis_url, ranker)
    lists, first = ranked_lists(stage, setup, ranker, quick)
    requests = setup.validation.requests[: len(lists.sizes)]
    rows = top_rows(lists, first, max(DEPTHS))
    drop = np.ones(len(lists.cols), dtype=bool)
    drop[rows] = False
    histories = {r.user_id: list(r.history) for r in requests}
    started = time.perf_counter()
    logits = text_logits(
        reranker, lists.without_rows(drop), stage.item_ids, setup.catalog, histories
    )
    seconds = time.perf_counter() - started
    text = np.zeros(len(lists.cols), dtype=np.float64)
    text[np.flatnonzero(~drop)] = logits  # without_rows keeps the rows' order
    timed = lists.select(np.arange(min(TIMED_CALLS, len(lists.sizes)), dtype=np.int64))
    timed_first = first[: len(timed.cols)]  # the first lists' rows come first
    ms_per_call = {}
    for depth in DEPTHS:  # one call's text pass: the user side once, then its top N
        rest = np.ones(len(timed.cols), dtype=bool)
        rest[top_rows(timed, timed_first, depth)] = False
        started = time.perf_counter()
        text_logits(reranker, timed.without_rows(rest), stage.item_ids, setup.catalog, histories)
        ms_per_call[depth] = 1000 * (time.perf_counter() - started) / len(timed.sizes)
    report = cascade_side_by_side(lists, first, text, seed=0, ms_per_call=ms_per_call)
    report["pairs_per_second"] = len(rows) / seconds
    table: list[dict[str, Any]] = []
    for depth, entry in report["depths"].items():
        for name, figures in entry.items():
            if isinstance(figures, dict):
                table.append(
                    {
                        "top_n": int(depth),
                        "slice": name,
                        **figures,
                        "ms_per_call": entry["ms_per_call"],
                    }
                )
    params = {
        "lists": len(lists.sizes),
        "pairs_scored": len(rows),
        "backend": reranker.backend,
        "reranker": str(ctx.home / "models" / "reranker"),
        "ranker": str(ctx.home / "models" / "ranker"),
        "quick": quick,
    }
    return BenchReport(
        "cascade", params, report, table=[{k: r.get(k) for k in COLUMNS} for r in table]
    )
