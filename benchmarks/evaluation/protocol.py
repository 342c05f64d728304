"""The evaluation protocol's parts: folds, ranked lists, their metrics, intervals, tuning.

Protocol (per-user temporal leave-one-out, see :func:`catalog.splits.leave_one_out`): each
user's last interaction is the test item, the second-to-last the validation item; ties in time
are broken by a seeded random order. Hyperparameters are chosen on validation (models fitted on
train); the chosen models are refitted on train + validation and evaluated once on test. Every
method ranks the full catalog minus the user's known items (train, and validation when testing).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from benchmarks.baselines import Scorer, TrainData, Validation
from catalog.history import group_histories
from catalog.model import Catalog, Interactions, User
from catalog.progress import Progress
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate, likes
from catalog.thresholds import COLD_ITEM_THRESHOLD, LIKE_THRESHOLD
from metrics import (
    auc,
    coverage_at_k,
    gini_at_k,
    hit_rate_at_k,
    logloss,
    max_user_share_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    slot_share_at_k,
    top_k,
)
from rerank.cross_encoder.pairs import FeatureMaker
from retrieval.index import VectorIndex
from retrieval.towers import MeanItemsTower, UserState, UserTower
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker

KS = (10, 20, 50, 100)
RERANK_DEPTH = 100
"""Candidates reranked per user: the serving default (and what every @100 column needs)."""


@dataclass
class Fold:
    """One evaluation fold: what the model may see, and the held-out item per user."""

    name: str
    train: Interactions
    target: Interactions
    users: list[str]
    user_row: dict[str, int]
    item_ids: list[str]
    item_col: dict[str, int]
    matrix: sp.csr_matrix
    seen: list[set[int]] = field(default_factory=list)
    relevant: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    like: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    sequences: list[npt.NDArray[np.int64]] = field(default_factory=list)

    @functools.cached_property
    def data(self) -> TrainData:
        """What a baseline fits on: the matrix and each user row's ordered items."""
        return TrainData(self.matrix, self.sequences)

    @property
    def validation(self) -> Validation:
        """The held-out targets, for methods that early-stop on this fold."""
        rows = np.array([self.user_row[u] for u in self.users], dtype=np.int64)
        return Validation(rows, self.relevant)


def make_fold(
    name: str,
    catalog: Catalog,
    train: Interactions,
    target: Interactions,
    max_users: int | None,
    seed: int,
) -> Fold:
    """Matrix of ``train``, and for each target user the held-out item and its like label."""
    item_ids = list(catalog.items)
    item_col = {i: n for n, i in enumerate(item_ids)}
    all_users = sorted(set(train.user_ids.tolist()) | set(target.user_ids.tolist()))
    user_row = {u: n for n, u in enumerate(all_users)}
    rows = np.array([user_row[u] for u in train.user_ids.tolist()], dtype=np.int64)
    cols = np.array([item_col[i] for i in train.item_ids.tolist()], dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(all_users), len(item_ids))
    )
    matrix.data[:] = 1.0  # repeated events count once
    histories = group_histories(train, seed=seed)  # time order, the splits' tie-break
    sequences = [
        np.array([item_col[e.item_id] for e in histories.get(u, [])], dtype=np.int64)
        for u in all_users
    ]
    targets = {
        u: (i, r)
        for u, i, r in zip(
            target.user_ids.tolist(), target.item_ids.tolist(), target.ratings.tolist(), strict=True
        )
    }
    users = sorted(targets)
    if max_users is not None and len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False))
    seen = [set(matrix[user_row[u]].indices.tolist()) for u in users]
    relevant = np.array([item_col[targets[u][0]] for u in users], dtype=np.int64)
    liked = dict(zip(target.user_ids.tolist(), likes(target, LIKE_THRESHOLD).tolist(), strict=True))
    like = np.array([1.0 if liked[u] else 0.0 for u in users])
    return Fold(
        name,
        train,
        target,
        users,
        user_row,
        item_ids,
        item_col,
        matrix,
        seen,
        relevant,
        like,
        sequences,
    )


@dataclass
class Ranked:
    """A method's output on a fold: top-100 item columns per user and the target's score."""

    top: npt.NDArray[np.int64]
    target_score: npt.NDArray[np.float64]
    probabilities: bool = False


def rank_with(scorer: Scorer, fold: Fold, depth: int = max(KS)) -> Ranked:
    """Full ranking with a scorer, seen items excluded."""
    rows = np.array([fold.user_row[u] for u in fold.users], dtype=np.int64)
    tops, target = [], []
    for start in range(0, len(rows), 256):
        block = scorer.scores(rows[start : start + 256]).astype(np.float64)
        for n, seen in enumerate(fold.seen[start : start + 256]):
            block[n, list(seen)] = -np.inf
        target.append(block[np.arange(len(block)), fold.relevant[start : start + 256]])
        tops.append(top_k(block, depth))
    return Ranked(np.concatenate(tops), np.concatenate(target))


def rank_two_tower(
    tower: UserTower,
    index: VectorIndex,
    fold: Fold,
    histories: Mapping[str, Sequence[HistoryEvent]],
    depth: int = max(KS),
    *,
    item_vectors: ItemVectors | None = None,
    profiles: Mapping[str, Mapping[str, str]] | None = None,
) -> Ranked:
    """The user path of the Recommender: tower vector -> index search, seen items excluded.

    A user the tower cannot embed gets popularity order (the Recommender's cold-start
    fallback). ``item_vectors`` (default: the mean-items tower's own) scores the target.
    """
    if item_vectors is None:
        if not isinstance(tower, MeanItemsTower):
            raise ValueError("item_vectors is required for towers other than mean_items")
        item_vectors = tower.item_vectors
    states = [UserState(u, (profiles or {}).get(u, {}), histories.get(u, [])) for u in fold.users]
    vectors = tower.embed(states)
    pop = np.asarray(fold.matrix.sum(axis=0)).ravel()
    pop_order = np.argsort(-pop, kind="stable")
    exclude = [{fold.item_ids[c] for c in s} for s in fold.seen]
    result = index.search(vectors, depth, exclude=exclude)
    top = np.array(
        [[fold.item_col[i] for i in row] + [-1] * (depth - len(row)) for row in result.ids],
        dtype=np.int64,
    )
    target_vecs = item_vectors.matrix[item_vectors.rows([fold.item_ids[c] for c in fold.relevant])]
    target = np.einsum("ij,ij->i", vectors, target_vecs).astype(np.float64)
    for n, v in enumerate(vectors):
        if not np.any(v):
            top[n] = [c for c in pop_order if c not in fold.seen[n]][:depth]
            target[n] = 0.0
    return Ranked(top, target)


def metrics_of(
    ranked: Ranked, fold: Fold, cold: npt.NDArray[np.bool_] | None = None
) -> dict[str, Any]:
    """Recall/HR, NDCG, MRR at every K; coverage; like/dislike AUC (and log loss)."""
    rel = fold.relevant[:, None]
    out: dict[str, Any] = {}
    for k in KS:
        out[f"recall@{k}"] = float(recall_at_k(ranked.top, rel, k))
        out[f"hr@{k}"] = float(hit_rate_at_k(ranked.top, rel, k))
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranked.top, rel, k))
        out[f"mrr@{k}"] = float(mrr_at_k(ranked.top, rel, k))
    out.update(exposure_of(ranked, fold))
    finite = np.isfinite(ranked.target_score)
    if finite.all() and len(set(fold.like.tolist())) == 2:
        out["auc"] = auc(ranked.target_score, fold.like)
        if ranked.probabilities:
            out["logloss"] = logloss(ranked.target_score, fold.like)
    if cold is not None and cold.any():
        out["cold_items"] = int(cold.sum())
        out["cold_recall@100"] = float(recall_at_k(ranked.top[cold], rel[cold], 100))
    return out


def exposure_of(ranked: Ranked, fold: Fold, k: int = 10) -> dict[str, Any]:
    """Beyond accuracy, from the lists alone: catalog coverage and the Gini of exposure of
    the top K, the largest share of users one item reaches, and for cold items (fewer than
    :data:`COLD_ITEM_THRESHOLD` interactions in the fold's data) that share and their share
    of all slots: a cold item in many users' lists is a hub, not a discovery."""
    n_items = len(fold.item_ids)
    cold = np.asarray(fold.matrix.sum(axis=0)).ravel() < COLD_ITEM_THRESHOLD
    share, item = max_user_share_at_k(ranked.top, k, n_items)
    cold_share, cold_item = max_user_share_at_k(ranked.top, k, n_items, among=cold)
    return {
        f"coverage@{k}": coverage_at_k(ranked.top, k, n_items),
        f"gini@{k}": gini_at_k(ranked.top, k, n_items),
        f"max_item_share@{k}": share,
        f"max_item_share@{k}_item": fold.item_ids[item] if item >= 0 else None,
        f"cold_max_item_share@{k}": cold_share,
        f"cold_max_item_share@{k}_item": fold.item_ids[cold_item] if cold_item >= 0 else None,
        f"cold_slot_share@{k}": slot_share_at_k(ranked.top, k, cold),
    }


def per_user_ndcg10(ranked: Ranked, fold: Fold) -> npt.NDArray[np.float64]:
    """NDCG@10 per user (for bootstrap intervals)."""
    values = ndcg_at_k(ranked.top, fold.relevant[:, None], 10, per_user=True)
    return np.asarray(values, dtype=np.float64)


def bootstrap_ci(
    values: npt.NDArray[np.float64], *, samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling users with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def tune(
    candidates: Sequence[Scorer],
    fold: Fold,
    metric: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
) -> tuple[Scorer, list[dict[str, Any]]]:
    """Fits each candidate on the validation fold; returns the best and the grid's results.

    A candidate that early-stops gets the fold's targets; its row records the epochs chosen.
    """
    grid = []
    best: tuple[float, Scorer] | None = None
    for scorer in candidates:
        started = time.perf_counter()
        scorer.fit(fold.data, fold.validation)
        value = metrics_of(rank_with(scorer, fold), fold)[metric]
        row = {
            "params": dict(scorer.params),
            metric: value,
            "seconds": time.perf_counter() - started,
        }
        if scorer.refit_params() != scorer.params:
            row["refit_params"] = scorer.refit_params()
        grid.append(row)
        if progress is not None:
            progress(
                f"{scorer.name}: {row['params']} -> validation {metric} {value:.4f} "
                f"({row['seconds']:.0f} s)"
            )
        if best is None or value > best[0]:
            best = (value, scorer)
    assert best is not None
    return best[1], grid


def tune_staged(
    make: Callable[..., Scorer],
    start: Mapping[str, Any],
    stages: Sequence[Mapping[str, Sequence[Any]]],
    fold: Fold,
    metric: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
    name: str = "grid",
) -> tuple[Scorer, list[dict[str, Any]]]:
    """Coordinate search: each stage grids its settings with the rest at the best so far.

    Costs the sum of the stages' grids instead of their product; the order of the stages is
    the order of how much each setting matters (a shape first, then regularisation). With
    ``progress``, a bar (or log lines) counts the settings tried, ``name`` its label.
    """
    best_params = dict(start)
    best: tuple[float, Scorer] | None = None
    grid: list[dict[str, Any]] = []
    tried: dict[str, float] = {}
    points = sum(math.prod(len(v) for v in stage.values()) for stage in stages) or 1
    bar = Progress(f"{name}: validation grid", points, "settings", enabled=progress is not None)
    for n, stage in enumerate(stages or [{}]):  # no stages: the starting settings alone
        names = list(stage)
        for values in itertools.product(*(stage[k] for k in names)):
            bar.update()
            params = {**best_params, **dict(zip(names, values, strict=True))}
            key = repr(sorted(params.items()))
            if key in tried:  # the best so far is usually in the next stage's grid too
                continue
            scorer, rows = tune([make(**params)], fold, metric, progress)
            rows[0]["stage"] = n + 1
            grid += rows
            tried[key] = rows[0][metric]
            if best is None or rows[0][metric] > best[0]:
                best = (rows[0][metric], scorer)
        assert best is not None
        # carry the best so far (start keys and every stage's keys) into the next stage
        best_params = {k: best[1].params[k] for k in (*best_params, *names)}
    bar.close()
    if progress is not None:
        progress(bar.summary(tried=len(tried)))
    assert best is not None
    return best[1], grid


def rerank_top(
    ranked: Ranked,
    fold: Fold,
    catalog: Catalog,
    reranker: Reranker,
    features: FeatureMaker,
    histories: Mapping[str, Sequence[HistoryEvent]],
    template: UserTextTemplate,
    depth: int = RERANK_DEPTH,
) -> Ranked:
    """Reranks each user's top ``depth`` with the point-wise reranker (the Recommender's path:
    same user text, same features), and scores the held-out item for AUC."""
    item_template = ItemTextTemplate()
    top = np.full_like(ranked.top, -1)
    target = np.zeros(len(fold.users))
    for n, user in enumerate(fold.users):
        history = histories.get(user, [])
        text = template.render(catalog.users.get(user, User(user)), history, catalog.items)
        vector = features.user_vector(history)
        cols = [c for c in ranked.top[n, :depth].tolist() if c >= 0]
        ids = [fold.item_ids[c] for c in [*cols, int(fold.relevant[n])]]
        feats = features.features(vector, ids, history)
        probs = reranker.score(text, [item_template.render(catalog.items[i]) for i in ids], feats)
        order = np.argsort(-probs[:-1], kind="stable")
        top[n, : len(cols)] = np.array(cols)[order]
        target[n] = probs[-1]
    return Ranked(top, target, probabilities=True)


def calibration_curve(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], bins: int = 10
) -> list[dict[str, float]]:
    """Equal-width bins of predicted P(like): mean prediction, observed like rate, count."""
    idx = np.minimum((probabilities * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append(
                {
                    "predicted": float(probabilities[mask].mean()),
                    "observed": float(labels[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return out
