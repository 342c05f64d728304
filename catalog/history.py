"""Per-user histories: the interaction log grouped by user, in time order."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from catalog.model import NO_LABEL, Interactions
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


class HistoryView(Mapping[str, list[HistoryEvent]]):
    """Each user's events, oldest first, as :func:`group_histories` gives them, built on
    demand from the log's columns: one int64 row number per event and a row range per user,
    instead of an object per event (a serving process's largest per-user structure)."""

    def __init__(self, interactions: Interactions, *, seed: int = 0) -> None:
        from catalog.splits import temporal_order

        self.interactions = interactions
        self.order = temporal_order(interactions, seed)
        users = interactions.user_ids[self.order]
        if len(users):
            firsts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            ends = np.r_[firsts[1:], len(users)]
            self._rows = {
                str(u): (int(a), int(b))
                for u, a, b in zip(
                    users[firsts].tolist(), firsts.tolist(), ends.tolist(), strict=True
                )
            }
        else:
            self._rows = {}

    def __getitem__(self, user_id: str) -> list[HistoryEvent]:
        a, b = self._rows[user_id]
        rows = self.order[a:b]
        inter = self.interactions
        ratings = inter.ratings[rows]
        labels = inter.labels[rows]
        return [
            HistoryEvent(i, t, None if r != r else r, None if lab == NO_LABEL else lab)
            for i, t, r, lab in zip(
                inter.item_ids[rows].tolist(),
                inter.timestamps[rows].tolist(),
                ratings.astype(np.float64).tolist(),
                labels.tolist(),
                strict=True,
            )
        ]

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def size(self, user_id: str) -> int:
        """How many events the user has (0 for an unknown user), without building them."""
        a, b = self._rows.get(user_id, (0, 0))
        return b - a


def before(history: Sequence[HistoryEvent], timestamp: int) -> list[HistoryEvent]:
    """Events strictly before ``timestamp`` (what a model may see when predicting at that time)."""
    return [e for e in history if e.timestamp < timestamp]


def item_columns(history: Sequence[HistoryEvent], item_col: Mapping[str, int]) -> list[int]:
    """The history's item columns in a table indexed by ``item_col``, oldest first (items the
    table does not know are skipped)."""
    return [item_col[e.item_id] for e in history if e.item_id in item_col]
