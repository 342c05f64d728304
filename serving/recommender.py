"""The Recommender: the first stage's candidates from the published index, ordered by the
second stage that serves (the ranking stage where its card chose it, else a cross-encoder, else
the first stage's own order).

Opens the CURRENT index version, the catalog, the ranking stage or cross-encoder and (for a
text user tower) the encoder with its Redis cache once; every call then embeds the user,
gathers candidates, orders them and returns them with per-stage timings, the index version,
which part served the list and why.

The user tower comes with the index version: the trained sequential tower published inside it
(``index build --tower``); else, with ``user_encoder``, the user's profile and history text
through the text model and its cache (the fine-tuned text two-tower); else the mean of recent
liked item vectors read from the index. Only the text tower touches Redis, and a Redis outage
there costs a cache miss, never a failed call.

With an online user store (:class:`online.UserStore`), a ``user_id`` call reads that user's
profile and newest events from Redis, live events included, so an event ingested by any
worker (:meth:`Recommender.ingest`) shapes the user's next call; a Redis outage there falls
back to the dataset's history of the user, or, for a catalog loaded without its log (what
``serve --user-store`` loads: nothing per user in the process), to the most popular items.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from catalog.errors import printable
from catalog.history import HistoryView, group_histories
from catalog.model import Catalog, User
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate
from indexer.store import IndexRoot, VerifyError
from retrieval.towers import UserState
from retrieval.vectors import ItemVectors, Matrix
from serving.explain import (
    Explanation,
    because,
    constant_columns,
    feature_effects,
    movement,
    reasons,
)
from serving.logstats import LogStats
from serving.versions import Loaded, VersionLoader

if TYPE_CHECKING:  # the collaborators' types; each loads only when a Recommender uses it
    from online import Ingested, LiveEvent, UserStore
    from online.tail import EventTail
    from rerank.cross_encoder import Reranker
    from rerank.ranker import GBDTRanker
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.live import LiveEvents
    from retrieval.encoder import Encoder
    from retrieval.sources import CandidateSet

log = logging.getLogger(__name__)


def live_mark(loaded: Loaded, catalog: Catalog) -> tuple[str, frozenset[str]]:
    """Which entries of the live events stream a version's stage tables hold: those up to the
    fold mark of the dataset they were fitted on, and that fold's late ones (the catalog's
    own mark for tables fitted at load)."""
    stage = loaded.manifest.get("stage") or {}
    source = stage if stage else catalog.source
    return str(source.get("live_mark") or "0-0"), frozenset(source.get("live_late") or ())


def _ranker_serves(ranker: GBDTRanker) -> bool:
    """Whether a ranker's card chose it over the first stage's order on validation."""
    if not ranker.choice.serves:
        log.warning(
            "the ranker did not beat the tower's order on validation (its card says %s "
            "serves): serving the first stage's order",
            ranker.choice.served,
        )
    return ranker.choice.serves


def _served_because(ranker: GBDTRanker | None) -> tuple[str, str]:
    """Why the ranking stage serves, and why the first stage does when it does: from the
    ranker's card (its choice on validation), in words."""
    if ranker is None:
        return "", "no ranking stage or cross-encoder is loaded"
    figures = ranker.choice.figures()
    why_ranker = f"it beat the first stage's order on validation ({figures})"
    if not ranker.choice.serves:
        why_first = f"the ranking stage did not beat the first stage on validation ({figures})"
        return why_ranker, why_first
    return why_ranker, "the first stage's order"


@dataclass(frozen=True)
class _Live:
    """The live events one version serves with, as of one read of the events stream."""

    key: tuple[str, int]  # the version and the tail's generation
    epoch: int  # the tail's epoch they were read in
    upto: int  # the tail's entries taken
    events: LiveEvents
    stage: CandidateStage
    end: int


@dataclass(frozen=True)
class RecommendedItem:
    """One recommendation and its scores, in the project's one vocabulary.

    ``ranking_score`` is what sorts the list (the ranking stage's score in its own units, or
    the first stage's score, or the cross-encoder's P(like): whichever served, see
    ``Recommendation.served_by``); ``first_stage_score`` is the first stage's (the tower's
    inner product); ``p_like`` the probability that the user likes it. With ``explain``, why
    it is there."""

    item_id: str
    title: str
    ranking_score: float | None
    first_stage_score: float | None
    p_like: float | None
    genres: tuple[str, ...] = ()
    explanation: Explanation | None = None


SERVED_BY = ("ranking stage", "first stage", "cross-encoder", "popularity")
"""Which part ordered a list (``Recommendation.served_by``)."""


@dataclass
class Recommendation:
    """A response: items best first, which part ordered them and why, timings per stage
    (ms), the index version, the fallback taken and what was ignored."""

    items: list[RecommendedItem]
    index_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    served_by: str = "first stage"
    """One of :data:`SERVED_BY`."""
    served_because: str = ""
    """Why that part (the ranking stage's validation figures from its card, a fallback...)."""
    fallback: str | None = None  # "popularity" (cold user), "rank_failed" or "rerank_failed"
    warnings: list[str] = field(default_factory=list)
    """What the call ignored (history items or allowed items the catalog does not hold)."""


@dataclass(frozen=True)
class RecommendRequest:
    """One recommend call, as the HTTP route, the CLI and the Python API pose it: who (an id,
    and or a history and profile sent with the call), how many, and what may be shown.

    Raises:
        ValueError: ``k`` or ``candidates`` below 1, or ``k`` above ``candidates``.
    """

    user_id: str | None = None
    history: Sequence[HistoryEvent] | None = None
    profile: Mapping[str, str] | None = None
    k: int = 10
    candidates: int = 100
    exclude_seen: bool = True
    allow: Collection[str] | None = None
    explain: bool = False
    second_stage: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or self.candidates < 1:
            raise ValueError(
                f"k and candidates must be >= 1, got k={self.k}, candidates={self.candidates}"
            )
        if self.k > self.candidates:
            raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")


class Recommender:
    """Two-stage recommendations over a published index.

    Args:
        index_root: the index root (``duorank index build --root``).
        catalog: the dataset (items for texts and titles, interactions for histories); with
            ``users``, the items alone (``load_catalog(items_only=True)``): the log's per-item
            totals and the exposure then come from each index version's stage tables.
        reranker: a :class:`rerank.Reranker`, or None for retrieval order only.
        n_recent: liked items pooled by the zero-shot user tower (index versions built
            without a trained tower).
        user_encoder: embed users from their text with this encoder (and its cache) for index
            versions built without a trained tower; it must be the model the index was built
            with (checked by fingerprint).
        user_template: the user text for ``user_encoder`` (default: the encoder's own budget).
        fallback: when the version CURRENT names fails verification, serve the newest
            version that verifies instead of raising, and say so in :attr:`degraded` (the
            server's default: a damaged publish must not take the service down).
        ranker: a :class:`rerank.ranker.model.GBDTRanker` (``train ranker``): candidates from every
            source, ordered by the ranker. It serves only where its card chose it on
            validation. P(like) of the ``k`` items returned comes from its own head (no text
            forward pass), or without one from the ``reranker``.
        text_vectors: the catalog's text vectors (or a function that computes them), for a
            ranker that reads text cosines and an index version that carries no stage tables.
        version: serve this published version instead of CURRENT, and never reload (a batch
            job whose workers must all serve the version its driver read).
        users: the online user store: ``user_id`` calls read the user's state there, and
            :meth:`ingest` takes live events.

    Raises:
        indexer.NoVersionError: nothing published yet (or, with ``fallback``, nothing
            verifies).
        indexer.VerifyError: the CURRENT version is damaged (without ``fallback``).
    """

    def __init__(
        self,
        index_root: str | Path,
        catalog: Catalog,
        reranker: Reranker | None = None,
        *,
        n_recent: int = 5,
        user_encoder: Encoder | None = None,
        user_template: UserTextTemplate | None = None,
        fallback: bool = False,
        ranker: GBDTRanker | None = None,
        text_vectors: ItemVectors | Callable[[], ItemVectors] | None = None,
        version: str | None = None,
        users: UserStore | None = None,
    ) -> None:
        self.user_encoder = user_encoder
        self.users = users
        self.store_errors = 0
        """Reads the user store could not answer: a ``user_id`` call's (served from the
        dataset's history) or the events stream's (served without its newest entries)."""
        self.pinned = version
        self.root = IndexRoot(Path(index_root))
        self.catalog = catalog
        self.reranker = reranker
        self.ranker = ranker if ranker is not None and _ranker_serves(ranker) else None
        if self.ranker is not None:
            self.ranker.compile()  # at load: no call pays numba's start-up
        self._why_ranker, self._why_first = _served_because(ranker)
        # With a user store the dataset's histories are only the fallback, built per user
        # from the columns, no object per event held; without one every call reads them, so
        # they are built once. A catalog loaded without its log (items only) holds none: its
        # users are the store's alone, and the log's totals come with each index version.
        self.holds_log = len(catalog.interactions) > 0 or users is None
        self.histories: Mapping[str, list[HistoryEvent]] = (
            HistoryView(catalog.interactions)
            if users is not None
            else group_histories(catalog.interactions)
        )
        self.item_template = ItemTextTemplate()
        stats = LogStats.of(catalog.interactions, list(catalog.items)) if self.holds_log else None
        self.user_template = (
            UserTextTemplate.from_dict(reranker.config.user_template)
            if reranker is not None and reranker.config.user_template
            else UserTextTemplate()
        )
        self._lock = threading.Lock()
        self.versions = VersionLoader(
            self.root,
            catalog,
            self.histories,
            stats,
            reranker,
            self.ranker,
            user_encoder,
            user_template,
            n_recent,
            text_vectors,
        )
        opened = self.versions.open(version, fallback)
        self._loaded = opened.loaded
        self.degraded: str | None = opened.degraded
        """Why an older version serves (CURRENT failed verification), else None."""
        self._refused: tuple[object, ...] | None = opened.refused
        # the live events of every user, for what reads items (windowed counts, popularity)
        self.tail: EventTail | None = None
        self._live: _Live | None = None
        self._live_lock = threading.Lock()  # one call at a time takes the stream's new entries
        if users is not None and self.ranker is not None:
            from online.tail import EventTail

            self.tail = EventTail(users, live_mark(self._loaded, catalog)[0])

    def cache_stats(self) -> dict[str, int | float] | None:
        """The user encoder's embedding-cache counters (None without a cached text tower)."""
        cache = getattr(self.user_encoder, "cache", None)
        return cache.stats.as_dict() if cache is not None else None

    @property
    def index_version(self) -> str:
        """The version serving new calls."""
        return self._loaded.version

    def reload(self) -> bool:
        """Loads and verifies the version CURRENT names, then swaps it in atomically.

        Calls in flight finish on the old version (they hold a reference to it). A version that
        fails verification is refused and the old one keeps serving; the same refused version
        is not verified again until its files or CURRENT change.

        Returns:
            True when a new version was swapped in (never for a pinned version).

        Raises:
            indexer.VerifyError: CURRENT names a damaged version (raised once per change).
        """
        if self.pinned is not None:
            return False
        try:
            version = self.root.current()
        except VerifyError as exc:  # a link or a folder: refused once, as a damaged version
            if self._refused == ("CURRENT", str(exc)):
                return False
            self._refused = ("CURRENT", str(exc))
            raise
        if version is None:
            return False
        if version == self._loaded.version:
            if self.degraded:  # CURRENT points at what we serve again (say, a rollback)
                log.warning("CURRENT names %s again: no longer degraded", version)
                self.degraded = None
            return False
        signature = self.versions.signature(version)
        if signature == self._refused:
            return False
        try:
            loaded = self.versions.load(version)  # VerifyError (or NoVersionError) if damaged
        except Exception:
            self._refused = signature
            raise
        with self._lock:
            self._loaded = loaded
            self._refused = None
            self.degraded = None
        log.info("now serving index version %s", version)
        return True

    # ------------------------------------------------------------------ calls
    def user_state(
        self,
        user_id: str | None,
        history: Sequence[HistoryEvent] | None,
        profile: Mapping[str, str] | None,
    ) -> UserState:
        """The user from the request's history/profile, else from the online user store,
        else from the dataset.

        Raises:
            KeyError: an unknown user id without a history in the request.
        """
        if history is not None:
            return UserState(user_id, dict(profile or {}), list(history))
        if user_id is None:
            return UserState(None, dict(profile or {}), [])
        stored, failed = self._stored(user_id)
        if stored is not None:
            return UserState(user_id, dict(profile or stored.profile), stored.history)
        if failed and not self.holds_log:  # the store is the only record of its users
            return UserState(user_id, dict(profile or {}), [])  # the most popular items
        if user_id not in self.catalog.users and user_id not in self.histories:
            raise KeyError(f"unknown user id {user_id!r} (send a history for new users)")
        attributes = self.catalog.users.get(user_id, User(user_id)).attributes
        return UserState(user_id, dict(profile or attributes), self.histories.get(user_id, []))

    def _stored(self, user_id: str) -> tuple[UserState | None, bool]:
        """The user as the online store holds them (None without a store, or for a user it
        has never seen), and whether it failed to answer (logged and counted: the dataset's
        history serves, or without the dataset's log the most popular items)."""
        if self.users is None:
            return None, False
        import redis

        from online import CorruptStateError

        try:
            record = self.users.record(user_id)
        except (redis.RedisError, CorruptStateError, OSError) as exc:
            self.store_errors += 1
            instead = "the dataset's history" if self.holds_log else "the most popular items"
            log.warning("user store: %s; serving %s to %r", exc, instead, user_id)
            return None, True
        if record is None:
            return None, False
        return UserState(user_id, dict(record.attributes), list(record.history)), False

    def ingest(self, events: Sequence[LiveEvent]) -> Ingested:
        """Takes live events into the user store; each user's next call reads them.

        Raises:
            RuntimeError: this Recommender has no user store.
            ValueError: an event names an item the catalog does not hold (``events[3]``).
            redis.RedisError: the store does not answer (nothing of the batch is lost that
                was not accepted: a retry with the same event ids is safe).
        """
        if self.users is None:
            raise RuntimeError(
                "live events need the online user store (duorank serve --users redis)"
            )
        for n, e in enumerate(events):
            if e.event.item_id not in self.catalog.items:
                raise ValueError(
                    f"events[{n}].item_id {printable(e.event.item_id)!r} is not in the catalog"
                )
        done = self.users.ingest(events)
        if self.tail is not None and done.accepted:  # this worker's next call counts them
            self._poll_tail(force=True)
        return done

    def _poll_tail(self, force: bool = False) -> None:
        """Reads the events stream's new entries (a store that cannot answer is logged and
        counted: the calls go on with what was read)."""
        import redis

        assert self.tail is not None
        try:
            self.tail.poll(force)
        except (redis.RedisError, OSError) as exc:
            self.store_errors += 1
            log.warning("user store: %s; item counts without the newest live events", exc)

    def live_stage(self, loaded: Loaded) -> tuple[CandidateStage, int]:
        """The version's ranking stage counting the live events its tables lack (every user's
        events in the store's stream after the mark of the fold the tables were built on),
        and the clock those events and the dataset set: the newest event time known."""
        assert loaded.stage is not None
        # the tables' own log may end after the catalog's (an older dataset folder beside a
        # newer build): the clock never goes back before what the tables counted
        fitted_end = max(loaded.stats.end, loaded.stage.features.log.end - 1)
        if self.tail is None:
            return loaded.stage, fitted_end
        mark, late = live_mark(loaded, self.catalog)
        if mark != self.tail.start:
            self.tail.move_start(mark)
        self._poll_tail()
        cached = self._live
        if cached is not None and cached.key == (loaded.version, self.tail.generation):
            return cached.stage, cached.end
        with self._live_lock:
            return self._take_live(loaded, fitted_end, mark, late)

    def _take_live(
        self, loaded: Loaded, fitted_end: int, mark: str, late: Collection[str]
    ) -> tuple[CandidateStage, int]:
        """:meth:`live_stage`'s update: the stream's entries not yet taken, added to the live
        events (under the lock: each entry taken once, then released by the tail)."""
        from rerank.ranker import live
        from rerank.ranker.live import LiveEvents, with_live

        assert self.tail is not None and loaded.stage is not None
        cached = self._live
        # within one version and one epoch of the tail, take only the entries not yet taken
        base = (
            cached
            if cached is not None
            and cached.key[0] == loaded.version
            and cached.epoch == self.tail.epoch
            else None
        )
        if base is None and self.tail.released:  # another version took them: read again
            self.tail.restart(mark)
            self._poll_tail(force=True)
        key = (loaded.version, self.tail.generation)
        if cached is not None and cached.key == key:
            return cached.stage, cached.end
        epoch = self.tail.epoch
        items, times, ratings, upto = self.tail.after(mark, late, base.upto if base else 0)
        col = loaded.stage.features.item_col
        keep = np.array([n for n, i in enumerate(items) if i in col], dtype=np.int64)
        cols = np.array([col[items[n]] for n in keep], dtype=np.int64)
        events = (
            base.events
            if base
            else LiveEvents(len(loaded.stage.item_ids), fold_every=live.FOLD_EVERY)
        )
        events = events.add(cols, times[keep], ratings[keep])
        stage = with_live(loaded.stage, events)
        end = max(fitted_end, self.tail.newest if self.tail.newest is not None else 0)
        self._live = _Live(key, epoch, upto, events, stage, end)
        self.tail.release(upto)  # held as counts now: the worker keeps no entry it took
        return stage, end

    def recommend(
        self,
        user_id: str | None = None,
        *,
        history: Sequence[HistoryEvent] | None = None,
        profile: Mapping[str, str] | None = None,
        k: int = 10,
        candidates: int = 100,
        exclude_seen: bool = True,
        allow: Collection[str] | None = None,
        explain: bool = False,
        second_stage: bool = True,
    ) -> Recommendation:
        """Top-``k`` items for a user: retrieve ``candidates``, rerank, cut to ``k``; with
        ``explain``, each item says why (:mod:`serving.explain`); without ``second_stage``,
        the first stage's order (no ranking stage or reranker: what they change). The keyword
        form of :meth:`answer`.

        Raises:
            KeyError: an unknown user id without a history.
            ValueError: ``k`` or ``candidates`` below 1, or ``k`` above ``candidates``.
        """
        return self.answer(
            RecommendRequest(
                user_id,
                history,
                profile,
                k,
                candidates,
                exclude_seen,
                allow,
                explain,
                second_stage,
            )
        )

    def answer(self, request: RecommendRequest) -> Recommendation:
        """The list for one :class:`RecommendRequest`, with what it named that the catalog
        does not hold in ``warnings``.

        Raises:
            KeyError: an unknown user id without a history.
        """
        result = self._recommend(request)
        result.warnings = self.ignored(request.history, request.allow)
        return result

    def ignored(
        self, history: Sequence[HistoryEvent] | None, allow: Collection[str] | None
    ) -> list[str]:
        """What a request names that the catalog does not hold (ignored by the call), each
        with where it was (``history[3].item_id``), at most 20."""
        items = self.catalog.items
        out = [
            f"history[{n}].item_id {printable(e.item_id)!r} is not in the catalog: ignored"
            for n, e in enumerate(history or ())
            if e.item_id not in items
        ]
        unknown = sum(1 for i in allow or () if i not in items)
        if unknown:
            out.append(f"allow: {unknown} item id(s) not in the catalog: ignored")
        return out[:20]

    def _recommend(self, request: RecommendRequest) -> Recommendation:
        k, candidates, allow = request.k, request.candidates, request.allow
        explain, second_stage = request.explain, request.second_stage
        loaded = self._loaded  # one version for the whole call
        timings: dict[str, float] = {}
        start = time.perf_counter()
        state = self.user_state(request.user_id, request.history, request.profile)
        vector = loaded.tower.embed([state])[0]
        timings["embed"] = (time.perf_counter() - start) * 1000
        seen = {e.item_id for e in state.history} if request.exclude_seen else set()
        if not np.any(vector):
            return self._popular(loaded, seen, k, allow, explain, timings)
        failed = None
        if loaded.stage is not None and second_stage:
            try:
                return self._ranked(
                    loaded, state, vector, seen, k, candidates, allow, timings, explain
                )
            except Exception:  # a broken ranking stage degrades to the tower's order
                log.exception("ranking stage failed; serving the first stage's order")
                failed = "rank_failed"
        start = time.perf_counter()
        result = loaded.index.search(vector[None, :], candidates, exclude=[seen], allow=allow)
        cand_ids = result.ids[0]
        cand_scores = result.scores[0][: len(cand_ids)]
        timings["retrieve"] = (time.perf_counter() - start) * 1000
        if self.reranker is None or not cand_ids or failed or not second_stage:
            top = list(range(min(k, len(cand_ids))))
            whys = self._tower_explanations(loaded, state, cand_ids, top, explain, timings)
            because = (
                "the ranking stage failed on this call (logged): the first stage's order"
                if failed
                else "second_stage is false in the request"
                if not second_stage
                else self._why_first
            )
            return Recommendation(
                [
                    self._item(cand_ids[n], float(cand_scores[n]), None, explanation=whys[j])
                    for j, n in enumerate(top)
                ],
                loaded.version,
                timings,
                served_by="first stage",
                served_because=because,
                fallback=failed,
            )
        return self._cross_encoded(
            loaded, state, vector, cand_ids, cand_scores, k, explain, timings
        )

    def _popular(
        self,
        loaded: Loaded,
        seen: set[str],
        k: int,
        allow: Collection[str] | None,
        explain: bool,
        timings: dict[str, float],
    ) -> Recommendation:
        """The most popular items: for a user the first stage cannot read (no known item)."""
        barred = {i for i in self.catalog.items if allow is not None and i not in allow}
        ids = loaded.stats.popularity.top(k, exclude=seen | barred)
        why = Explanation(["popularity"], None) if explain else None
        return Recommendation(
            [self._item(i, None, None, explanation=why) for i in ids],
            loaded.version,
            timings,
            served_by="popularity",
            served_because="no history item the first stage can read: the most popular items",
            fallback="popularity",
        )

    def _cross_encoded(
        self,
        loaded: Loaded,
        state: UserState,
        vector: Matrix,
        cand_ids: Sequence[str],
        cand_scores: Matrix,
        k: int,
        explain: bool,
        timings: dict[str, float],
    ) -> Recommendation:
        """The first stage's candidates ordered by the cross-encoder's P(like); its failure
        serves the first stage's order."""
        start = time.perf_counter()
        try:
            probs = self._text_p_like(loaded, state, vector, cand_ids)
        except Exception:  # a broken reranker degrades to retrieval order, never a 500
            log.exception("reranker failed; serving retrieval order")
            return Recommendation(
                [
                    self._item(i, float(s), None)
                    for i, s in zip(cand_ids[:k], cand_scores[:k], strict=True)
                ],
                loaded.version,
                timings,
                served_by="first stage",
                served_because="the cross-encoder failed on this call (logged): the first "
                "stage's order",
                fallback="rerank_failed",
            )
        timings["rerank"] = (time.perf_counter() - start) * 1000
        order = [int(o) for o in np.argsort(-probs, kind="stable")[:k]]
        whys = self._tower_explanations(loaded, state, cand_ids, order, explain, timings, True)
        items = [
            self._item(
                cand_ids[i],
                float(cand_scores[i]),
                float(probs[i]),
                float(probs[i]),
                explanation=whys[j],
            )
            for j, i in enumerate(order)
        ]
        return Recommendation(
            items,
            loaded.version,
            timings,
            served_by="cross-encoder",
            served_because=f"no ranking stage serves; the cross-encoder's P(like) orders the "
            f"first stage's top {len(cand_ids)}",
        )

    def _tower_explanations(
        self,
        loaded: Loaded,
        state: UserState,
        cand_ids: Sequence[str],
        order: Sequence[int],
        explain: bool,
        timings: dict[str, float],
        moved: bool = False,
    ) -> list[Explanation | None]:
        """Explanations of the tower's candidates at ``order`` (retrieval positions); with
        ``moved``, how far a second stage (the cross-encoder) moved each."""
        if not explain:
            return [None] * len(order)
        start = time.perf_counter()
        near = because(
            loaded.index, [cand_ids[o] for o in order], state.history, self.catalog.items
        )
        timings["explain"] = (time.perf_counter() - start) * 1000
        return [
            Explanation(["tower"], o + 1, b, movement=movement(o + 1, n + 1) if moved else None)
            for n, (o, b) in enumerate(zip(order, near, strict=True))
        ]

    def request_time(self, history: Sequence[HistoryEvent], end: int | None = None) -> int:
        """A request's time for the ranking stage's windows: just after the later of the log's
        last event and the user's (a dataset snapshot's clock, not the wall clock, so that the
        windows hold what the ranker learned from). With a user store the log's end is the
        newest event it knows, live ones included; ``end``: that clock as a call's view of
        the live events set it (:meth:`live_stage`)."""
        if end is None:
            loaded = self._loaded
            end = self.live_stage(loaded)[1] if loaded.stage is not None else loaded.stats.end
        last = max((e.timestamp for e in history), default=end)
        return max(end, last) + 1

    def _ranked(
        self,
        loaded: Loaded,
        state: UserState,
        vector: Matrix,
        seen: set[str],
        k: int,
        candidates: int,
        allow: Collection[str] | None,
        timings: dict[str, float],
        explain: bool = False,
    ) -> Recommendation:
        """Every source's candidates ordered by the ranker; P(like) of the top ``k`` only, from
        the ranker's own head when it has one, else from the cross-encoder."""
        from rerank.ranker.features import Request

        assert self.ranker is not None and loaded.stage is not None
        start = time.perf_counter()
        stage, end = self.live_stage(loaded)
        request = Request(state.user_id or "", state.history, self.request_time(state.history, end))
        sets, first = stage.candidates(
            [request], [seen], vector[None, :], depths={"tower": candidates}
        )
        timings["candidates"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        x, rows = stage.features.compute([request], sets, first)
        x = x[:, loaded.ranker_cols]  # the ranker's columns, in its order
        timings["features"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        scores = self.ranker.score(x)
        ids = [stage.item_ids[c] for c in rows]
        if allow is not None:
            scores = np.where([i in allow for i in ids], scores, -np.inf)
        order = [int(o) for o in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[o])]
        retrieval = x[:, self.ranker.names.index("retrieval_score")]
        timings["rank"] = (time.perf_counter() - start) * 1000
        probs: list[float | None] = [None] * len(order)
        like = self.ranker.like
        if like is not None and order:  # the stage's own P(like) head: no text forward pass
            start = time.perf_counter()
            probs = self._head_p_like(x[order], self.ranker.names)
            timings["p_like"] = (time.perf_counter() - start) * 1000
        elif self.reranker is not None and order:
            start = time.perf_counter()
            try:
                probs = self._text_p_like(loaded, state, vector, [ids[o] for o in order]).tolist()
            except Exception:  # P(like) is extra: a failure keeps the ranked order
                log.exception("reranker failed; serving the ranking without P(like)")
            timings["p_like"] = (time.perf_counter() - start) * 1000
        whys: list[Explanation | None] = [None] * len(order)
        if explain and order:
            start = time.perf_counter()
            whys = self._stage_explanations(loaded, state, sets[0], x, ids, order)
            timings["explain"] = (time.perf_counter() - start) * 1000
        items = [
            self._item(ids[o], float(retrieval[o]), probs[n], float(scores[o]), explanation=whys[n])
            for n, o in enumerate(order)
        ]
        return Recommendation(
            items,
            loaded.version,
            timings,
            served_by="ranking stage",
            served_because=self._why_ranker,
        )

    def _stage_explanations(
        self,
        loaded: Loaded,
        state: UserState,
        cands: CandidateSet,
        x: Matrix,
        ids: Sequence[str],
        order: Sequence[int],
    ) -> list[Explanation | None]:
        """The sources, first-stage rank, nearest history items and the features that moved
        each of the ranking stage's items at ``order`` (rows of ``x``)."""
        from rerank.ranker.features import group_of

        assert self.ranker is not None
        names = self.ranker.names
        retrieval = x[:, names.index("retrieval_score")]
        first_rank = np.empty(len(retrieval), dtype=np.int64)
        first_rank[np.argsort(-retrieval, kind="stable")] = np.arange(1, len(retrieval) + 1)
        effects = self.ranker.contributions(x[list(order)])
        near = because(loaded.index, [ids[o] for o in order], state.history, self.catalog.items)
        constant = constant_columns(x)  # the user's own figures: they tell no item apart
        sources = list(cands.sources)
        return [
            Explanation(
                [s for j, s in enumerate(cands.sources) if cands.present[o, j]],
                int(first_rank[o]),
                near[n],
                feature_effects(effects[n], x[o], names),
                reasons(effects[n], x[o], names, constant, lambda f: group_of(f, sources)),
                movement(int(first_rank[o]), n + 1),
            )
            for n, o in enumerate(order)
        ]

    def score(
        self,
        user_id: str | None,
        item_ids: Sequence[str],
        *,
        history: Sequence[HistoryEvent] | None = None,
        profile: Mapping[str, str] | None = None,
    ) -> list[RecommendedItem]:
        """Point-wise scores for given items: the retrieval score and P(like) (the ranking
        stage's head when it serves, else the cross-encoder's).

        Raises:
            KeyError: an unknown user id, or an item id not in the serving index.
        """
        loaded = self._loaded
        for item_id in item_ids:
            if not loaded.index.has(item_id):
                raise KeyError(f"unknown item id {item_id!r}")
        state = self.user_state(user_id, history, profile)
        vector = loaded.tower.embed([state])[0]
        retrieval = loaded.features.retrieval_scores(vector, item_ids)
        probs: list[float | None] = [None] * len(item_ids)
        like = self.ranker.like if self.ranker is not None else None
        if like is not None and loaded.stage is not None and item_ids:
            from rerank.ranker.features import Request

            stage, end = self.live_stage(loaded)
            known = [i for i in item_ids if i in stage.features.item_col]
            at = self.request_time(state.history, end)
            request = Request(state.user_id or "", state.history, at)
            rows = stage.item_rows([request] * len(known), known, np.tile(vector, (len(known), 1)))
            p_of = dict(zip(known, self._head_p_like(rows, stage.names), strict=True))
            probs = [p_of.get(i) for i in item_ids]
        elif self.reranker is not None and item_ids:
            probs = self._text_p_like(loaded, state, vector, item_ids).tolist()
        return [self._item(i, float(retrieval[n]), probs[n]) for n, i in enumerate(item_ids)]

    def _head_p_like(self, rows: Matrix, names: Sequence[str]) -> list[float | None]:
        """P(like) from the ranking stage's own head, for feature rows laid out as ``names``."""
        assert self.ranker is not None and self.ranker.like is not None
        like = self.ranker.like
        cols = [list(names).index(n) for n in like.names]
        return [float(p) for p in like.probability(rows[:, cols])]

    def _text_p_like(
        self, loaded: Loaded, state: UserState, vector: Matrix, item_ids: Sequence[str]
    ) -> npt.NDArray[np.floating]:
        """P(like) from the cross-encoder: the user's text and each item's, with its scalar
        features (one text forward pass per call)."""
        assert self.reranker is not None
        text = self.user_template.render(
            User(state.user_id or "", state.profile), state.history, self.catalog.items
        )
        feats = loaded.features.features(vector, item_ids, state.history)
        # rendered per call, for the few items scored: not held for the whole catalog
        items = self.catalog.items
        texts = [self.item_template.render(items[i]) for i in item_ids]
        return np.asarray(self.reranker.score(text, texts, feats))

    def _item(
        self,
        item_id: str,
        first_stage: float | None,
        p_like: float | None,
        ranking: float | None = None,
        *,
        explanation: Explanation | None = None,
    ) -> RecommendedItem:
        """One item; its ranking score is ``ranking``, else the first stage's (what sorted
        the list when no second stage did)."""
        item = self.catalog.items.get(item_id)
        return RecommendedItem(
            item_id,
            item.title if item else item_id,
            ranking if ranking is not None else first_stage,
            first_stage,
            p_like,
            tuple(item.genres) if item else (),
            explanation,
        )
