"""Training and validation pairs for the point-wise reranker.

Everything here reads the training split only, and a user's text for a target interaction at
time t is rendered from the events strictly before t (:func:`user_text_at`), so no pair can see
its own label or the future.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from catalog.model import Interactions, Item, User
from catalog.ratings import shrunk_mean
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate, is_positive
from rerank.cross_encoder.training_args import FEATURES
from retrieval.index import VectorIndex
from retrieval.towers import UserState, UserTower
from retrieval.vectors import ItemVectors


@dataclass(frozen=True)
class Example:
    """One (user, item) pair with its label and features."""

    user_id: str
    user_text: str
    item_id: str
    label: float  # 1 like / 0 dislike or sampled negative (binary head)
    level: int  # class index for the rating head (0 for sampled negatives)
    features: tuple[float, ...]
    kind: str  # "positive", "dislike", "random", "hard"
    timestamp: int = 0  # the target interaction's time; the user text predates it


def user_text_at(
    template: UserTextTemplate,
    user: User | None,
    history: Sequence[HistoryEvent],
    items: Mapping[str, Item],
    timestamp: int,
    count_tokens: object = None,
) -> str:
    """The user's text as it was just before ``timestamp`` (events at or after it are unseen)."""
    past = [e for e in history if e.timestamp < timestamp]
    return template.render(user, past, items, count_tokens)  # type: ignore[arg-type]


@dataclass
class RatingStats:
    """Per-item rating sums and counts, for shrunk mean ratings.

    A user's taste in rating terms (do they rate high?) and an item's reception are what
    separates a like from a dislike among items a user did pick; the text alone does not say.
    Means are shrunk toward the global mean by ``shrink`` pseudo-ratings and reported as the
    deviation from it (0 = no evidence).
    """

    global_mean: float
    sums: dict[str, float]
    counts: dict[str, int]
    shrink: float = 5.0

    @classmethod
    def of(cls, interactions: Interactions, shrink: float = 5.0) -> RatingStats:
        """From the rated rows of ``interactions`` (all-zero features when none is rated)."""
        rated = ~np.isnan(interactions.ratings)
        ids = interactions.item_ids[rated].tolist()
        values = interactions.ratings[rated].astype(np.float64)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for item_id, value in zip(ids, values.tolist(), strict=True):
            sums[item_id] = sums.get(item_id, 0.0) + value
            counts[item_id] = counts.get(item_id, 0) + 1
        return cls(float(values.mean()) if len(values) else 0.0, sums, counts, shrink)

    def item(self, item_id: str, leave_out: float | None = None) -> float:
        """Shrunk mean deviation of the item (``leave_out``: a rating to remove, its own)."""
        total, n = self.sums.get(item_id, 0.0), self.counts.get(item_id, 0)
        if leave_out is not None and n:
            total, n = total - leave_out, n - 1
        return shrunk_mean(total, n, self.global_mean, self.shrink) - self.global_mean

    def user(self, history: Sequence[HistoryEvent]) -> float:
        """Shrunk mean deviation of the ratings in a history."""
        values = [e.rating for e in history if e.rating is not None and e.rating == e.rating]
        return shrunk_mean(sum(values), len(values), self.global_mean, self.shrink) - (
            self.global_mean
        )


class FeatureMaker:
    """The head's scalar features (:data:`FEATURES`), one definition for training, evaluation
    and serving.

    Args:
        tower: the first stage's user tower (its ``item_vectors`` are the indexed vectors, so
            the score is exactly the one the index ranked by).
        index: the item index (for hard negatives).
        counts: training interaction count per item id.
        names: the features to compute, in order (a reranker's ``config.features``).
        ratings: rating statistics of the training interactions (needed by the rating
            features; without them those are 0).
        item_vectors: the indexed item vectors (default: the tower's own ``item_vectors``;
            needed for towers that encode users from text and keep no item vectors).
    """

    def __init__(
        self,
        tower: UserTower,
        index: VectorIndex,
        counts: Mapping[str, int],
        names: Sequence[str] = FEATURES[:2],
        ratings: RatingStats | None = None,
        item_vectors: ItemVectors | None = None,
    ) -> None:
        vectors = item_vectors if item_vectors is not None else getattr(tower, "item_vectors", None)
        if not isinstance(vectors, ItemVectors):
            raise TypeError(f"{type(tower).__name__} has no bound item_vectors")
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown reranker features {unknown}; known: {list(FEATURES)}")
        self.item_vectors = vectors
        self.tower = tower
        self.index = index
        self.counts = counts
        self.names = tuple(names)
        self.ratings = ratings
        self.norm = math.log1p(max(counts.values(), default=1))

    def user_vector(self, history: Sequence[HistoryEvent]) -> npt.NDArray[np.float32]:
        """The tower's vector for this history (zero when it has no likes)."""
        vector: npt.NDArray[np.float32] = self.user_vectors([history])[0]
        return vector

    def user_vectors(self, histories: Sequence[Sequence[HistoryEvent]]) -> npt.NDArray[np.float32]:
        """:meth:`user_vector` for many histories in one tower call (row ``n`` for ``n``)."""
        if not histories:
            return np.zeros((0, self.item_vectors.dim), dtype=np.float32)
        vectors: npt.NDArray[np.float32] = self.tower.embed(
            [UserState(history=h) for h in histories]
        )
        return vectors

    def retrieval_scores(
        self, user_vector: npt.NDArray[np.float32], item_ids: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """The first stage's score (user . indexed item vector); 0 for unknown items."""
        rows = self.item_vectors.rows(item_ids)
        vecs = self.item_vectors.matrix[np.maximum(rows, 0)]
        scores: npt.NDArray[np.float32] = np.where(rows >= 0, vecs @ user_vector, 0.0).astype(
            np.float32
        )
        return scores

    def features(
        self,
        user_vector: npt.NDArray[np.float32],
        item_ids: Sequence[str],
        history: Sequence[HistoryEvent] = (),
        held_out: HistoryEvent | None = None,
    ) -> npt.NDArray[np.float32]:
        """(n, len(names)): retrieval score (user . item), log1p(count)/log1p(max count),
        the item's and the user's shrunk mean-rating deviations.

        ``held_out``: a training target's own interaction, removed from its item's count and
        mean so that a pair never sees its own label.
        """
        columns: list[npt.NDArray[np.floating]] = []
        for name in self.names:
            if name == "retrieval_score":
                columns.append(self.retrieval_scores(user_vector, item_ids))
            elif name == "log_popularity":
                counts = [self.counts.get(i, 0) for i in item_ids]
                if held_out is not None:
                    counts = [
                        max(0, c - (i == held_out.item_id))
                        for c, i in zip(counts, item_ids, strict=True)
                    ]
                columns.append(np.log1p(np.array(counts, dtype=np.float64)) / self.norm)
            elif name == "item_rating_deviation":
                own = held_out.rating if held_out is not None else None
                columns.append(
                    np.array(
                        [
                            self.ratings.item(
                                i, own if held_out and i == held_out.item_id else None
                            )
                            if self.ratings
                            else 0.0
                            for i in item_ids
                        ]
                    )
                )
            else:  # user_rating_deviation
                value = self.ratings.user(history) if self.ratings else 0.0
                columns.append(np.full(len(item_ids), value))
        if not columns:
            return np.zeros((len(item_ids), 0), dtype=np.float32)
        return np.stack(columns, axis=1).astype(np.float32)


def level_of(rating: float | None, levels: Sequence[float]) -> int:
    """Class index of a rating (nearest level); 0 when there is no rating."""
    if rating is None or not levels:
        return 0
    return int(np.argmin([abs(rating - v) for v in levels]))


def build_examples(
    histories: Mapping[str, Sequence[HistoryEvent]],
    users: Mapping[str, User],
    items: Mapping[str, Item],
    item_text: Mapping[str, str],
    features: FeatureMaker,
    template: UserTextTemplate,
    *,
    targets_per_user: int,
    random_negatives: int,
    hard_negatives: int,
    hard_pool: int,
    threshold: float,
    levels: Sequence[float],
    seed: int,
    count_tokens: object = None,
) -> list[Example]:
    """Pairs from each user's most recent training events.

    Positives are likes (rating >= threshold, or implicit events); explicit dislikes are
    negatives; per positive, ``random_negatives`` random unseen items and ``hard_negatives``
    items from the retrieval stage's top ``hard_pool`` that the user never interacted with.
    """
    rng = random.Random(seed)
    all_ids = [i for i in item_text]
    out: list[Example] = []
    for user_id in sorted(histories):
        events = list(histories[user_id])
        seen = {e.item_id for e in events}
        targets = [e for e in events[-targets_per_user:] if e.item_id in item_text]
        pasts = [[e for e in events if e.timestamp < t.timestamp] for t in targets]
        for event, past, uvec in zip(targets, pasts, features.user_vectors(pasts), strict=True):
            text = user_text_at(
                template, users.get(user_id), past, items, event.timestamp, count_tokens
            )
            liked = bool(is_positive(event, threshold))
            f = features.features(uvec, [event.item_id], past, held_out=event)[0]
            out.append(
                Example(
                    user_id,
                    text,
                    event.item_id,
                    float(liked),
                    level_of(event.rating, levels)
                    if event.rating is not None
                    else len(levels) - 1
                    if levels
                    else 0,
                    tuple(float(x) for x in f),
                    "positive" if liked else "dislike",
                    event.timestamp,
                )
            )
            if not liked:
                continue
            negatives: list[tuple[str, str]] = []
            for _ in range(random_negatives):
                for _attempt in range(20):
                    cand = rng.choice(all_ids)
                    if cand not in seen:
                        negatives.append((cand, "random"))
                        break
            if hard_negatives and np.any(uvec):
                result = features.index.search(uvec[None, :], hard_pool, exclude=[seen])
                pool = [i for i in result.ids[0] if i in item_text]
                negatives += [(c, "hard") for c in rng.sample(pool, min(hard_negatives, len(pool)))]
            if negatives:
                feats = features.features(uvec, [c for c, _ in negatives], past)
                out += [
                    Example(
                        user_id,
                        text,
                        c,
                        0.0,
                        0,
                        tuple(float(x) for x in feats[j]),
                        kind,
                        event.timestamp,
                    )
                    for j, (c, kind) in enumerate(negatives)
                ]
    return out


def item_texts(items: Mapping[str, Item], template: ItemTextTemplate) -> dict[str, str]:
    """Rendered text per item id (items with empty text are left out)."""
    out = {}
    for item_id, item in items.items():
        text = template.render(item)
        if text:
            out[item_id] = text
    return out
