"""Cold-item dropout: training rows rewritten as an item with no events reads them.

A new arrival reaches the ranking stage with no interactions: its windowed counts, age,
co-visitation, kNN and rating features read as empty, and no collaborative source proposes it.
Stacked training lists hold few such rows, so the trees learn "no events, never the target" and
bury every new item however well its text matches the user. DropoutNet's remedy (Volkovs et al.,
NeurIPS 2017) carries over to trees: show them rows, targets at the same rate, rewritten to
exactly what :meth:`rerank.ranker.features.RankingFeatures.compute` writes for an item with no
events, keeping the content side (the tower's score, the text and learned vector similarities,
the genre match). The trees then learn what such a row is worth next to warm ones and how to
order it by its content. The ranker learns each list twice, as it is and as a cold copy
(:func:`with_cold_copies`), so no warm row loses its evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from rerank.ranker.candidates import Lists
from rerank.ranker.features import LAST, WINDOWS

CONTENT_SOURCES = frozenset({"tower"})
"""Sources that can propose an item with no events (the tower scores every indexed vector);
every other source (co-visitation, ALS, recent popularity) leaves such an item unproposed."""

COLD: dict[str, float] = {
    **{f"pop_{d}d": 0.0 for d in WINDOWS},
    "pop_all": 0.0,
    "trend_7d_30d": 0.0,
    "age_days": float("nan"),
    **{f"covisit_last{n}": 0.0 for n in LAST},
    **{f"knn_last{n}": 0.0 for n in LAST},
    "item_mean_rating": 0.0,
    "neighbour_rating": 0.0,
}
"""What each interaction feature reads for an item with no events before the request (the
shrunk mean's deviation is 0 with no evidence; the age is unknown)."""


def cold_values(names: tuple[str, ...], depths: Mapping[str, int]) -> dict[int, float]:
    """Column index -> the value an item with no events reads there, for these feature names
    (an unproposed source: score 0, rank the source's depth as ``log1p``, absent).

    Raises:
        ValueError: a source's columns are among ``names`` but its depth is not in ``depths``.
    """
    out = {n: COLD[name] for n, name in enumerate(names) if name in COLD}
    sources = [name.removesuffix("_present") for name in names if name.endswith("_present")]
    for source in sources:
        if source in CONTENT_SOURCES:
            continue
        if source not in depths:
            raise ValueError(
                f"no depth for source {source!r} (depths: {dict(depths)}): a cold row's rank "
                "there is the source's depth"
            )
        unproposed = {"score": 0.0, "rank": float(np.log1p(depths[source])), "present": 0.0}
        for kind, value in unproposed.items():
            name = f"{source}_{kind}"
            if name in names:
                out[names.index(name)] = value
    return out


def as_cold(
    x: npt.NDArray[np.float32], names: tuple[str, ...], depths: Mapping[str, int]
) -> npt.NDArray[np.float32]:
    """Feature rows ``x`` (of ``names``) as they read for items with no events."""
    out = x.copy()
    for col, value in cold_values(names, depths).items():
        out[:, col] = value
    return out


def with_cold_rows(lists: Lists, rate: float, depths: Mapping[str, int], seed: int) -> Lists:
    """``lists`` with each row, independently with probability ``rate``, read as an item with
    no events (:func:`cold_values`). Labels, sizes and every other column are unchanged.

    Raises:
        ValueError: ``rate`` is outside [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"cold dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0 or not len(lists.x):
        return lists
    drop = np.random.default_rng(seed).random(len(lists.x)) < rate
    x = lists.x.copy()
    x[drop] = as_cold(x[drop], lists.names, depths)
    return replace(lists, x=x)


def with_cold_copies(lists: Lists, rate: float, depths: Mapping[str, int], seed: int) -> Lists:
    """Every list twice: as it is, then a copy with a share ``rate`` of its rows read cold
    (:func:`with_cold_rows`). Augmenting rather than replacing keeps every warm row the trees
    had: the copies teach the cold rows without taking evidence from the warm ones."""
    copy = with_cold_rows(lists, rate, depths, seed)
    return lists if copy is lists else lists.extended(copy)
