"""The ranking stage's input: several candidate sources, merged, and their feature rows.

:class:`CandidateStage` holds what a list is built from (the tower and its index, co-visitation,
ALS, recent popularity, and the :class:`~rerank.ranker.features.RankingFeatures` tables), all
fitted on one log. Training lists use a stage fitted before their targets
(:mod:`rerank.ranker.stacking`); validation, test and serving use the stage fitted on everything
before the request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.text import HistoryEvent
from rerank.ranker.features import RankingFeatures, Request, feature_names
from rerank.ranker.popular import LogPopularitySource
from rerank.ranker.tables import ALSParams, StageTables
from retrieval.index import VectorIndex
from retrieval.sources import (
    CandidateSet,
    CandidateSource,
    CoVisitationSource,
    FactorSource,
    Proposal,
    TowerSource,
    merge,
)
from retrieval.towers import UserState, UserTower
from retrieval.vectors import ItemVectors

Floats = npt.NDArray[np.float32]

DEPTHS: dict[str, int] = {"tower": 100, "covisit": 50, "als": 50, "popular": 20}
"""Items each source proposes per request (the merge holds at most their sum)."""
EXPOSURE_K = 10
"""The exposure feature counts the first stage's top 10 (the list a user is shown)."""
EXPOSURE_USERS = 10_000
"""At most this many users (a seeded sample) measure the exposure: enough for shares of 0.1%."""
EMBED_BATCH = 1024


def exposure_key(tower: UserTower) -> str:
    """Which first stage an exposure was measured for: its tower's name, and for pooled item
    vectors how many it pools (a saved exposure serves only the tower it was measured with)."""
    n_recent = getattr(tower, "n_recent", None)
    return tower.name if n_recent is None else f"{tower.name}/{n_recent}"


def exposure(
    tower: UserTower,
    index: VectorIndex,
    histories: Mapping[str, Sequence[HistoryEvent]],
    item_col: Mapping[str, int],
    *,
    k: int = EXPOSURE_K,
    max_users: int = EXPOSURE_USERS,
    seed: int = 0,
) -> Floats:
    """Each item's share of users whose top ``k`` by the first stage holds it (their own items
    excluded): the first stage's hubs (k-occurrence, Radovanovic et al., JMLR 2010). An item the
    tower shows nearly everyone, whoever they are, is rarely what one of them wants next; one
    inner product cannot see that, a ranker given this count can discount it."""
    users = sorted(u for u, h in histories.items() if h)
    if len(users) > max_users:
        picked = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        users = [users[n] for n in sorted(picked)]
    counts = np.zeros(len(item_col), dtype=np.float64)
    shown = 0
    for start in range(0, len(users), EMBED_BATCH):
        chunk = users[start : start + EMBED_BATCH]
        vectors = tower.embed([UserState(history=histories[u]) for u in chunk])
        has = np.any(vectors, axis=1)
        seen = [{e.item_id for e in histories[u]} for u in chunk]
        result = index.search(vectors, k, exclude=seen)
        for n, ids in enumerate(result.ids):
            if has[n]:
                shown += 1
                for i in ids:
                    if i in item_col:
                        counts[item_col[i]] += 1
    out: Floats = (counts / max(shown, 1)).astype(np.float32)
    return out


@dataclass
class Lists:
    """Feature rows of many candidate lists, list after list.

    Attributes:
        x: (rows, features) feature matrix.
        sizes: candidates per list.
        cols: each row's item column.
        labels: 1 for a list's target, else 0 (all zero without targets).
        names: the feature names (columns of ``x``).
        users: each list's user.
        depths: each source's depth: the rank a candidate it did not propose reads (what a
            cold row reads there, :mod:`rerank.ranker.cold`).
    """

    x: Floats
    sizes: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    labels: npt.NDArray[np.float32]
    names: tuple[str, ...]
    users: list[str] = field(default_factory=list)
    depths: Mapping[str, int] = field(default_factory=dict)

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Start row of each list (and the end of the last)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def without_rows(self, drop: npt.NDArray[np.bool_]) -> Lists:
        """The same lists without the rows where ``drop`` is True."""
        keep = ~drop
        list_of = np.repeat(np.arange(len(self.sizes)), self.sizes)
        sizes = np.bincount(list_of[keep], minlength=len(self.sizes)).astype(np.int64)
        return replace(
            self, x=self.x[keep], sizes=sizes, cols=self.cols[keep], labels=self.labels[keep]
        )

    def without_columns(self, names: Sequence[str]) -> Lists:
        """The same rows without the named features."""
        keep = [n for n, name in enumerate(self.names) if name not in set(names)]
        return replace(self, x=self.x[:, keep], names=tuple(self.names[n] for n in keep))

    def column(self, name: str) -> Floats:
        """One feature's values."""
        out: Floats = self.x[:, self.names.index(name)]
        return out

    def extended(self, other: Lists) -> Lists:
        """These lists, then ``other``'s (the same features from the same stage).

        Raises:
            ValueError: the two hold different features.
        """
        if other.names != self.names:
            raise ValueError(
                f"cannot join lists of different features: {list(self.names)} and "
                f"{list(other.names)}"
            )
        return replace(
            self,
            x=np.concatenate([self.x, other.x]),
            sizes=np.concatenate([self.sizes, other.sizes]),
            cols=np.concatenate([self.cols, other.cols]),
            labels=np.concatenate([self.labels, other.labels]),
            users=[*self.users, *other.users],
        )

    def select(self, lists: npt.NDArray[np.int64]) -> Lists:
        """The given lists only, in that order."""
        off = self.offsets
        rows = (
            np.concatenate([np.arange(off[n], off[n + 1]) for n in lists])
            if len(lists)
            else np.zeros(0, np.int64)
        )
        return replace(
            self,
            x=self.x[rows],
            sizes=self.sizes[lists],
            cols=self.cols[rows],
            labels=self.labels[rows],
            users=[self.users[n] for n in lists] if self.users else [],
        )


def _rows_of(tower: UserTower, item_ids: Sequence[str]) -> Floats:
    """The tower's indexed vector of each item (zero for items it has none of): the tower's
    own matrix, not a copy, where it holds exactly these items in this order (a served
    version: the ranking stage and the tower then share one matrix)."""
    vectors = getattr(tower, "item_vectors", None)
    if not isinstance(vectors, ItemVectors):
        raise TypeError(f"{type(tower).__name__} has no bound item_vectors")
    rows = vectors.rows(item_ids)
    if (
        vectors.matrix.dtype == np.float32
        and len(rows) == len(vectors.matrix)
        and np.array_equal(rows, np.arange(len(rows)))
    ):
        return vectors.matrix
    out: Floats = np.where(rows[:, None] >= 0, vectors.matrix[np.maximum(rows, 0)], 0.0).astype(
        np.float32
    )
    return out


class CandidateStage:
    """Candidate sources and feature tables fitted on one log.

    Args:
        item_ids: catalog item ids (the columns of every table).
        tower, index: the first stage (the index holds the tower's item vectors).
        sources: every source, the tower's first.
        features: the feature tables of the same log.
        depths: items each source proposes.
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        tower: UserTower,
        index: VectorIndex,
        sources: Sequence[CandidateSource],
        features: RankingFeatures,
        depths: Mapping[str, int] | None = None,
        histories: Mapping[str, Sequence[HistoryEvent]] | None = None,
    ) -> None:
        self.item_ids = list(item_ids)
        self.tower = tower
        self.index = index
        self.sources = list(sources)
        self.features = features
        self.depths = {s.name: (depths or DEPTHS).get(s.name, 100) for s in self.sources}
        self.learned = _rows_of(tower, self.item_ids)
        self.histories = histories

    def with_tower(self, tower: UserTower, index: VectorIndex) -> CandidateStage:
        """The same tables with another first stage (e.g. another seed's tower): its item
        vectors and, over the same users, its exposure."""
        stage = copy.copy(self)
        stage.sources = [
            TowerSource(tower, index) if s.name == "tower" else s for s in self.sources
        ]
        stage.tower, stage.index = tower, index
        stage.learned = _rows_of(tower, self.item_ids)
        shares = (
            exposure(tower, index, self.histories, self.features.item_col)
            if self.histories is not None
            else None
        )
        stage.features = self.features.with_learned(stage.learned, shares)
        return stage

    @property
    def names(self) -> tuple[str, ...]:
        """The feature columns of this stage's lists."""
        return feature_names([s.name for s in self.sources])

    @classmethod
    def build(
        cls,
        items: Mapping[str, Item],
        histories: Mapping[str, Sequence[HistoryEvent]],
        tower: UserTower,
        index: VectorIndex,
        text_vectors: ItemVectors | None = None,
        *,
        als: ALSParams | None = None,
        depths: Mapping[str, int] | None = None,
        sources: Collection[str] = tuple(DEPTHS),
    ) -> CandidateStage:
        """Fits every source and feature table on ``histories`` (time-ordered events)."""
        tables = StageTables.fit(items, histories, text_vectors, als)
        return cls.from_tables(
            tables, tower, index, depths=depths, sources=sources, histories=histories
        )

    @classmethod
    def from_tables(
        cls,
        tables: StageTables,
        tower: UserTower,
        index: VectorIndex,
        *,
        depths: Mapping[str, int] | None = None,
        sources: Collection[str] = tuple(DEPTHS),
        histories: Mapping[str, Sequence[HistoryEvent]] | None = None,
        shares: Floats | None = None,
    ) -> CandidateStage:
        """The stage over fitted tables (say, the ones an index version carries); the
        exposure feature is ``shares`` (measured by the build), else measured over
        ``histories`` (the tables' log), else zeros."""
        item_ids = tables.item_ids
        built: list[CandidateSource] = [TowerSource(tower, index)]
        if "covisit" in sources:
            built.append(CoVisitationSource(item_ids, tables.covisit))
        if "als" in sources:
            built.append(
                FactorSource(
                    item_ids,
                    tables.als_factors,
                    reg=tables.als.regularization,
                    alpha=tables.als.alpha,
                )
            )
        log = tables.queries()
        if "popular" in sources:
            built.append(LogPopularitySource(item_ids, log))
        features = RankingFeatures(
            item_ids,
            log,
            tables.covisit,
            tables.cooccurrence,
            tables.item_norm,
            tables.text,
            _rows_of(tower, item_ids),
            tables.genres,
        )
        if shares is not None:
            if len(shares) != len(item_ids):
                raise ValueError(f"{len(shares)} exposure values for {len(item_ids)} items")
            features.exposure = np.asarray(shares, np.float32)
        elif histories is not None:
            features.exposure = exposure(tower, index, histories, features.item_col)
        return cls(item_ids, tower, index, built, features, depths, histories)

    def candidates(
        self,
        requests: Sequence[Request],
        excludes: Sequence[Collection[str]],
        vectors: Floats | None = None,
        depths: Mapping[str, int] | None = None,
    ) -> tuple[list[CandidateSet], list[Floats]]:
        """Each request's merged candidates and the tower's score for every one of them.

        ``vectors``: the requests' user vectors when the caller has them (the tower runs once);
        ``depths``: per-call depths of some sources (default: the stage's).
        """
        histories = [r.history for r in requests]
        ats: list[int | None] = [r.at for r in requests]
        depth = {**self.depths, **(depths or {})}
        if vectors is None:
            vectors = self.tower.embed([UserState(history=h) for h in histories])
        proposals: dict[str, list[Proposal]] = {}
        for source in self.sources:
            if isinstance(source, TowerSource):  # the vectors above, searched once
                result = self.index.search(vectors, depth[source.name], exclude=list(excludes))
                found = []
                for n, ids in enumerate(result.ids):
                    keep = [j for j, i in enumerate(ids) if i in self.features.item_col]
                    found.append(  # items the tables know (a newer index may hold more)
                        Proposal([ids[j] for j in keep], result.scores[n, keep].astype(np.float32))
                        if np.any(vectors[n])
                        else Proposal([], np.zeros(0, np.float32))
                    )
                proposals[source.name] = found
            else:
                proposals[source.name] = source.propose_many(
                    histories, ats, depth[source.name], excludes
                )
        sets, scores = [], []
        for n in range(len(requests)):
            cands = merge({k: v[n] for k, v in proposals.items()}, depth)
            cols = np.array([self.features.item_col[i] for i in cands.ids], dtype=np.int64)
            sets.append(cands)
            scores.append((self.learned[cols] @ vectors[n]).astype(np.float32))
        return sets, scores

    def item_rows(
        self,
        requests: Sequence[Request],
        item_ids: Sequence[str],
        vectors: Floats | None = None,
    ) -> Floats:
        """One feature row per request for a given item (say, the event whose like the P(like)
        head learns): the item as a candidate no source proposed."""
        if vectors is None:
            vectors = self.tower.embed([UserState(history=r.history) for r in requests])
        names = [s.name for s in self.sources]
        sets, scores = [], []
        for n, item in enumerate(item_ids):
            col = self.features.item_col[item]
            sets.append(
                CandidateSet(
                    [item],
                    names,
                    np.zeros((1, len(names)), np.float32),
                    np.array([[self.depths[s] for s in names]], dtype=np.int64),
                    np.zeros((1, len(names)), dtype=bool),
                )
            )
            scores.append(np.array([self.learned[col] @ vectors[n]], dtype=np.float32))
        x, _ = self.features.compute(requests, sets, scores)
        return x

    def lists(
        self,
        requests: Sequence[Request],
        excludes: Sequence[Collection[str]],
        targets: Sequence[str | None] | None = None,
        batch: int = 512,
        progress: Callable[[str], None] | None = None,
        *,
        vectors: Floats | None = None,
        depths: Mapping[str, int] | None = None,
    ) -> Lists:
        """Every request's candidates as feature rows (labels from ``targets`` when given;
        ``vectors`` and ``depths`` as for :meth:`candidates`)."""
        xs, sizes, cols, labels = [], [], [], []
        for start in range(0, len(requests), batch):
            part = requests[start : start + batch]
            sets, scores = self.candidates(
                part,
                excludes[start : start + batch],
                None if vectors is None else vectors[start : start + batch],
                depths,
            )
            x, c = self.features.compute(part, sets, scores)
            xs.append(x)
            cols.append(c)
            sizes += [len(s.ids) for s in sets]
            for n, s in enumerate(sets):
                target = targets[start + n] if targets is not None else None
                labels.append(np.array([i == target for i in s.ids], dtype=np.float32))
            if progress is not None:
                progress(f"lists: {min(start + batch, len(requests))}/{len(requests)}")
        width = len(self.names)
        return Lists(
            np.concatenate(xs) if xs else np.zeros((0, width), np.float32),
            np.array(sizes, dtype=np.int64),
            np.concatenate(cols) if cols else np.zeros(0, np.int64),
            np.concatenate(labels) if labels else np.zeros(0, np.float32),
            self.names,
            [r.user_id for r in requests],
            {**self.depths, **(depths or {})},
        )
