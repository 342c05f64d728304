"""Per-user histories: the interaction log grouped by user, in time order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from catalog.model import Interactions
from catalog.text import HistoryEvent, history_of


def group_histories(interactions: Interactions, *, seed: int = 0) -> dict[str, list[HistoryEvent]]:
    """Each user's events, oldest first (ties in a seeded random order, as in the splits)."""
    from catalog.splits import temporal_order

    order = temporal_order(interactions, seed)
    users = interactions.user_ids[order]
    out: dict[str, list[HistoryEvent]] = {}
    if len(order) == 0:
        return out
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    for part in np.split(order, bounds):
        out[str(interactions.user_ids[part[0]])] = history_of(interactions, part.tolist())
    return out


def before(history: Sequence[HistoryEvent], timestamp: int) -> list[HistoryEvent]:
    """Events strictly before ``timestamp`` (what a model may see when predicting at that time)."""
    return [e for e in history if e.timestamp < timestamp]


def item_columns(history: Sequence[HistoryEvent], item_col: Mapping[str, int]) -> list[int]:
    """The history's item columns in a table indexed by ``item_col``, oldest first (items the
    table does not know are skipped)."""
    return [item_col[e.item_id] for e in history if e.item_id in item_col]
