"""Candidate sources for the ranking stage: several generators over one catalog, merged.

One inner product ranks well what it can express; a ranking stage earns its place when its
candidates also come from signals it cannot: what is watched next to the user's last items
(co-visitation), collaborative factors (ALS), what is popular right now. Each source proposes up
to ``k`` items for a user's history at request time ``at``; :func:`merge` deduplicates them and
keeps every source's score and rank per candidate (a missing source is a flag, not a zero).

Time: a source never reads an event at or after ``at``. Histories are cut at ``at``; the
tables (co-visitation, factors, popularity) are built from a log that ends before the request,
and :class:`RecentPopularitySource` reads only its window ``[at - window, at)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from catalog.history import before, item_columns
from catalog.text import HistoryEvent
from metrics import top_k
from retrieval.index import VectorIndex
from retrieval.towers import UserState, UserTower

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Proposal:
    """One source's candidates for one user, best first, with the source's scores."""

    ids: list[str]
    scores: Floats


def recency_weights(
    sequences: Sequence[Sequence[int]],
    n_items: int,
    half_life: float,
    last: int | None = None,
) -> sp.csr_matrix:
    """(users, items) weights of each user's item columns (oldest first):
    ``0.5 ** (events since / half_life)``, a repeated item keeping its most recent weight;
    only the ``last`` newest events when given. Item-kNN's recency option and co-visitation
    share it."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for n, seq in enumerate(sequences):
        recent = list(seq)[-last:] if last else list(seq)
        latest: dict[int, float] = {}
        for ago, c in enumerate(reversed(recent)):
            latest.setdefault(int(c), 0.5 ** (ago / half_life))
        rows += [n] * len(latest)
        cols += list(latest)
        vals += list(latest.values())
    return sp.csr_matrix(
        (np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(len(sequences), n_items)
    )


def _before(history: Sequence[HistoryEvent], at: int | None) -> list[HistoryEvent]:
    """The events a request at ``at`` may see (all of them when ``at`` is None)."""
    return list(history) if at is None else before(history, at)


class CandidateSource(ABC):
    """Proposes items for a user's history at a request time."""

    name: str = ""

    @abstractmethod
    def propose_many(
        self,
        histories: Sequence[Sequence[HistoryEvent]],
        ats: Sequence[int | None],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[Proposal]:
        """Up to ``k`` items per user, none of ``excludes[n]``; row ``n`` for user ``n``."""

    def propose(
        self,
        history: Sequence[HistoryEvent],
        at: int | None = None,
        k: int = 100,
        exclude: Collection[str] = (),
    ) -> Proposal:
        """:meth:`propose_many` for one user."""
        return self.propose_many([history], [at], k, [exclude])[0]


class _CatalogScorer(CandidateSource):
    """A source that scores every catalog item densely, then keeps the top ``k``.

    Scores of 0 or less mean "no evidence" (never proposed) unless ``signed``; -inf always.
    """

    signed = False

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.item_col = {i: n for n, i in enumerate(self.item_ids)}

    def _columns(self, history: Sequence[HistoryEvent]) -> list[int]:
        """The history's item columns, oldest first (unknown items skipped)."""
        return item_columns(history, self.item_col)

    @abstractmethod
    def _scores(
        self, histories: Sequence[Sequence[HistoryEvent]], ats: Sequence[int | None]
    ) -> npt.NDArray[np.float64]:
        """(users, items) scores; 0 = no evidence (such an item is never proposed)."""

    def propose_many(
        self,
        histories: Sequence[Sequence[HistoryEvent]],
        ats: Sequence[int | None],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[Proposal]:
        cut = [_before(h, at) for h, at in zip(histories, ats, strict=True)]
        scores = self._scores(cut, ats)
        if not self.signed:
            scores[scores <= 0] = -np.inf
        for n, exclude in enumerate(excludes):
            cols = [self.item_col[i] for i in exclude if i in self.item_col]
            scores[n, cols] = -np.inf
        out = []
        for n, row in enumerate(top_k(scores, k)):
            row = row[row >= 0]
            out.append(Proposal([self.item_ids[c] for c in row], scores[n, row].astype(np.float32)))
        return out


class TowerSource(CandidateSource):
    """The first stage: the user tower's vector searched in the FAISS index."""

    name = "tower"

    def __init__(self, tower: UserTower, index: VectorIndex) -> None:
        self.tower = tower
        self.index = index

    def propose_many(
        self,
        histories: Sequence[Sequence[HistoryEvent]],
        ats: Sequence[int | None],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[Proposal]:
        cut = [_before(h, at) for h, at in zip(histories, ats, strict=True)]
        vectors = self.tower.embed([UserState(history=h) for h in cut])
        result = self.index.search(vectors, k, exclude=list(excludes))
        out = []
        for n, (ids, vector) in enumerate(zip(result.ids, vectors, strict=True)):
            if not np.any(vector):  # the tower cannot embed this user: no proposal
                out.append(Proposal([], np.zeros(0, np.float32)))
                continue
            out.append(Proposal(list(ids), result.scores[n, : len(ids)].astype(np.float32)))
        return out


class CoVisitationSource(_CatalogScorer):
    """Items watched within ``window`` events of the user's recent items, by anyone.

    ``C[a, b]`` counts the users' sequences in which ``b`` comes within ``window`` events of
    ``a`` (either side). A user's score for ``b`` sums ``C[a, b]`` over their last
    ``n_recent`` items, each weighted ``0.5 ** (events since / half_life)``; ``normalise``
    divides by the geometric mean of the two items' counts (a cosine: hubs count less).
    """

    name = "covisit"

    def __init__(
        self,
        item_ids: Sequence[str],
        table: sp.csr_matrix,
        *,
        n_recent: int = 20,
        half_life: float = 5.0,
    ) -> None:
        super().__init__(item_ids)
        self.table = table
        self.n_recent = n_recent
        self.half_life = half_life

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        histories: Mapping[str, Sequence[HistoryEvent]],
        *,
        window: int = 5,
        normalise: bool = True,
        n_recent: int = 20,
        half_life: float = 5.0,
    ) -> CoVisitationSource:
        """The table from time-ordered histories (events of unknown items are skipped)."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        col = {i: n for n, i in enumerate(item_ids)}
        rows: list[npt.NDArray[np.int64]] = []
        cols: list[npt.NDArray[np.int64]] = []
        for history in histories.values():
            seq = np.array([col[e.item_id] for e in history if e.item_id in col], dtype=np.int64)
            for lag in range(1, window + 1):
                if len(seq) > lag:
                    rows += [seq[:-lag], seq[lag:]]
                    cols += [seq[lag:], seq[:-lag]]
        n = len(col)
        if rows:
            r, c = np.concatenate(rows), np.concatenate(cols)
            keep = r != c
            table = sp.csr_matrix(
                (np.ones(int(keep.sum()), dtype=np.float32), (r[keep], c[keep])), shape=(n, n)
            )
        else:
            table = sp.csr_matrix((n, n), dtype=np.float32)
        table.sum_duplicates()
        if normalise and table.nnz:
            counts = np.zeros(n, dtype=np.float64)
            for history in histories.values():
                for item in {e.item_id for e in history if e.item_id in col}:
                    counts[col[item]] += 1
            coo = table.tocoo()
            denom = np.sqrt(counts[coo.row] * counts[coo.col])
            table = sp.csr_matrix(
                ((coo.data / np.maximum(denom, 1.0)).astype(np.float32), (coo.row, coo.col)),
                shape=(n, n),
            )
        return cls(item_ids, table, n_recent=n_recent, half_life=half_life)

    def _scores(
        self, histories: Sequence[Sequence[HistoryEvent]], ats: Sequence[int | None]
    ) -> npt.NDArray[np.float64]:
        sequences = [self._columns(h) for h in histories]
        weights = recency_weights(sequences, len(self.item_ids), self.half_life, self.n_recent)
        return np.asarray((weights @ self.table).toarray(), dtype=np.float64)


class FactorSource(_CatalogScorer):
    """Collaborative factors (ALS): the user folded in from their history, scored by dot
    product against every item's factors (``retrieval.als``'s exact user step)."""

    name = "als"
    signed = True  # a dot product: negative scores still rank

    def __init__(
        self, item_ids: Sequence[str], item_factors: Floats, *, reg: float, alpha: float
    ) -> None:
        super().__init__(item_ids)
        if item_factors.shape[0] != len(self.item_ids):
            raise ValueError(f"{item_factors.shape[0]} factor rows for {len(self.item_ids)} items")
        self.factors = item_factors
        self.empty = ~np.any(item_factors, axis=1)
        self.reg = reg
        self.alpha = alpha
        # built on the first call, then kept: the factors under a zero row (row 0 pads), and
        # Y'Y + reg I, the part of the system every user's solve shares
        self._padded: Floats | None = None
        self._gram: npt.NDArray[np.float64] | None = None

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        histories: Mapping[str, Sequence[HistoryEvent]],
        *,
        factors: int = 64,
        reg: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 20,
        seed: int = 0,
    ) -> FactorSource:
        """Fits ALS on the histories (binary; settings as the ALS baseline's grid)."""
        from retrieval.als import fit_als

        rows = {i: n + 1 for n, i in enumerate(item_ids)}  # fit_als keeps row 0 empty
        y = fit_als(
            histories,
            rows,
            factors=factors,
            reg=reg,
            alpha=alpha,
            iterations=iterations,
            seed=seed,
        )
        return cls(item_ids, y[1:], reg=reg, alpha=alpha)

    def _scores(
        self, histories: Sequence[Sequence[HistoryEvent]], ats: Sequence[int | None]
    ) -> npt.NDArray[np.float64]:
        from retrieval.als import als_gram, fold_in

        if self._padded is None or self._gram is None:
            zero = np.zeros((1, self.factors.shape[1]), np.float32)
            self._padded = np.vstack([zero, self.factors])
            self._gram = als_gram(self._padded, self.reg)
        rows = [[c + 1 for c in self._columns(h)] for h in histories]  # row 0: padding
        users = fold_in(self._padded, rows, self.reg, self.alpha, gram=self._gram)
        scores = (users @ self.factors.T).astype(np.float64)
        scores[~np.any(users, axis=1)] = -np.inf  # no known item: no proposal
        scores[:, self.empty] = -np.inf  # an item with no events has no factors: no proposal
        return scores


class PopularitySource(_CatalogScorer):
    """Proposes the items with the most events in a window before the request time; a
    subclass says how it counts them (:meth:`counts_at`)."""

    name = "popular"

    @abstractmethod
    def counts_at(self, at: int | None) -> npt.NDArray[np.float64]:
        """Events per item in the window before ``at`` (the log's last window when None)."""

    def _scores(
        self, histories: Sequence[Sequence[HistoryEvent]], ats: Sequence[int | None]
    ) -> npt.NDArray[np.float64]:
        return (
            np.stack([self.counts_at(at) for at in ats])
            if ats
            else np.zeros((0, len(self.item_ids)))
        )


class RecentPopularitySource(PopularitySource):
    """The most interacted items in the ``window`` seconds before the request time, from a list
    of events (the evaluation's candidate-recall table; the ranking stage's own, read from its
    item-side log answers, is :class:`rerank.ranker.popular.LogPopularitySource`)."""

    def __init__(
        self,
        item_ids: Sequence[str],
        times: npt.NDArray[np.int64],
        cols: npt.NDArray[np.int64],
        window: int,
    ) -> None:
        super().__init__(item_ids)
        order = np.argsort(times, kind="stable")
        self.times = times[order]
        self.cols = cols[order]
        self.window = window

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        histories: Mapping[str, Sequence[HistoryEvent]],
        *,
        window: int = 30 * 86_400,
    ) -> RecentPopularitySource:
        """Every event's time and item from the histories (unknown items skipped)."""
        if window < 1:
            raise ValueError(f"window must be >= 1 second, got {window}")
        col = {i: n for n, i in enumerate(item_ids)}
        events = [
            (e.timestamp, col[e.item_id]) for h in histories.values() for e in h if e.item_id in col
        ]
        arr = np.array(events, dtype=np.int64).reshape(-1, 2)
        return cls(item_ids, arr[:, 0], arr[:, 1], window)

    def counts_at(self, at: int | None) -> npt.NDArray[np.float64]:
        """Events per item in ``[at - window, at)`` (the log's last window when ``at`` is None)."""
        n = len(self.item_ids)
        end = (int(self.times[-1]) + 1 if len(self.times) else 0) if at is None else at
        lo, hi = np.searchsorted(self.times, [end - self.window, end], side="left")
        return np.bincount(self.cols[lo:hi], minlength=n).astype(np.float64)


@dataclass(frozen=True)
class CandidateSet:
    """Merged candidates of one user: each source's score and rank per candidate.

    ``present[n, s]`` says whether source ``s`` proposed candidate ``n``; where it did not,
    ``score`` is 0 and ``rank`` is the source's depth (one past its last rank).
    """

    ids: list[str]
    sources: list[str]
    score: Floats
    rank: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]


def merge(
    proposals: Mapping[str, Proposal], depth: Mapping[str, int] | None = None
) -> CandidateSet:
    """Deduplicates the sources' proposals, ordered by each candidate's best rank in any
    source (ties by the sources' order), keeping every source's score and rank."""
    sources = list(proposals)
    best: dict[str, tuple[int, int]] = {}
    for s, name in enumerate(sources):
        for r, item in enumerate(proposals[name].ids):
            if item not in best or (r, s) < best[item]:
                best[item] = (r, s)
    ids = sorted(best, key=lambda i: best[i])
    pos = {i: n for n, i in enumerate(ids)}
    score = np.zeros((len(ids), len(sources)), dtype=np.float32)
    present = np.zeros((len(ids), len(sources)), dtype=bool)
    rank = np.zeros((len(ids), len(sources)), dtype=np.int64)
    for s, name in enumerate(sources):
        proposal = proposals[name]
        rank[:, s] = (depth or {}).get(name, len(proposal.ids))
        for r, (item, value) in enumerate(zip(proposal.ids, proposal.scores.tolist(), strict=True)):
            score[pos[item], s] = value
            rank[pos[item], s] = r
            present[pos[item], s] = True
    return CandidateSet(ids, sources, score, rank, present)
