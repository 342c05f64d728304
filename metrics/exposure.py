"""How recommendations spread over the catalog: exposure concentration and hub items.

A method can score well on accuracy while showing the same few items to everyone; these say how
much. They read only the ranked lists (no relevance), so they apply to every method alike.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import as_ranked, check_k


def exposure_counts(ranked: npt.ArrayLike, k: int, n_items: int) -> npt.NDArray[np.int64]:
    """How many users' top K hold each item (an item at most once per list)."""
    check_k(k)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = as_ranked(ranked)[:, :k]
    counts = np.zeros(n_items, dtype=np.int64)
    for row in top:
        counts[np.unique(row[row >= 0])] += 1
    return counts


def gini_at_k(ranked: npt.ArrayLike, k: int, n_items: int) -> float:
    r"""Gini coefficient of the items' exposure in the top K, over the whole catalog.

    .. math:: G = \frac{\sum_{j=1}^{n} (2j - n - 1)\, e_{(j)}}{n \sum_j e_j}

    with :math:`e_{(j)}` the exposure counts sorted ascending: 0 when every item is shown
    equally often, near 1 when a few items take every slot (Chen et al., "Bias and debias in
    recommender system", TOIS 2023, uses it for popularity bias). NaN for no exposure.
    """
    e = np.sort(exposure_counts(ranked, k, n_items)).astype(np.float64)
    total = e.sum()
    if total == 0:
        return float("nan")
    n = len(e)
    return float(((2 * np.arange(1, n + 1) - n - 1) * e).sum() / (n * total))


def max_user_share_at_k(
    ranked: npt.ArrayLike, k: int, n_items: int, among: npt.ArrayLike | None = None
) -> tuple[float, int]:
    """The largest share of users whose top K holds one item, and that item's column.

    ``among`` (a boolean mask over items) restricts the items considered, e.g. to cold items:
    a cold item in many users' lists is a hub the model invented. (0.0, -1) when none appears.
    """
    counts = exposure_counts(ranked, k, n_items)
    if among is not None:
        counts = np.where(np.asarray(among, dtype=bool), counts, 0)
    users = as_ranked(ranked).shape[0]
    if users == 0 or counts.max(initial=0) == 0:
        return 0.0, -1
    item = int(np.argmax(counts))
    return float(counts[item] / users), item


def slot_share_at_k(ranked: npt.ArrayLike, k: int, among: npt.ArrayLike) -> float:
    """The share of all filled top-K slots held by items in ``among`` (a mask over items)."""
    check_k(k)
    top = as_ranked(ranked)[:, :k]
    filled = top[top >= 0]
    if filled.size == 0:
        return float("nan")
    return float(np.asarray(among, dtype=bool)[filled].mean())
