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

from catalog.model import Item, User
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate
from retrieval.index import VectorIndex
from retrieval.towers import MeanItemsTower, UserState


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


class FeatureMaker:
    """The head's scalar features: the retrieval stage's cosine and log popularity.

    Args:
        tower: the first stage's user tower over cached item vectors.
        index: the item index (its vectors give the cosine).
        counts: training interaction count per item id.
    """

    def __init__(
        self, tower: MeanItemsTower, index: VectorIndex, counts: Mapping[str, int]
    ) -> None:
        self.tower = tower
        self.index = index
        self.counts = counts
        self.norm = math.log1p(max(counts.values(), default=1))

    def user_vector(self, history: Sequence[HistoryEvent]) -> npt.NDArray[np.float32]:
        """The tower's vector for this history (zero when it has no likes)."""
        vector: npt.NDArray[np.float32] = self.tower.embed([UserState(history=history)])[0]
        return vector

    def features(
        self, user_vector: npt.NDArray[np.float32], item_ids: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """(n, 2): cosine(user, item) and log1p(count)/log1p(max count)."""
        rows = self.tower.item_vectors.rows(item_ids)
        vecs = self.tower.item_vectors.matrix[np.maximum(rows, 0)]
        cos = np.where(rows >= 0, vecs @ user_vector, 0.0)
        pop = np.array([math.log1p(self.counts.get(i, 0)) / self.norm for i in item_ids])
        return np.stack([cos, pop], axis=1).astype(np.float32)


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
        for event in events[-targets_per_user:]:
            if event.item_id not in item_text:
                continue
            past = [e for e in events if e.timestamp < event.timestamp]
            text = user_text_at(
                template, users.get(user_id), past, items, event.timestamp, count_tokens
            )
            uvec = features.user_vector(past)
            liked = (
                event.label == 1
                if event.label is not None
                else event.rating is None or event.rating >= threshold
            )
            f = features.features(uvec, [event.item_id])[0]
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
                feats = features.features(uvec, [c for c, _ in negatives])
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
