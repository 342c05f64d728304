"""Why an item was recommended, cheaply enough to compute on every call that asks.

Three parts, each read off what the call already computed:

- **sources**: which candidate sources proposed the item (the ranking stage merges several);
- **because**: the user's recent items closest to it in the first stage's own vector space
  (the index's vectors), each with its share of the positive similarity over those items: the
  history items that pull the item up;
- **features**: for the ranking stage, the features whose tree contributions (LightGBM's
  TreeSHAP, ``pred_contrib``) moved the item most against the first stage's order, signed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.text import HistoryEvent
from retrieval.index import VectorIndex
from retrieval.vectors import normalize

RECENT = 20
"""Newest history items an explanation looks at."""
TOP = 3
"""History items and features an explanation names."""


@dataclass(frozen=True)
class Because:
    """A history item behind a recommendation."""

    item_id: str
    title: str
    share: float  # of the positive similarity between the item and the user's recent items


@dataclass(frozen=True)
class FeatureEffect:
    """A ranking-stage feature and how far it moved the item's score (in the ranker's units;
    positive: up against the first stage's order)."""

    feature: str
    value: float | None  # None: not defined for this pair (e.g. an item with no events yet)
    effect: float


@dataclass(frozen=True)
class Explanation:
    """Why one item is in the list."""

    sources: list[str]
    first_stage_rank: int | None  # 1-based, among the call's candidates
    because: list[Because] = field(default_factory=list)
    features: list[FeatureEffect] = field(default_factory=list)


def recent_items(history: Sequence[HistoryEvent], index: VectorIndex, n: int = RECENT) -> list[str]:
    """The newest ``n`` distinct history items the index holds, newest first."""
    out: list[str] = []
    for event in sorted(history, key=lambda e: e.timestamp, reverse=True):
        if event.item_id not in out and index.has(event.item_id):
            out.append(event.item_id)
            if len(out) == n:
                break
    return out


def because(
    index: VectorIndex,
    item_ids: Sequence[str],
    history: Sequence[HistoryEvent],
    items: Mapping[str, Item],
    top: int = TOP,
) -> list[list[Because]]:
    """Per item, the ``top`` recent history items most similar to it (positive only)."""
    recent = recent_items(history, index)
    known = [i for i in item_ids if index.has(i)]
    if not recent or not known:
        return [[] for _ in item_ids]
    h = normalize(index.reconstruct([index.position(i) for i in recent]))
    v = normalize(index.reconstruct([index.position(i) for i in known]))
    sims = v @ h.T
    positive = np.clip(sims, 0.0, None)
    totals = positive.sum(axis=1)
    found: dict[str, list[Because]] = {}
    for n, item_id in enumerate(known):
        order = [int(j) for j in np.argsort(-sims[n], kind="stable")[:top] if sims[n, j] > 0]
        found[item_id] = [
            Because(
                recent[j],
                items[recent[j]].title if recent[j] in items else recent[j],
                float(positive[n, j] / totals[n]),
            )
            for j in order
        ]
    return [found.get(i, []) for i in item_ids]


def feature_effects(
    contributions: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
    names: Sequence[str],
    top: int = TOP,
) -> list[FeatureEffect]:
    """The ``top`` features with the largest absolute contribution for one row."""
    order = np.argsort(-np.abs(contributions), kind="stable")[:top]
    return [
        FeatureEffect(
            names[j],
            None if not math.isfinite(float(values[j])) else float(values[j]),
            float(contributions[j]),
        )
        for j in order
        if contributions[j] != 0
    ]
