"""Validation of a retriever during training: Recall@K with full ranking over the catalog.

Kept here (not in ``benchmarks/``) because training needs it and imports point down only; the
metric itself is :mod:`metrics`' (one held-out item per user: Recall@K from the target's rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from catalog.model import Interactions
from catalog.text import HistoryEvent
from metrics import recall_at_k_from_ranks
from retrieval.index import VectorIndex
from retrieval.towers import UserState, UserTower


def heldout_targets(target: Interactions) -> dict[str, str]:
    """user id -> held-out item id (the last one per user if there are several)."""
    return dict(zip(target.user_ids.tolist(), target.item_ids.tolist(), strict=True))


def recall_at_ks(
    tower: UserTower,
    index: VectorIndex,
    histories: Mapping[str, Sequence[HistoryEvent]],
    targets: Mapping[str, str],
    ks: Sequence[int] = (10, 50, 100),
    *,
    profiles: Mapping[str, Mapping[str, str]] | None = None,
    batch: int = 256,
) -> dict[str, float]:
    """Mean Recall@K over users with a held-out item, excluding each user's history items.

    Users the tower cannot embed (zero vector) count as misses: a fair comparison must not drop
    the hard cases.
    """
    users = [u for u in targets if index.has(targets[u])]
    if not users:
        return {f"recall@{k}": float("nan") for k in ks}
    kmax = max(ks)
    ranks = np.full(len(users), kmax, dtype=np.int64)  # a user left unembedded is a miss
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        states = [UserState(u, (profiles or {}).get(u, {}), histories.get(u, ())) for u in chunk]
        vectors = tower.embed(states)
        exclude = [{e.item_id for e in histories.get(u, ())} for u in chunk]
        result = index.search(vectors, kmax, exclude=exclude)
        for row, u in enumerate(chunk):
            if not np.any(vectors[row]):
                continue
            ranked = result.ids[row]
            target = targets[u]
            ranks[start + row] = ranked.index(target) if target in ranked else kmax
    return {f"recall@{k}": recall_at_k_from_ranks(ranks, k) for k in ks}
