"""The ranking stage's features: what one inner product cannot express, in batch.

A request is a user's history and a time ``at``; its candidates are the merged proposals of
the candidate sources (:mod:`retrieval.sources`). Every feature reads only events strictly
before ``at``: the windowed counts (whole days before ``at``'s day, plus that day up to ``at``:
:func:`window_start`) and the item's age come from the :class:`EventLog` cut at ``at``, the
history-based ones from the request's history (which the caller cuts at ``at``), and
the tables (co-visitation, co-occurrence, factors) from the log the first stage was fitted on,
which never holds the request's own target (see :mod:`rerank.ranker.stacking`).

One definition for training, evaluation and serving: :meth:`RankingFeatures.compute` turns a
batch of requests and their candidate lists into one ``(rows, features)`` matrix with numpy.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from catalog.history import before, item_columns
from catalog.ratings import shrunk_mean
from catalog.text import HistoryEvent
from catalog.thresholds import LIKE_THRESHOLD
from retrieval.sources import CandidateSet

Floats = npt.NDArray[np.float32]
DAY = 86_400
WINDOWS = (7, 30, 365)
"""Days of the windowed interaction counts."""
LAST = (1, 5, 20)
"""How many of the user's newest items the co-visitation and kNN features sum over."""
RATED_RECENT = 50
"""Newest rated items the user's rating of the candidate's neighbours is read from."""
SHRINK = 5.0
"""Pseudo-ratings every shrunk mean is pulled toward the global mean by."""
DENSE_GENRES_BYTES = 32 << 20
"""Up to this size the genre table is also held dense (ml-latest-small's: 0.8 MB)."""
NEIGHBOURS = 300
"""Items each item keeps the co-occurrence count of (its most similar by cosine), for the kNN
and neighbour-rating features (:mod:`rerank.ranker.neighbours`)."""


def day_start(at: int | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The start (UTC midnight) of the day of ``at``."""
    a = np.asarray(at, dtype=np.int64)
    out: npt.NDArray[np.int64] = a - a % DAY
    return out


def window_start(at: int | npt.NDArray[np.int64], days: int) -> npt.NDArray[np.int64]:
    """Where a window of ``days`` days before ``at`` starts: ``days`` whole days before ``at``'s
    day. Starting at a day boundary is what lets a serving process hold per-item counts at a
    few boundaries instead of every event (:class:`rerank.ranker.daycounts.DayCounts`)."""
    out: npt.NDArray[np.int64] = day_start(at) - days * DAY
    return out


FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "first_stage": ("retrieval_score",),
    "exposure": ("exposure_top10",),
    "popularity": (
        *(f"pop_{d}d" for d in WINDOWS),
        "pop_all",
        "trend_7d_30d",
        "age_days",
    ),
    "co_visitation": tuple(f"covisit_last{n}" for n in LAST),
    "knn": tuple(f"knn_last{n}" for n in LAST),
    "vectors": ("text_cos_last", "text_cos_mean", "learned_cos_last", "learned_cos_mean"),
    "user": ("history_length", "days_since_last", "genre_match"),
    "ratings": ("item_mean_rating", "user_mean_rating", "neighbour_rating"),
    "taste": ("user_rating_sd", "user_like_share", "text_rating", "learned_rating", "genre_rating"),
}
"""Every feature by group (the ablation table removes one group at a time). Each source's
``{source}_score``, ``{source}_rank`` and ``{source}_present`` come after these, group
``sources``."""
TEXT_FEATURES = ("text_cos_last", "text_cos_mean", "text_rating")
"""The features that read the items' text vectors (a stage without them reads zeros)."""


def source_features(sources: Sequence[str]) -> tuple[str, ...]:
    """The per-source columns, in the order :meth:`RankingFeatures.compute` writes them."""
    return tuple(f"{s}_{kind}" for s in sources for kind in ("score", "rank", "present"))


def feature_names(sources: Sequence[str]) -> tuple[str, ...]:
    """Every column of :meth:`RankingFeatures.compute` for these sources, in order."""
    return (*(n for g in FEATURE_GROUPS.values() for n in g), *source_features(sources))


def group_of(name: str, sources: Sequence[str]) -> str:
    """The group a feature belongs to (``sources`` for the per-source columns)."""
    for group, names in FEATURE_GROUPS.items():
        if name in names:
            return group
    if name in source_features(sources):
        return "sources"
    raise KeyError(name)


@dataclass(frozen=True)
class Request:
    """One list to rank: a user's history and the time. The history is cut at ``at`` here,
    once (events strictly before it, oldest first), so no feature can read the request's own
    event or a later one."""

    user_id: str
    history: Sequence[HistoryEvent]
    at: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", before(self.history, self.at))


def event_arrays(
    item_col: Mapping[str, int], histories: Mapping[str, Sequence[HistoryEvent]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Every event's item column, time and rating (NaN: none), in the histories' order
    (events of unknown items are skipped)."""
    rows = [
        (item_col[e.item_id], e.timestamp, np.nan if e.rating is None else e.rating)
        for h in histories.values()
        for e in h
        if e.item_id in item_col
    ]
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


class LogQueries(ABC):
    """What the features ask of a log, from five primitives a log answers: events of an item
    before a time, whether it has any and its first, and rating totals of an item or of every
    item before a time. :class:`EventLog` answers them from one sorted log;
    :class:`rerank.ranker.live.LiveLog` from a fitted log plus the events that arrived since,
    with the same answers."""

    rating_total: float
    rated_total: int
    end: int
    """One second after the log's last event (0 for an empty log)."""

    @abstractmethod
    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Events of item ``cols`` strictly before ``ats`` (broadcast)."""

    @abstractmethod
    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each item's first event time (meaningful where it has events)."""

    @abstractmethod
    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each item has any event."""

    @abstractmethod
    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """The sum and the number of item ``cols``'s ratings strictly before ``ats``."""

    @abstractmethod
    def global_totals_before(self, at: int) -> tuple[float, int]:
        """The sum and the number of every rating strictly before ``at``."""

    @property
    def global_mean(self) -> float:
        """The mean of every rating (0 when there is none)."""
        return self.rating_total / self.rated_total if self.rated_total else 0.0

    def global_mean_before(self, at: int) -> float:
        """The mean of every rating before ``at`` (the global mean when there is none)."""
        total, n = self.global_totals_before(at)
        return total / n if n else self.global_mean

    def shrunk_mean_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """The item's mean rating before ``ats``, shrunk toward the global mean, as the
        deviation from it (0 = no evidence)."""
        total, n = self.rating_totals_before(cols, ats)
        g = np.array([self.global_mean_before(int(t)) for t in np.unique(ats)])
        mean = g[np.searchsorted(np.unique(ats), ats)]
        out: npt.NDArray[np.float64] = shrunk_mean(total, n.astype(np.float64), mean, SHRINK) - mean
        return out


class EventLog(LogQueries):
    """Every event's item, time and rating, sorted by (item, time): counts and rating sums of
    any item before any time are two binary searches."""

    def __init__(
        self,
        n_items: int,
        cols: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        ratings: npt.NDArray[np.float64],
    ) -> None:
        order = np.lexsort((times, cols))
        self.n_items = n_items
        self.cols = cols[order]
        self.times = times[order]
        self.t0 = int(self.times.min()) if len(times) else 0
        self.span = (int(self.times.max()) - self.t0 + 2) if len(times) else 2
        self.keys = self.cols * self.span + (self.times - self.t0)
        self.offsets = np.searchsorted(self.cols, np.arange(n_items + 1), side="left")
        rated = ~np.isnan(ratings[order])
        values = np.where(rated, ratings[order], 0.0)
        self.rating_sum = np.concatenate([[0.0], np.cumsum(values)])
        self.rated = np.concatenate([[0], np.cumsum(rated)])
        by_time = np.argsort(self.times, kind="stable")
        self.all_times = self.times[by_time]
        self.all_sum = np.concatenate([[0.0], np.cumsum(values[by_time])])
        self.all_rated = np.concatenate([[0], np.cumsum(rated[by_time])])
        self.rating_total = float(values.sum())
        self.rated_total = int(rated.sum())
        self.end = int(self.times.max()) + 1 if len(times) else 0

    @classmethod
    def of(
        cls, item_col: Mapping[str, int], histories: Mapping[str, Sequence[HistoryEvent]]
    ) -> EventLog:
        """From histories (events of unknown items are skipped)."""
        return cls(len(item_col), *event_arrays(item_col, histories))

    def _position(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Index of the first event of ``cols`` at or after ``ats`` (broadcast)."""
        t = np.clip(ats - self.t0, 0, self.span - 1)
        return np.searchsorted(self.keys, cols * self.span + t, side="left")

    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self._position(cols, ats) - self.offsets[cols]
        return out

    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        first = np.minimum(self.offsets[cols], max(len(self.times) - 1, 0))
        out: npt.NDArray[np.int64] = self.times[first] if len(self.times) else np.zeros_like(cols)
        return out

    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.offsets[cols + 1] > self.offsets[cols]
        return out

    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        end = self._position(cols, ats)
        start = self.offsets[cols]
        return self.rating_sum[end] - self.rating_sum[start], self.rated[end] - self.rated[start]

    def global_totals_before(self, at: int) -> tuple[float, int]:
        end = int(np.searchsorted(self.all_times, at, side="left"))
        return float(self.all_sum[end]), int(self.all_rated[end])


def _unit(matrix: npt.NDArray[np.floating]) -> Floats:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: Floats = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class UnitRows:
    """A matrix whose rows read as unit vectors, scaled when read rather than copied: the
    tower's item vectors are held once by a serving worker (at a million items, 576 floats
    each, a scaled copy would cost 2.3 GB). ``rows[i]`` equals ``_unit(matrix)[i]`` bit for
    bit (the same norms, the same division)."""

    def __init__(self, matrix: npt.NDArray[np.floating]) -> None:
        self.matrix = np.asarray(matrix, dtype=np.float32)  # no copy of float32
        self._scale = np.maximum(np.linalg.norm(self.matrix, axis=1, keepdims=True), 1e-12)

    def __getitem__(self, rows: Any) -> Floats:
        out: Floats = (self.matrix[rows] / self._scale[rows]).astype(np.float32)
        return out


class RankingFeatures:
    """Computes :func:`feature_names` for batches of requests and their candidates.

    Args:
        item_ids: the catalog's item ids (columns of every table).
        log: the first stage's events (windowed counts, age, shrunk means).
        covisit: (items, items) co-visitation table (:class:`retrieval.sources.CoVisitationSource`).
        cooccurrence: (items, items) users two items share, each row holding its most similar
            items only (:func:`rerank.ranker.neighbours.cooccurrence_top_k`).
        item_norm: each item's norm (square root of its users): kNN similarity is the cosine.
        text_vectors: (items, d) text vectors (rows of ``item_ids``), or None.
        learned_vectors: (items, d) the tower's item vectors (rows of ``item_ids``), or None.
        genres: (items, genres) binary genre (or tag) matrix, or None.

    The first stage's exposure per item (:func:`rerank.ranker.candidates.exposure`) is set on
    :attr:`exposure` by the stage that measures it (zeros until then).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        log: LogQueries,
        covisit: sp.csr_matrix,
        cooccurrence: sp.csr_matrix,
        item_norm: npt.NDArray[np.floating],
        text_vectors: npt.NDArray[np.floating] | None = None,
        learned_vectors: npt.NDArray[np.floating] | None = None,
        genres: sp.csr_matrix | None = None,
    ) -> None:
        self.item_ids = list(item_ids)
        self.item_col = {i: n for n, i in enumerate(self.item_ids)}
        self.log = log
        self.covisit = covisit.tocsr()
        self.cooccurrence = cooccurrence.tocsr().astype(np.float32)
        self.item_norm = np.asarray(item_norm, np.float32)
        n = len(self.item_ids)
        none = np.zeros((n, 1), np.float32)
        self.text = UnitRows(text_vectors if text_vectors is not None else none)
        self.learned = UnitRows(learned_vectors if learned_vectors is not None else none)
        g = genres.tocsr().astype(np.float32) if genres is not None else sp.csr_matrix((n, 1))
        sizes = np.asarray(g.sum(axis=1)).ravel()
        self.genres = sp.diags(1.0 / np.maximum(sizes, 1.0)) @ g  # each item's genres sum to 1
        # A few genres over a catalog that is not huge: rows read densely (a sparse row slice
        # costs a call about 0.2 ms, twice a call).
        small = n * self.genres.shape[1] * 4 <= DENSE_GENRES_BYTES
        self._genre_rows = self.genres.toarray().astype(np.float32) if small else self.genres
        self.exposure = np.zeros(n, np.float32)

    def with_learned(
        self,
        learned_vectors: npt.NDArray[np.floating],
        exposure: npt.NDArray[np.floating] | None = None,
    ) -> RankingFeatures:
        """The same tables with another tower's item vectors (normalised as at construction)
        and its exposure."""
        out = copy.copy(self)
        out.learned = UnitRows(learned_vectors)
        if exposure is not None:
            out.exposure = np.asarray(exposure, np.float32)
        return out

    def cols_of(self, history: Sequence[HistoryEvent]) -> list[int]:
        """The history's item columns, oldest first (unknown items skipped)."""
        return item_columns(history, self.item_col)

    def compute(
        self,
        requests: Sequence[Request],
        candidates: Sequence[CandidateSet],
        tower_scores: Sequence[Floats],
    ) -> tuple[Floats, npt.NDArray[np.int64]]:
        """The feature rows of every request's candidates, stacked request after request.

        Args:
            requests: the lists' users, histories and times.
            candidates: each request's merged candidates (the same sources for every request).
            tower_scores: each request's first-stage score for every one of its candidates.

        Returns:
            (rows, features) float32 and each row's candidate column.
        """
        blocks: list[Floats] = []
        cols_out: list[npt.NDArray[np.int64]] = []
        for request, cands, tower in zip(requests, candidates, tower_scores, strict=True):
            cols = np.array([self.item_col[i] for i in cands.ids], dtype=np.int64)
            blocks.append(self._one(request, cols, cands, np.asarray(tower, np.float32)))
            cols_out.append(cols)
        width = len(feature_names(candidates[0].sources)) if candidates else 0
        if not blocks:
            return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
        return np.concatenate(blocks), np.concatenate(cols_out)

    def _one(
        self,
        request: Request,
        cols: npt.NDArray[np.int64],
        cands: CandidateSet,
        tower: Floats,
    ) -> Floats:
        m = len(cols)
        at = np.full(m, request.at, dtype=np.int64)
        past = request.history  # cut at request.at when the request was made
        hist = self.cols_of(past)
        recent = np.array(hist[::-1][: max(LAST)], dtype=np.int64)  # newest first
        out: list[npt.NDArray[np.floating]] = [tower, self.exposure[cols]]

        # popularity: events in windows before at, all-time, trend and age
        total = self.log.count_before(cols, at)
        windows = [total - self.log.count_before(cols, window_start(at, d)) for d in WINDOWS]
        out += [np.log1p(w) for w in windows]
        out.append(np.log1p(total))
        out.append(np.log1p(windows[0]) - np.log1p(windows[1] * 7 / 30))
        first = self.log.first_time(cols)
        out.append(np.where(total > 0, (at - first) / DAY, np.nan))

        # the user's newest rated items (the ratings block below reads them too)
        rated = [
            (self.item_col[e.item_id], e.rating)
            for e in past
            if e.rating is not None and e.item_id in self.item_col
        ][-RATED_RECENT:]
        rcols = np.array([c for c, _ in rated], dtype=np.int64)
        # co-occurrence counts of the recent and the rated items with the candidates, in one
        # sparse product (whole counts: the same values as two products)
        shared = np.unique(np.concatenate([recent, rcols]))
        counts = (
            self.cooccurrence[shared][:, cols].toarray()
            if m and len(shared)
            else np.zeros((len(shared), m))
        )
        # co-visitation and kNN similarity with the newest 1 / 5 / 20 items
        if len(recent) and m:
            visits = self.covisit[recent][:, cols].toarray()
            co = counts[np.searchsorted(shared, recent)]
            knn = co / np.maximum(np.outer(self.item_norm[recent], self.item_norm[cols]), 1e-12)
        else:
            visits = knn = np.zeros((0, m))
        out += [visits[:n].sum(axis=0) if len(visits) else np.zeros(m) for n in LAST]
        out += [knn[:n].sum(axis=0) if len(knn) else np.zeros(m) for n in LAST]

        # text and learned vectors: cosine to the newest item and to the recent mean
        for table in (self.text, self.learned):
            if len(recent):
                last, mean = table[recent[0]], _unit(table[recent].mean(axis=0, keepdims=True))[0]
                out += [table[cols] @ last, table[cols] @ mean]
            else:
                out += [np.zeros(m), np.zeros(m)]

        # the user: history length, time since their last event, genre match
        out.append(np.full(m, np.log1p(len(hist))))
        last_time = max((e.timestamp for e in past), default=None)
        out.append(np.full(m, np.nan if last_time is None else (request.at - last_time) / DAY))
        if hist:
            taste = np.asarray(self._genre_rows[hist[-RATED_RECENT:]].mean(axis=0)).ravel()
            out.append(np.asarray(self._genre_rows[cols] @ taste).ravel())
        else:
            out.append(np.zeros(m))

        # ratings: the item's and the user's shrunk means, the user's ratings of neighbours
        out.append(self.log.shrunk_mean_before(cols, at))
        g = self.log.global_mean_before(request.at)
        values = np.array([r for _, r in rated], dtype=np.float64)
        user_mean = shrunk_mean(values.sum(), len(values), g, SHRINK) if len(rated) else g
        out.append(np.full(m, user_mean - g))
        if rated and m:
            co = counts[np.searchsorted(shared, rcols)]
            sim = co / np.maximum(np.outer(self.item_norm[rcols], self.item_norm[cols]), 1e-12)
            out.append(((values - user_mean) @ sim) / (sim.sum(axis=0) + 1.0))
        else:
            out.append(np.zeros(m))

        out += self._taste(rcols, values, cols, m)

        # every source's score, rank (log) and presence
        for s in range(len(cands.sources)):
            out += [
                cands.score[:, s],
                np.log1p(cands.rank[:, s].astype(np.float64)),
                cands.present[:, s].astype(np.float64),
            ]
        return np.stack([np.asarray(c, dtype=np.float64) for c in out], axis=1).astype(np.float32)

    def _taste(
        self,
        rcols: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        cols: npt.NDArray[np.int64],
        m: int,
    ) -> list[npt.NDArray[np.floating]]:
        """Group ``taste``: how this user rates, and how they rated the items nearest the
        candidate by text, by the tower's vectors and by genre. These read the user's ratings
        and the item's content only, so a new item with no events gets them too: what the
        P(like) head needs to tell a like from a dislike among items nobody rated yet."""
        if not len(values):
            return [np.full(m, np.nan)] * len(FEATURE_GROUPS["taste"])
        spread = float(values.std()) if len(values) > 1 else np.nan
        likes = float((values >= LIKE_THRESHOLD).sum())
        out: list[npt.NDArray[np.floating]] = [
            np.full(m, spread),
            np.full(m, (likes + SHRINK * 0.5) / (len(values) + SHRINK)),
        ]
        deviation = values - values.mean()
        for table in (self.text, self.learned):
            # each rated item weighs its positive cosine to the candidate, cubed: the nearest
            # count most (a product, not np.power: 20x cheaper)
            near = np.maximum(table[rcols] @ table[cols].T, 0.0)
            near *= near * near
            out.append((deviation @ near) / (near.sum(axis=0) + 0.1))
        # sum over rated items of (deviation, 1) x genres shared with the candidate: linear in
        # the rated items, so two thin products (no rated x candidates matrix)
        weights = self._genre_rows[rcols].T @ np.stack([deviation, np.ones_like(deviation)], 1)
        shared = np.asarray(self._genre_rows[cols] @ weights)
        out.append(shared[:, 0] / (shared[:, 1] + 1.0))
        return out
