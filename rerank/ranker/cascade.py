"""The text cascade: the cross-encoder's logit as a ranking-stage feature for the top N.

The features ranker orders every candidate (the first pass). The cross-encoder reads the
first pass's top ``depth`` as text, and a second, small LightGBM pass sees its logit next to
every feature the ranker had (interaction counts, item age, vector similarities) and learns
the correction to the first pass's score (:class:`rerank.ranker.model.GBDTRanker` with the
first pass as its base). Trees can learn what a weighted sum cannot: "no interactions yet, so
trust the text". Rows below ``depth`` keep the first pass's order, under the reordered top.

The second pass must learn from lists the cross-encoder never trained on (its logits on its
own training pairs would be overconfident): the validation lists, cross-fitted in two halves
for its own figures (:func:`cross_fitted_cascade`). Nothing here runs the cross-encoder: its
logits come in as arrays, so the ranker package stays free of torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from rerank.ranker.candidates import Lists
from rerank.ranker.model import GBDTRanker, RankerConfig, with_targets

FIRST_PASS = "first_pass_score"
"""The second pass's base column: the features ranker's score."""
TEXT_LOGIT = "text_logit"
"""The cross-encoder's logit of the pair (its text's own evidence, features zeroed)."""
DEPTHS = (10, 20, 50)
"""The top N tried on validation (N >= 10: NDCG@10 is then the same on the top N as on the
whole list)."""
SECOND_PASS = RankerConfig(
    num_leaves=7,
    min_data_in_leaf=20,
    max_rounds=300,
    early_stopping=30,
    folds=1,
    bag=False,
    holdout=0.25,
    cold_dropout=0.0,
)
"""Small trees: the second pass learns from a few hundred validation lists, not thousands.
No cold copies: a cold row's first-pass score would still be its warm one. One held-out share
and a refit, the recipe `bench cascade` measured."""

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]


def top_rows(lists: Lists, scores: npt.NDArray[np.floating], depth: int) -> Rows:
    """Each list's top ``depth`` rows by ``scores`` (stable: ties keep the list's order), as
    row indices into ``lists``, list after list, best first."""
    off = lists.offsets
    parts = []
    for n in range(len(lists.sizes)):
        s = np.asarray(scores[off[n] : off[n + 1]], dtype=np.float64)
        parts.append(off[n] + np.argsort(-s, kind="stable")[:depth])
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def cascade_lists(lists: Lists, rows: Rows, first: Floats, text: Floats) -> Lists:
    """The rows ``rows`` of ``lists`` (each list's top, from :func:`top_rows`) with two more
    columns: the first pass's score and the text logit (both given per row of ``lists``)."""
    list_of = np.repeat(np.arange(len(lists.sizes)), lists.sizes)
    sizes = np.bincount(list_of[rows], minlength=len(lists.sizes)).astype(np.int64)
    x = np.column_stack([lists.x[rows], first[rows], text[rows]]).astype(np.float32)
    return Lists(
        x,
        sizes,
        lists.cols[rows],
        lists.labels[rows],
        (*lists.names, FIRST_PASS, TEXT_LOGIT),
        lists.users,
        lists.depths,
    )


@dataclass
class TextCascade:
    """The second pass over the first pass's top ``depth``."""

    depth: int
    second: GBDTRanker

    @classmethod
    def fit(
        cls,
        top: Lists,
        depth: int,
        config: RankerConfig = SECOND_PASS,
        progress: Callable[[str], None] | None = None,
    ) -> TextCascade:
        """Fits on :func:`cascade_lists` of lists the cross-encoder never trained on."""
        return cls(depth, GBDTRanker.fit(top, config, base=FIRST_PASS, progress=progress))

    def scores(self, top: Lists) -> Floats:
        """The second pass's score of each row of :func:`cascade_lists`."""
        return self.second.score(top.x)


def reordered(first: Floats, lists: Lists, rows: Rows, second: Floats) -> Floats:
    """Scores over every row of ``lists`` whose order is the cascade's: each list's top rows
    (``rows``, from :func:`top_rows`) by ``second``, then the others by ``first`` (the score
    is minus the position, so every sort of it gives that order)."""
    out = np.zeros(len(lists.cols), dtype=np.float64)
    off = lists.offsets
    list_of = np.repeat(np.arange(len(lists.sizes)), lists.sizes)
    top_of = list_of[rows]
    is_top = np.zeros(len(lists.cols), dtype=bool)
    is_top[rows] = True
    for n in range(len(lists.sizes)):
        mine = rows[top_of == n]
        ahead = mine[np.argsort(-second[top_of == n], kind="stable")]
        rest = np.arange(off[n], off[n + 1])[~is_top[off[n] : off[n + 1]]]
        rest = rest[np.argsort(-np.asarray(first[rest], np.float64), kind="stable")]
        out[np.concatenate([ahead, rest]).astype(np.int64)] = -np.arange(off[n + 1] - off[n])
    return out


def cross_fitted_cascade(
    lists: Lists,
    first: Floats,
    text: Floats,
    depth: int,
    seed: int,
    config: RankerConfig = SECOND_PASS,
) -> tuple[Floats, list[dict[str, float]]]:
    """The cascade's served-order scores over every row of ``lists``, each half of the lists
    reordered by a second pass fitted on the other half; returns them and each fit's record."""
    order = np.random.default_rng(seed).permutation(len(lists.sizes))
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    rows = top_rows(lists, first, depth)
    top = cascade_lists(lists, rows, first, text)
    top_off = top.offsets
    second = np.zeros(len(rows), dtype=np.float64)
    fits = []
    for fit_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        part = top.select(fit_on)
        if len(with_targets(part).sizes) < 2:  # nothing to learn from: keep the first pass
            fits.append({"lists": float(len(fit_on)), "rounds": 0.0})
            scored = top.select(score_on).column(FIRST_PASS).astype(np.float64)
        else:
            cascade = TextCascade.fit(part, depth, replace(config, seed=seed))
            record = cascade.second.record
            fits.append({k: float(v) for k, v in record.items() if _is_number(v)})
            scored = cascade.scores(top.select(score_on))
        at = (
            np.concatenate([np.arange(top_off[n], top_off[n + 1]) for n in score_on])
            if len(score_on)
            else np.zeros(0, np.int64)
        )
        second[at] = scored
    return reordered(first, lists, rows, second), fits


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
