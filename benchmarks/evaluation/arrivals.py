"""The new-arrivals protocol: where text must carry the recommendation.

The leave-one-out protocol measures warm items, where co-occurrence decides. Here a global time
cut-off (the :data:`QUANTILE` of the log's event times) splits the log. Every model is fitted
on the events before it, with the items' text as it was at the cut-off (tags written later are
left out); items whose first event comes after it are **new**: their text is all a model knows
of them. Two sets of test events:

- **Returning users**: every event after the cut-off of a user with events before it. The
  request holds the user's events before the event (those after the cut-off too: a served call
  sends the history it has); the items on offer are those released (first event) by then.
- **Cold users**: users whose first event comes after the cut-off, at their second to fourth
  event (1 to 3 events before the target).

An event on an item the user already had (a repeat) is left out of both: it is no arrival.

Measured per method, with 95% intervals from a bootstrap over users (events of one user are not
independent) and, paired, against the served pipeline:

(a) NDCG@10, Recall@10 and Recall@50 of events on new items, ranking every released item;
(b) the new-arrivals shelf: NDCG@10 of events on new items, ranking only the new items released
    by then ("new this week for you");
(c) the target's score as a like/dislike classifier on new items (AUC; P(like) where the method
    has a head);
(d) NDCG@10 of the cold users' events, ranking every released item.

Ties count against the target (its rank is one past every item scored at least as high). The
ranking stage proposes candidates, so for (a) and (d) an item it did not propose ranks below
all it did; for (b) it scores every shelf item (those no source proposed as unproposed
candidates), which is what serving with the shelf as ``allow`` computes where the sources do
not fill it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.history import group_histories
from catalog.model import Catalog, Item
from catalog.text import HistoryEvent, is_positive
from catalog.thresholds import LIKE_THRESHOLD
from metrics import auc
from retrieval.towers import MeanItemsTower, UserState, UserTower
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker
    from rerank.cross_encoder.training_args import RerankerTrainArgs
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import RankingStageArgs, TrainedStage
    from retrieval.index import VectorIndex
    from retrieval.sequential import SequentialConfig, SequentialTower
    from retrieval.sources import CandidateSet

QUANTILE = 0.9
"""The cut-off: this quantile of the log's event times (the last 10% of the log is after it)."""
COLD_HISTORY = (1, 3)
"""Events a cold user has before a target."""
TEXT_COLUMNS = ("text_cos_last", "text_cos_mean")
"""The ranking stage's text cosines (the "without text" variant drops them). ``text_rating``
(the user's ratings of the items nearest by text) stays: what it adds is `bench like-head`'s."""
BOOTSTRAP = 1000
Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Event:
    """One test event: the user's events before it (time order) and whether it was a like."""

    user_id: str
    item_id: str
    at: int
    like: float
    history: tuple[HistoryEvent, ...]


@dataclass(frozen=True)
class Arrivals:
    """The cut-off, the log before it, when each item was released and the test events."""

    cutoff: int
    catalog: Catalog  # the items' text as of the cut-off, the events before it
    released: npt.NDArray[np.float64]  # per catalog item: its first event's time (inf: none)
    new: npt.NDArray[np.bool_]  # per catalog item: first event after the cut-off
    events: list[Event]
    cold: list[Event]
    item_col: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        catalog: Catalog,
        *,
        quantile: float = QUANTILE,
        max_events: int | None = None,
        seed: int = 0,
    ) -> Arrivals:
        """The protocol's split of ``catalog`` (``max_events``: a seeded sample of each set)."""
        inter = catalog.interactions
        if not len(inter):
            raise ValueError("no interactions: the new-arrivals protocol needs a log")
        cutoff = int(np.quantile(inter.timestamps, quantile))
        item_col = {i: n for n, i in enumerate(catalog.items)}
        released = np.full(len(item_col), np.inf)
        cols = np.array([item_col.get(i, -1) for i in inter.item_ids.tolist()], dtype=np.int64)
        known = cols >= 0
        np.minimum.at(released, cols[known], inter.timestamps[known].astype(np.float64))
        events: list[Event] = []
        cold: list[Event] = []
        for user, history in group_histories(inter, seed=seed).items():
            first_after = next(
                (k for k, e in enumerate(history) if e.timestamp >= cutoff), len(history)
            )
            if first_after > 0:
                positions = range(first_after, len(history))
                into = events
            else:  # a user new since the cut-off
                low, high = COLD_HISTORY
                positions = range(low, min(high, len(history) - 1) + 1)
                into = cold
            for k in positions:
                e = history[k]
                again = any(h.item_id == e.item_id for h in history[:k])  # a repeat, not new
                if e.item_id in item_col and not again:
                    liked = is_positive(e, LIKE_THRESHOLD)
                    into.append(
                        Event(
                            user,
                            e.item_id,
                            e.timestamp,
                            float(liked is not False),
                            tuple(history[:k]),
                        )
                    )
        rng = np.random.default_rng(seed)
        if max_events is not None:
            events, cold = (
                [s[i] for i in sorted(rng.choice(len(s), max_events, replace=False))]
                if len(s) > max_events
                else s
                for s in (events, cold)
            )
        before = inter.take(np.flatnonzero(inter.timestamps < cutoff))
        at_cutoff = replace(catalog.as_of(cutoff), interactions=before)
        new = np.isfinite(released) & (released >= cutoff)  # never-rated items are never offered
        return cls(cutoff, at_cutoff, released, new, events, cold, item_col)

    def on_new(self) -> list[Event]:
        """The returning users' events on new items."""
        return [e for e in self.events if self.new[self.item_col[e.item_id]]]

    def summary(self) -> dict[str, Any]:
        """Counts a reader needs to weigh the figures."""
        on_new = self.on_new()
        return {
            "cutoff": self.cutoff,
            "quantile": QUANTILE,
            "new_items": int(self.new.sum()),
            "events_before_cutoff": len(self.catalog.interactions),
            "returning_users": len({e.user_id for e in self.events}),
            "events": len(self.events),
            "events_on_new_items": len(on_new),
            "likes_on_new_items": int(sum(e.like for e in on_new)),
            "cold_users": len({e.user_id for e in self.cold}),
            "cold_events": len(self.cold),
        }


@dataclass
class Scored:
    """A method's scores of every catalog item for a batch of events (-inf: not ranked);
    ``shelf``: its scores for the shelf where they differ (the ranking stage's), and
    ``p_like``: P(like) of each target where the method has a head (else its score)."""

    full: Scores
    shelf: Scores | None = None
    p_like: Scores | None = None


Scorer = Callable[[Sequence[Event]], Scored]


@dataclass
class Ranks:
    """Per event: the target's rank among released items, among the shelf, its score."""

    full: npt.NDArray[np.float64]
    shelf: npt.NDArray[np.float64]  # NaN where the target is not new
    target: npt.NDArray[np.float64]


def _rank(scores: Scores, mask: npt.NDArray[np.bool_], target: int) -> float:
    """1 + every other offered item scored at least as high as the target (ties count
    against it)."""
    mine = scores[target]
    offered = scores[mask]
    if not np.isfinite(mine):
        return float(max(len(offered), 1))
    return float(max(int(np.count_nonzero(offered >= mine)), 1))  # the target is one of them


def rank_events(arrivals: Arrivals, events: Sequence[Event], scorer: Scorer) -> Ranks:
    """The target's ranks under ``scorer``, in batches of 64 events."""
    full, shelf, target = [], [], []
    for start in range(0, len(events), 64):
        part = events[start : start + 64]
        scored = scorer(part)
        scores = scored.full
        shelf_scores = scored.shelf if scored.shelf is not None else scores
        for n, e in enumerate(part):
            col = arrivals.item_col[e.item_id]
            offered = arrivals.released <= e.at
            offered[col] = True  # released by its own event at the latest
            for h in e.history:
                seen = arrivals.item_col.get(h.item_id)
                if seen is not None:
                    offered[seen] = False
            full.append(_rank(scores[n], offered, col))
            shelf.append(
                _rank(shelf_scores[n], offered & arrivals.new, col)
                if arrivals.new[col]
                else math.nan
            )
            target.append(
                float(scores[n, col]) if scored.p_like is None else float(scored.p_like[n])
            )
    return Ranks(np.array(full), np.array(shelf), np.array(target))


def _ndcg(ranks: npt.NDArray[np.float64], k: int = 10) -> npt.NDArray[np.float64]:
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def _interval(values: npt.NDArray[np.float64], users: Sequence[str], seed: int) -> list[float]:
    """95% interval of the mean, resampling users (each with all their events)."""
    if not len(values):
        return [math.nan, math.nan]
    names = sorted(set(users))
    index = {u: n for n, u in enumerate(names)}
    groups = np.array([index[u] for u in users])
    sums = np.bincount(groups, values, minlength=len(names))
    counts = np.bincount(groups, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(BOOTSTRAP, len(names)))
    means = sums[draws].sum(axis=1) / np.maximum(counts[draws].sum(axis=1), 1.0)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def figures(arrivals: Arrivals, ranks: Ranks, cold: Ranks, seed: int) -> dict[str, Any]:
    """(a) to (d) of one method, each with its interval."""
    new = np.array([arrivals.new[arrivals.item_col[e.item_id]] for e in arrivals.events], bool)
    users = [e.user_id for e in arrivals.events]
    new_users = [u for u, m in zip(users, new, strict=True) if m]
    likes = np.array([e.like for e in arrivals.events])
    full_new = ranks.full[new]
    out: dict[str, Any] = {
        "new_items": {
            "events": int(new.sum()),
            **{
                name: float(v.mean()) if len(v) else math.nan
                for name, v in (
                    ("ndcg@10", _ndcg(full_new)),
                    ("recall@10", (full_new <= 10).astype(float)),
                    ("recall@50", (full_new <= 50).astype(float)),
                )
            },
            "ndcg@10_ci95": _interval(_ndcg(full_new), new_users, seed),
            "recall@50_ci95": _interval((full_new <= 50).astype(float), new_users, seed),
        },
        "shelf": {
            "events": int(new.sum()),
            "ndcg@10": float(_ndcg(ranks.shelf[new]).mean()) if new.any() else math.nan,
            "ndcg@10_ci95": _interval(_ndcg(ranks.shelf[new]), new_users, seed),
        },
        "like_auc_new_items": auc(ranks.target[new], likes[new]) if new.any() else math.nan,
        "all_events_ndcg@10": float(_ndcg(ranks.full).mean()) if len(ranks.full) else math.nan,
        "cold_users": {
            "events": len(cold.full),
            "ndcg@10": float(_ndcg(cold.full).mean()) if len(cold.full) else math.nan,
            "ndcg@10_ci95": _interval(_ndcg(cold.full), [e.user_id for e in arrivals.cold], seed),
        },
    }
    return out


def paired(
    arrivals: Arrivals,
    mine: tuple[Ranks, Ranks],
    served: tuple[Ranks, Ranks],
    seed: int,
) -> dict[str, list[float]]:
    """95% intervals of (this method - the served pipeline) on the shelf, the new items'
    Recall@50 and the cold users' NDCG@10, resampling users."""
    new = np.array([arrivals.new[arrivals.item_col[e.item_id]] for e in arrivals.events], bool)
    users = [e.user_id for e, m in zip(arrivals.events, new, strict=True) if m]
    cold_users = [e.user_id for e in arrivals.cold]
    return {
        "shelf_ndcg@10_minus_served_ci95": _interval(
            _ndcg(mine[0].shelf[new]) - _ndcg(served[0].shelf[new]), users, seed
        ),
        "new_items_recall@50_minus_served_ci95": _interval(
            (mine[0].full[new] <= 50).astype(float) - (served[0].full[new] <= 50), users, seed
        ),
        "cold_ndcg@10_minus_served_ci95": _interval(
            _ndcg(mine[1].full) - _ndcg(served[1].full), cold_users, seed
        ),
    }


SLICES = {
    "shelf NDCG@10": "shelf_ndcg@10_minus_served_ci95",
    "new items Recall@50": "new_items_recall@50_minus_served_ci95",
    "cold users NDCG@10": "cold_ndcg@10_minus_served_ci95",
}
"""The slices where text should matter, and the key of each one's paired interval."""


def text_by_slice(intervals: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """Per slice, what the stage's text features do, read from the paired 95% interval of
    (the stage without them - the stage with them): "earns" where the interval lies below zero,
    "costs" where it lies above, "no evidence" where it spans zero."""
    out = {}
    for name, key in SLICES.items():
        lo, hi = intervals[key]
        verdict = "earns" if hi < 0 else "costs" if lo > 0 else "no evidence"
        out[name] = {"without_minus_with_ci95": [lo, hi], "text": verdict}
    return out


# ---------------------------------------------------------------------------- the methods
def popularity_at_cutoff(arrivals: Arrivals) -> Scorer:
    """Events per item before the cut-off: what the frozen models know of popularity."""
    counts = np.zeros(len(arrivals.item_col))
    for item in arrivals.catalog.interactions.item_ids.tolist():
        if item in arrivals.item_col:
            counts[arrivals.item_col[item]] += 1

    def score(events: Sequence[Event]) -> Scored:
        return Scored(np.tile(counts, (len(events), 1)))

    return score


def popularity_since_release(arrivals: Arrivals, log: Catalog) -> Scorer:
    """Events per item before the request's time, the log after the cut-off included (a
    baseline that reads the live log, which the frozen models do not)."""
    inter = log.interactions
    order = np.argsort(inter.timestamps, kind="stable")
    times = inter.timestamps[order]
    cols = np.array(
        [arrivals.item_col.get(i, -1) for i in inter.item_ids[order].tolist()], dtype=np.int64
    )

    def score(events: Sequence[Event]) -> Scored:
        out = np.zeros((len(events), len(arrivals.item_col)))
        for n, e in enumerate(events):
            upto = cols[: np.searchsorted(times, e.at, side="left")]
            out[n] = np.bincount(upto[upto >= 0], minlength=len(arrivals.item_col))
        return Scored(out)

    return score


def _vectors_in_catalog(arrivals: Arrivals, vectors: ItemVectors) -> npt.NDArray[np.float32]:
    """Item vectors in catalog column order (zeros where an item has none)."""
    matrix = np.zeros((len(arrivals.item_col), vectors.dim), dtype=np.float32)
    rows = [(arrivals.item_col[i], n) for n, i in enumerate(vectors.ids) if i in arrivals.item_col]
    if rows:
        at, src = map(list, zip(*rows, strict=True))
        matrix[at] = vectors.matrix[src]
    return matrix


def tower_scorer(arrivals: Arrivals, tower: UserTower, vectors: ItemVectors) -> Scorer:
    """A user tower's inner product with every item's vector (-inf: no vector)."""
    matrix = _vectors_in_catalog(arrivals, vectors)
    missing = ~np.any(matrix, axis=1)

    def score(events: Sequence[Event]) -> Scored:
        users = tower.embed([UserState(e.user_id, {}, list(e.history)) for e in events])
        out = (np.asarray(users, dtype=np.float32) @ matrix.T).astype(np.float64)
        out[:, missing] = -np.inf
        return Scored(out)

    return score


def zero_shot(arrivals: Arrivals, text: ItemVectors) -> Scorer:
    """The mean of the user's last five items' text vectors (the zero-shot text tower)."""
    return tower_scorer(arrivals, MeanItemsTower(text, n_recent=5), text)


RERANK_DEPTH = 100
"""The first stage's candidates the cross-encoder reorders in the full catalog."""


def cross_encoder_scorer(
    arrivals: Arrivals,
    reranker: Reranker,
    tower: SequentialTower,
    index: VectorIndex,
    depth: int = RERANK_DEPTH,
) -> Scorer:
    """The cross-encoder alone, as a cascade on the tower serves it: on an event on a new item
    and on a cold user's event, the tower's top ``depth`` of the full catalog reordered by
    P(like) above every other item (which keep the tower's order), and on a new item's event
    the tower's top ``depth`` of the new items released by then reordered the same way (the
    shelf); P(like) of each such target. Other events get the tower's order and no P(like):
    the protocol's figures for this method are the new items, the shelf and the cold users.
    Its features read the log before the cut-off (a new item's count is 0)."""
    from collections import Counter

    from catalog.model import User
    from catalog.text import ItemTextTemplate, UserTextTemplate
    from rerank.cross_encoder.pairs import FeatureMaker, RatingStats

    before = arrivals.catalog
    counts = Counter(before.interactions.item_ids.tolist())
    maker = FeatureMaker(
        tower, index, counts, reranker.config.features, RatingStats.of(before.interactions)
    )
    users = UserTextTemplate.from_dict(reranker.config.user_template)
    template = ItemTextTemplate()
    text = {i: t for i, t in ((i, template.render(it)) for i, it in before.items.items()) if t}
    ids = list(arrivals.item_col)
    cold = {(e.user_id, e.item_id, e.at) for e in arrivals.cold}
    assert tower.item_vectors is not None
    base = tower_scorer(arrivals, tower, tower.item_vectors)

    def top(scores: Scores, allowed: npt.NDArray[np.bool_]) -> list[int]:
        ranked = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")[:depth]
        return [int(c) for c in ranked if np.isfinite(scores[c]) and allowed[c]]

    def score(events: Sequence[Event]) -> Scored:
        full = base(events).full
        shelf = full.copy()
        p_like = np.full(len(events), np.nan)
        for n, e in enumerate(events):
            target = arrivals.item_col[e.item_id]
            is_new = bool(arrivals.new[target])
            if not is_new and (e.user_id, e.item_id, e.at) not in cold:
                continue
            seen = np.zeros(len(ids), dtype=bool)
            seen[
                [arrivals.item_col[h.item_id] for h in e.history if h.item_id in arrivals.item_col]
            ] = True
            offered = (arrivals.released <= e.at) & ~seen
            offered[target] = True  # released by its own event at the latest
            in_full = top(full[n], offered)
            in_shelf = top(full[n], offered & arrivals.new) if is_new else []
            cand = sorted({c for c in (*in_full, *in_shelf, target) if ids[c] in text})
            history = list(e.history)
            user = users.render(before.users.get(e.user_id, User(e.user_id)), history, before.items)
            feats = maker.features(maker.user_vector(history), [ids[c] for c in cand], history)
            probs = reranker.score(user, [text[ids[c]] for c in cand], feats)
            p_of = dict(zip(cand, probs.tolist(), strict=True))
            p_like[n] = p_of.get(target, np.nan)
            for scores, chosen in ((full, in_full), (shelf, in_shelf)):
                kept = [c for c in chosen if c in p_of]  # the target only where the tower put it
                scores[n, kept] = scores[n].max() + 2.0 + np.array([p_of[c] for c in kept])
        return Scored(full, shelf, p_like)

    return score


def _cross_encoder(
    arrivals: Arrivals,
    text: ItemVectors,
    tower: SequentialTower,
    index: VectorIndex,
    args: RerankerTrainArgs,
    seed: int,
    progress: Callable[[str], None],
) -> Scorer:
    """A cross-encoder trained as ``train reranker`` trains it, on the events before the
    cut-off only (its hard negatives and retrieval feature from the tower fitted there), with
    its trained head (no validation fusion), and its scorer."""
    import tempfile
    from pathlib import Path

    from catalog.splits import leave_one_out
    from rerank.cross_encoder import Reranker
    from rerank.cross_encoder.trainer import train_reranker

    before = arrivals.catalog
    progress("new arrivals: the cross-encoder on the events before the cut-off")
    with tempfile.TemporaryDirectory(prefix="duorank-arrivals-") as tmp:
        out = Path(tmp) / "reranker"
        split = leave_one_out(before.interactions, seed=seed)
        # The head as trained: the warm validation's fusion would decide the text's weight.
        # No teacher: a home's teacher has seen the events after the cut-off.
        raw = replace(args, calibrate=False, teacher=None)
        train_reranker(before, split, text, out, raw, progress=False, tower=tower)
        reranker = Reranker(out, backend="torch")
        reranker.core  # noqa: B018  (loaded into memory before the folder goes)
    return cross_encoder_scorer(arrivals, reranker, tower, index)


def _unproposed(
    cands: CandidateSet, extra: Sequence[str], depths: Mapping[str, int]
) -> CandidateSet:
    """``cands`` with ``extra`` items appended as candidates no source proposed."""
    from retrieval.sources import CandidateSet

    s = len(cands.sources)
    return CandidateSet(
        [*cands.ids, *extra],
        cands.sources,
        np.concatenate([cands.score, np.zeros((len(extra), s), np.float32)]),
        np.concatenate(
            [cands.rank, np.tile([depths[name] for name in cands.sources], (len(extra), 1))]
        ).astype(np.int64),
        np.concatenate([cands.present, np.zeros((len(extra), s), dtype=bool)]),
    )


@dataclass
class StageScorer:
    """The ranking stage: its order of the candidates the sources propose and, for an event
    on a new item, of every new item released by then (the shelf)."""

    arrivals: Arrivals
    stage: CandidateStage
    ranker: GBDTRanker
    serve: bool = True  # False: the first stage's order (the card chose the tower)

    def __call__(self, events: Sequence[Event]) -> Scored:
        from rerank.ranker.features import Request

        stage, ranker, arrivals = self.stage, self.ranker, self.arrivals
        requests = [Request(e.user_id, list(e.history), e.at) for e in events]
        excludes = [{h.item_id for h in e.history} for e in events]
        vectors = stage.tower.embed([UserState(history=r.history) for r in requests])
        sets, firsts = stage.candidates(requests, excludes, vectors)
        cols = np.array([stage.names.index(c) for c in ranker.names], dtype=np.int64)
        first_col = stage.names.index("retrieval_score")
        full = np.full((len(events), len(arrivals.item_col)), -np.inf)
        shelf = full.copy()
        like = ranker.like
        p_like = np.full(len(events), np.nan) if like is not None else None
        for n, e in enumerate(events):
            extra: list[str] = []
            if arrivals.new[arrivals.item_col[e.item_id]]:
                proposed = set(sets[n].ids) | excludes[n]
                extra = [
                    i
                    for i, c in arrivals.item_col.items()
                    if arrivals.new[c]
                    and (arrivals.released[c] <= e.at or i == e.item_id)
                    and i not in proposed
                    and i in stage.features.item_col
                ]
            cands = _unproposed(sets[n], extra, stage.depths)
            rows = np.array([stage.features.item_col[i] for i in extra], dtype=np.int64)
            first = np.concatenate(
                [firsts[n], (stage.learned[rows] @ vectors[n]).astype(np.float32)]
            )
            x, _ = stage.features.compute([requests[n]], [cands], [first])
            score = np.asarray(
                ranker.score(x[:, cols]) if self.serve else x[:, first_col], dtype=np.float64
            )
            at = np.array([arrivals.item_col[i] for i in cands.ids], dtype=np.int64)
            k = len(sets[n].ids)
            full[n, at[:k]] = score[:k]
            shelf[n, at] = score
            if like is not None and p_like is not None:
                row = stage.item_rows([requests[n]], [e.item_id], vectors[n : n + 1])
                like_cols = [stage.names.index(c) for c in like.names]
                p_like[n] = float(like.probability(row[:, like_cols])[0])
        return Scored(full, shelf, p_like)


def live_stage(
    before: Catalog,
    log: Catalog,
    tower: UserTower,
    index: VectorIndex,
    text: ItemVectors,
    stage_args: RankingStageArgs,
    seed: int,
) -> CandidateStage:
    """The ranking stage's tables fitted on the events before the cut-off, reading the live
    log: its popularity, age and rating features and its recent-popularity source count the
    events before each request (every feature is cut at the request's time), as a nightly
    refresh of the tables gives them; the models and co-occurrence tables stay as fitted."""
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.features import event_arrays
    from rerank.ranker.tables import StageTables

    fitted = group_histories(before.interactions, seed=seed)
    tables = StageTables.fit(before.items, fitted, text, stage_args.als)
    col = {i: n for n, i in enumerate(tables.item_ids)}
    cols, times, ratings = event_arrays(col, group_histories(log.interactions, seed=seed))
    live = replace(tables, log_cols=cols, log_times=times, log_ratings=ratings)
    return CandidateStage.from_tables(
        live, tower, index, depths=stage_args.depths, histories=fitted
    )


@dataclass
class BeforeCutoff:
    """The tower and the ranking stage fitted on the events before the cut-off, and the stage
    reading the live log (:func:`live_stage`)."""

    tower: SequentialTower
    index: VectorIndex
    trained: TrainedStage
    stage: CandidateStage


def fit_before_cutoff(
    arrivals: Arrivals,
    log: Catalog,
    text: ItemVectors,
    sequential: SequentialConfig,
    stage_args: RankingStageArgs,
    seed: int,
    progress: Callable[[str], None],
) -> BeforeCutoff:
    """The tower and the ranking stage on the events before the cut-off, as ``train tower``
    and ``train ranker`` fit them."""
    from catalog.splits import leave_one_out
    from rerank.ranker.train import train_on, validation_of
    from retrieval.sequential_train import train_sequential

    before = arrivals.catalog
    split = leave_one_out(before.interactions, seed=seed)
    validation = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )
    progress("new arrivals: the tower on the events before the cut-off")
    tower, card = train_sequential(
        text, group_histories(split.train, seed=seed), validation, sequential, progress=False
    )
    progress("new arrivals: the ranking stage on the events before the cut-off")
    setup = validation_of(before, text, tower, card, seed=seed)
    trained = train_on(setup, stage_args, progress=progress)
    stage = live_stage(before, log, tower, setup.index, text, stage_args, seed)
    return BeforeCutoff(tower, setup.index, trained, stage)


def _trained(
    arrivals: Arrivals,
    log: Catalog,
    text: ItemVectors,
    sequential: SequentialConfig,
    stage_args: RankingStageArgs,
    seed: int,
    progress: Callable[[str], None],
    reranker_args: RerankerTrainArgs | None = None,
) -> dict[str, Scorer]:
    """The trained tower and the ranking stage (with and without its text features, and
    without cold dropout and short copies when it has them), fitted on the events before the cut-off
    (:func:`fit_before_cutoff`), and the served pipeline (the stage or the tower, as the
    ranker's card chose)."""
    from rerank.ranker.model import GBDTRanker

    fitted = fit_before_cutoff(arrivals, log, text, sequential, stage_args, seed, progress)
    tower, trained, stage = fitted.tower, fitted.trained, fitted.stage
    assert tower.item_vectors is not None
    methods: dict[str, Scorer] = {
        "two_tower_trained": tower_scorer(arrivals, tower, tower.item_vectors)
    }
    short = trained.short_lists
    without = GBDTRanker.fit(
        trained.train_lists.without_columns(TEXT_COLUMNS),
        stage_args.ranker,
        extra=short.without_columns(TEXT_COLUMNS) if short is not None else None,
    )
    methods["ranking_stage_without_text"] = StageScorer(arrivals, stage, without)
    if stage_args.ranker.cold_dropout:  # the stage as it was before cold dropout
        warm_only = replace(stage_args.ranker, cold_dropout=0.0)
        before_dropout = GBDTRanker.fit(trained.train_lists, warm_only, extra=short)
        methods["ranking_stage_without_cold_dropout"] = StageScorer(arrivals, stage, before_dropout)
    if short is not None:  # the stage as it was before short copies
        long_only = GBDTRanker.fit(trained.train_lists, stage_args.ranker)
        methods["ranking_stage_without_short_histories"] = StageScorer(arrivals, stage, long_only)
    methods["ranking_stage"] = StageScorer(arrivals, stage, trained.ranker)
    serves = trained.choice["served"] == "ranker"
    methods["served_pipeline"] = StageScorer(arrivals, stage, trained.ranker, serve=serves)
    if reranker_args is not None:
        methods["cross_encoder"] = _cross_encoder(
            arrivals, text, tower, fitted.index, reranker_args, seed, progress
        )
    return methods


def run_arrivals(
    catalog: Catalog,
    encode: Callable[[Mapping[str, Item]], ItemVectors],
    *,
    sequential: SequentialConfig,
    stage_args: RankingStageArgs,
    quick: bool,
    seed: int,
    progress: Callable[[str], None],
    reranker_args: RerankerTrainArgs | None = None,
) -> dict[str, Any]:
    """The protocol's report: its counts, then (a) to (d) per method with its intervals and,
    paired, its difference from the served pipeline. With ``reranker_args``, a cross-encoder
    trained on the events before the cut-off is one more method."""
    started = time.perf_counter()
    arrivals = Arrivals.of(catalog, max_events=200 if quick else None, seed=seed)
    if not arrivals.on_new() and not arrivals.cold:
        return {
            **arrivals.summary(),
            "methods": {},
            "note": "no event on a new item and no cold user",
        }
    text = encode(arrivals.catalog.items)
    methods: dict[str, Scorer] = {
        "popularity_at_cutoff": popularity_at_cutoff(arrivals),
        "popularity_since_release": popularity_since_release(arrivals, catalog),
        "two_tower_zero_shot": zero_shot(arrivals, text),
        **_trained(arrivals, catalog, text, sequential, stage_args, seed, progress, reranker_args),
    }
    ranks = {}
    for name, scorer in methods.items():
        progress(f"new arrivals: {name}")
        ranks[name] = (
            rank_events(arrivals, arrivals.events, scorer),
            rank_events(arrivals, arrivals.cold, scorer),
        )
    report: dict[str, Any] = {
        **arrivals.summary(),
        "text_as_of": arrivals.cutoff,
        "dated_tags_before_cutoff": (
            catalog.tag_events.before(arrivals.cutoff) if catalog.tag_events is not None else 0
        ),
        "methods": {},
    }
    if reranker_args is None:
        report["not_run"] = {
            "cross_encoder": "run with a reranker (eval --reranker): the protocol trains its "
            "own on the events before the cut-off (a home's reranker has seen the later ones)"
        }
    served = ranks["served_pipeline"]
    for name, (warm, cold) in ranks.items():
        entry = figures(arrivals, warm, cold, seed)
        if name == "cross_encoder":  # it reads only new items' and cold users' events
            entry["all_events_ndcg@10"] = math.nan
        if name != "served_pipeline":
            entry.update(paired(arrivals, (warm, cold), served, seed))
        report["methods"][name] = entry
    report["text_features"] = text_by_slice(
        paired(arrivals, ranks["ranking_stage_without_text"], ranks["ranking_stage"], seed)
    )
    report["seconds"] = time.perf_counter() - started
    return report
