"""`duorank bench like-head`: what the P(like) head learns from, and with which trees.

The head (:class:`rerank.ranker.model.LikeModel`) tells a like (rating >= 4) from a dislike for
each stacked target, as ``train ranker`` fits it: the stacked lists' first stage fitted before
each user's last training events, its feature rows for each target; read on the validation
events (the stage's tables fitted on the training split), as the ranker's card records it.
The home's trained tower is the first stage (``duorank quickstart`` makes one).

Rows: the head without and with the ``taste`` group (the user's rating spread and like share,
and their ratings of the items nearest the candidate by text, by the tower's vectors and by
genre), that group without its two vector features (what the text adds), each with the
ranker's tree settings and with the head's own (:data:`rerank.ranker.model.LIKE_PARAMS`).
Per row: the validation AUC (mean over three head seeds) and the AUC of five user folds over
the stacked rows (every row predicted by a head that never saw its user), and the paired
difference from the first row on the validation events with its bootstrap interval.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target

SEEDS = (0, 1, 2)
FOLDS = 5
VECTOR_TASTE = ("text_rating", "learned_rating")
log = logging.getLogger(__name__)


def _rows(ctx: BenchContext, quick: bool) -> dict[str, Any]:
    """The stacked targets' and the validation events' feature rows and likes."""
    from duorank.jobs import training_catalog
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.stacking import stack
    from rerank.ranker.train import (
        RankingStageArgs,
        _stacked_first_stage,
        like_rows,
        ranker_validation,
        refit_config,
    )
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder, encode_catalog
    from retrieval.redis_client import open_redis
    from retrieval.vectors import ItemVectors

    data = ctx.home / "datasets" / "ml-latest-small"
    if not data.is_dir():
        data = ctx.data
    catalog, _, _ = training_catalog(data)
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        text = encode_catalog(encoder, catalog.items)
    finally:
        client.close()
        if server is not None:
            server.close()
    tower_path = ctx.home / "models" / "tower"
    if not tower_path.is_dir():
        raise FileNotFoundError(f"{tower_path}: no trained tower (run `duorank quickstart`)")
    setup = ranker_validation(catalog, ItemVectors(text.ids, text.matrix), tower_path)
    args = RankingStageArgs()
    stacked = stack(setup.histories, args.per_user, args.min_history)
    tower, index = _stacked_first_stage(
        setup.text_vectors, stacked, refit_config(setup.tower, setup.tower_card)
    )
    stage_fit = CandidateStage.build(
        catalog.items,
        stacked.fit_histories,
        tower,
        index,
        setup.text_vectors,
        als=args.als,
        depths=args.depths,
    )
    stage_val = CandidateStage.build(
        catalog.items,
        setup.histories,
        setup.tower,
        setup.index,
        setup.text_vectors,
        als=args.als,
        depths=args.depths,
    )
    val = setup.validation
    if val.likes is None or len(set(val.likes)) < 2:
        raise ValueError(f"{data}: the validation events are not likes and dislikes both")
    x_fit, y_fit, names, keep = like_rows(stage_fit, stacked, stage_fit.names)
    return {
        "names": names,
        "x_fit": x_fit,
        "y_fit": y_fit,
        "users": [s.request.user_id for s in stacked.lists],
        "x_val": stage_val.item_rows(val.requests, val.targets)[:, keep],
        "y_val": np.asarray(val.likes, np.float32),
        "quick": quick,
    }


def _configurations(names: list[str]) -> dict[str, tuple[list[str], bool]]:
    """Row label -> (feature names, the head's own trees)."""
    from rerank.ranker.features import FEATURE_GROUPS

    taste = set(FEATURE_GROUPS["taste"])
    without = [n for n in names if n not in taste]
    no_vectors = [n for n in names if n not in VECTOR_TASTE]
    return {
        "without taste, ranker's trees": (without, False),
        "without taste, head's trees": (without, True),
        "with taste, ranker's trees": (names, False),
        "taste without text and tower vectors, head's trees": (no_vectors, True),
        "with taste, head's trees (served)": (names, True),
    }


def _fit(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    names: list[str],
    users: list[str],
    own: bool,
    seed: int,
) -> Any:
    from rerank.ranker import model
    from rerank.ranker.model import LikeModel, RankerConfig

    saved = dict(model.LIKE_PARAMS)
    if not own:  # the ranker's own settings: the head as it was
        model.LIKE_PARAMS.clear()
    try:
        return LikeModel.fit(x, y, names, users, replace(RankerConfig(), seed=seed))
    finally:
        model.LIKE_PARAMS.clear()
        model.LIKE_PARAMS.update(saved)


def _folds_auc(rows: dict[str, Any], cols: list[int], names: list[str], own: bool) -> float:
    """AUC of every stacked row predicted by a head fitted on the other users' folds."""
    from metrics import auc

    users = np.array(rows["users"])
    order = np.random.default_rng(0).permutation(sorted(set(rows["users"])))
    p = np.zeros(len(users))
    for fold in np.array_split(order, FOLDS):
        held = np.isin(users, fold)
        head = _fit(
            rows["x_fit"][~held][:, cols], rows["y_fit"][~held], names, list(users[~held]), own, 0
        )
        p[held] = head.probability(rows["x_fit"][held][:, cols])
    return float(auc(p, rows["y_fit"]))


def _paired_interval(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], y: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """95% bootstrap interval of AUC(a) - AUC(b) over the same resampled validation events."""
    from metrics import auc

    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(1000):
        pick = rng.integers(0, len(y), len(y))
        if len(set(y[pick].tolist())) < 2:
            continue
        diffs.append(auc(a[pick], y[pick]) - auc(b[pick], y[pick]))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Prints the table of the module docstring and returns its record."""
    from metrics import auc

    rows = _rows(ctx, quick)
    names = rows["names"]
    seeds = SEEDS[:1] if quick else SEEDS
    table, reference = [], None
    for label, (chosen, own) in _configurations(names).items():
        cols = [names.index(n) for n in chosen]
        probs = [
            _fit(rows["x_fit"][:, cols], rows["y_fit"], chosen, rows["users"], own, s).probability(
                rows["x_val"][:, cols]
            )
            for s in seeds
        ]
        mean_p = np.mean(probs, axis=0)
        row: dict[str, Any] = {
            "head": label,
            "features": len(chosen),
            "validation_auc": float(np.mean([auc(p, rows["y_val"]) for p in probs])),
            "user_folds_auc": _folds_auc(rows, cols, chosen, own),
        }
        if reference is None:
            reference = mean_p
            row["minus_first_ci95"] = "(reference)"
        else:
            low, high = _paired_interval(mean_p, reference, rows["y_val"])
            row["minus_first_ci95"] = f"{low:+.4f}..{high:+.4f}"
        log.info("%s: validation AUC %.4f", label, row["validation_auc"])
        table.append(row)
    served, before = table[-1], table[0]
    return BenchReport(
        name="like-head",
        params={
            "quick": quick,
            "seeds": list(seeds),
            "folds": FOLDS,
            "stacked_rows": len(rows["y_fit"]),
            "validation_events": len(rows["y_val"]),
        },
        results={"rows": table},
        targets=[
            Target(
                "validation AUC, served head minus the head before",
                served["validation_auc"] - before["validation_auc"],
                0.0,
            ),
            Target(
                "user folds' AUC, served head minus the head before",
                served["user_folds_auc"] - before["user_folds_auc"],
                0.0,
            ),
        ],
        table=table,
    )
