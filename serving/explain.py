"""Why an item was recommended, cheaply enough to compute on every call that asks.

Read off what the call already computed:

- **sources**: which candidate sources proposed the item (the ranking stage merges several);
- **because**: the user's recent items that pull *this* item more than the rest of the list
  (in the first stage's own vector space: the index's vectors), so one title that pulls every
  item alike is not cited everywhere;
- **reasons**: for the ranking stage, its feature groups' tree contributions (LightGBM's
  TreeSHAP, ``pred_contrib``) in words ("often watched right after your recent titles"), each
  with its strength, never a feature that is the same for every item of the user's list;
- **movement**: how far the ranking stage moved the item against the first stage's order;
- **features**: the raw features behind the reasons, for whoever debugs the ranker.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
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


LIFT = 1.0
"""A history item is cited for an item when it pulls it at least this many standard
deviations more than it pulls the list's items on average..."""
MIN_GAP = 0.05
"""...and at least this much cosine similarity more (a title close to every item alike, with
a tiny spread, stays uncited)."""
MIN_SHARE = 0.05
"""A reason whose share of the cited effects is below this is left out."""


@dataclass(frozen=True)
class Because:
    """A history item behind a recommendation."""

    item_id: str
    title: str
    share: float  # of the positive similarity between the item and the user's recent items
    lift: float = 0.0  # standard deviations above its pull on the list's items on average


@dataclass(frozen=True)
class Reason:
    """One reason in words: a feature group's pull on the item, with its strength."""

    text: str
    group: str
    direction: str  # "up" or "down": against the first stage's order
    strength: float  # share of the absolute effect of the reasons given, 0-1


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
    reasons: list[Reason] = field(default_factory=list)
    movement: str | None = None  # "up 62 places against the first stage's order"


def movement(first_stage_rank: int | None, served_rank: int) -> str | None:
    """How far the ranking stage moved an item, in words."""
    if first_stage_rank is None:
        return None
    delta = first_stage_rank - served_rank
    if delta == 0:
        return "same place as in the first stage's order"
    places = "place" if abs(delta) == 1 else "places"
    way = "up" if delta > 0 else "down"
    return f"{way} {abs(delta)} {places} against the first stage's order"


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
    """Per item of the list, the (at most ``top``) recent history items that pull it more than
    they pull the list's items on average: at least :data:`LIFT` standard deviations above
    their mean similarity over the list, most lifted first. A title that is close to every
    item explains none of them; an item with no such title gets none (the page then says no
    single title stands out). A list of fewer than three items cites the closest titles."""
    recent = recent_items(history, index)
    known = [i for i in item_ids if index.has(i)]
    if not recent or not known:
        return [[] for _ in item_ids]
    h = normalize(index.reconstruct([index.position(i) for i in recent]))
    v = normalize(index.reconstruct([index.position(i) for i in known]))
    sims = v @ h.T
    positive = np.clip(sims, 0.0, None)
    totals = np.maximum(positive.sum(axis=1), 1e-12)
    if len(known) >= 3:
        gap = sims - sims.mean(axis=0)
        spread = sims.std(axis=0)
        lift = gap / np.maximum(spread, 1e-6)
        cited = (gap >= np.maximum(LIFT * spread, MIN_GAP)) & (sims > 0)
    else:
        lift, cited = np.zeros_like(sims), sims > 0
    found: dict[str, list[Because]] = {}
    for n, item_id in enumerate(known):
        key = lift[n] if len(known) >= 3 else sims[n]
        order = [int(j) for j in np.argsort(-key, kind="stable") if cited[n, j]][:top]
        found[item_id] = [
            Because(
                recent[j],
                items[recent[j]].title if recent[j] in items else recent[j],
                float(positive[n, j] / totals[n]),
                float(lift[n, j]),
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


SOURCE_NAMES = {
    "tower": "your taste profile (the first stage)",
    "covisit": "titles watched together with yours",
    "als": "people with tastes like yours",
    "popular": "what is popular now",
}
"""How the page names each candidate source."""


def _phrase(name: str, value: float | None, up: bool) -> str:
    """One feature's pull in words (up: toward the top of the list)."""
    if name.startswith("pop_") and name.endswith("d"):
        days = int(name[4:-1])
        when = {1: "today", 7: "this week", 30: "this month"}.get(days, f"in the last {days} days")
        return f"popular {when}" if up else f"less watched {when}"
    if name.endswith(("_score", "_rank", "_present")) and name != "retrieval_score":
        source = name.rsplit("_", 1)[0]
        named = SOURCE_NAMES.get(source, source)
        return f"proposed by {named}" if up else f"ranked low by {named}"
    if name == "age_days":
        new = value is not None and value <= 30
        return ("new in the catalog" if new else "an established title") + (
            "" if up else " (held back)"
        )
    phrases = {
        "retrieval_score": ("close to your taste", "further from your taste than the rest"),
        "exposure_top10": (
            "not already recommended to everyone",
            "already recommended to nearly everyone",
        ),
        "pop_all": ("popular overall", "less popular overall"),
        "trend_7d_30d": ("rising this week", "cooling off this week"),
        "genre_match": ("in genres you watch", "outside the genres you watch"),
        "item_mean_rating": ("rated highly by others", "rated lower by others"),
        "neighbour_rating": (
            "you rated titles like it highly",
            "you rated titles like it lower",
        ),
        "text_rating": (
            "you rated titles described like it highly",
            "you rated titles described like it lower",
        ),
        "learned_rating": (
            "you rated titles watched like it highly",
            "you rated titles watched like it lower",
        ),
        "genre_rating": ("you rate its genres highly", "you rate its genres lower"),
        "text_cos_last": (
            "its description is close to your latest title",
            "its description is far from your latest title",
        ),
        "text_cos_mean": (
            "its description is close to your recent titles",
            "its description is far from your recent titles",
        ),
        "learned_cos_last": ("close to your latest title", "unlike your latest title"),
        "learned_cos_mean": ("close to your recent titles", "unlike your recent titles"),
    }
    if name.startswith("covisit_last"):
        return (
            "often watched right after your recent titles"
            if up
            else "rarely watched right after your recent titles"
        )
    if name.startswith("knn_last"):
        return (
            "watched by people who watched your recent titles"
            if up
            else "rarely watched by people who watched your recent titles"
        )
    pair = phrases.get(name)
    if pair is None:
        return name.replace("_", " ") + (" (up)" if up else " (down)")
    return pair[0] if up else pair[1]


def constant_columns(x: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
    """The columns whose value is the same for every candidate of one request (the user's own
    figures: history length, days since the last event...): they cannot tell items apart, so
    no explanation cites them."""
    filled = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():  # an all-missing column is constant: no warning needed
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanmax(filled, axis=0) - np.nanmin(filled, axis=0)
    finite = np.isfinite(x)
    same_missing = finite.all(axis=0) | (~finite).all(axis=0)
    return np.asarray((np.nan_to_num(spread, nan=0.0) == 0) & same_missing)


def reasons(
    contributions: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
    names: Sequence[str],
    constant: npt.NDArray[np.bool_],
    group_of: Callable[[str], str],
    top: int = TOP,
) -> list[Reason]:
    """The ``top`` feature groups that moved one item most, in words. A group's effect is the
    sum of its varying features' contributions (constant ones are left out); its phrase is
    its strongest feature's; its strength is its share of the effects given."""
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        if not constant[j] and contributions[j] != 0:
            groups.setdefault(group_of(name), []).append(j)
    effects = {g: float(sum(contributions[j] for j in cols)) for g, cols in groups.items()}
    chosen = sorted(effects, key=lambda g: -abs(effects[g]))[:top]
    total = sum(abs(effects[g]) for g in chosen) or 1.0
    out = []
    for g in chosen:
        strength = abs(effects[g]) / total
        if strength < MIN_SHARE:
            continue
        lead = max(groups[g], key=lambda j: abs(contributions[j]))
        value = float(values[lead]) if math.isfinite(float(values[lead])) else None
        up = effects[g] > 0
        out.append(Reason(_phrase(names[lead], value, up), g, "up" if up else "down", strength))
    return out
