"""Train/validation/test splits, filtering and labelling of interaction logs.

Ties in timestamps are broken by a seeded random order rather than by item id: ordering ties by
id systematically puts low-id (old, popular) items last and inflates or deflates test metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from catalog.errors import DataError
from catalog.model import NO_LABEL, Interactions
from catalog.thresholds import LIKE_THRESHOLD


@dataclass(frozen=True)
class Split:
    """Three disjoint parts of an interaction log."""

    train: Interactions
    validation: Interactions
    test: Interactions

    def sizes(self) -> dict[str, int]:
        """Rows per part."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def temporal_order(interactions: Interactions, seed: int = 0) -> npt.NDArray[np.int64]:
    """Row order grouped by user, each user's rows by time, ties in a seeded random order."""
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(interactions))
    return np.lexsort((tiebreak, interactions.timestamps, interactions.user_ids)).astype(np.int64)


def position_from_end(
    interactions: Interactions, order: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """For rows in ``order``: 0 for each user's last row, 1 for the one before, and so on."""
    users = interactions.user_ids[order]
    n = len(order)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.flatnonzero(users[1:] != users[:-1]) + 1
    ends = np.append(boundary, n)  # exclusive end of each user's run
    run_end = np.repeat(ends, np.diff(np.concatenate(([0], ends))))
    return (run_end - 1 - np.arange(n)).astype(np.int64)


def leave_one_out(interactions: Interactions, *, seed: int = 0) -> Split:
    """Per-user temporal leave-one-out.

    Each user's last interaction goes to test, the second-to-last to validation, the rest to
    train. A user with two interactions gives one to train and one to test; a user with one
    keeps it in train. Ties in time are broken by a random order seeded with ``seed``.
    """
    order = temporal_order(interactions, seed)
    pos = position_from_end(interactions, order)
    users = interactions.user_ids[order]
    counts_by_row = _run_lengths(users)
    test = order[(pos == 0) & (counts_by_row >= 2)]
    val = order[(pos == 1) & (counts_by_row >= 3)]
    train_mask = np.ones(len(order), dtype=bool)
    train_mask[np.isin(order, test)] = False
    train_mask[np.isin(order, val)] = False
    train = order[train_mask]
    return Split(
        interactions.take(np.sort(train)),
        interactions.take(np.sort(val)),
        interactions.take(np.sort(test)),
    )


def heldout_start(split: Split) -> int | None:
    """The time of the earliest held-out event (validation or test): what a model trained and
    validated on this split may know of the items' text (their tags written before it; see
    :meth:`catalog.model.Catalog.as_of`). None when nothing is held out."""
    held = [s.timestamps for s in (split.validation, split.test) if len(s)]
    return int(min(int(h.min()) for h in held)) if held else None


def _run_lengths(sorted_keys: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], boundary))
    lengths = np.diff(np.append(starts, n))
    return np.repeat(lengths, lengths).astype(np.int64)


def global_time_split(
    interactions: Interactions, *, test_from: int, validation_from: int | None = None
) -> Split:
    """Splits at global times: train before ``validation_from``, validation until ``test_from``,
    test from ``test_from`` on. Without ``validation_from`` the validation part is empty.

    Raises:
        DataError: ``validation_from`` is after ``test_from``.
    """
    ts = interactions.timestamps
    val_from = test_from if validation_from is None else validation_from
    if val_from > test_from:
        raise DataError(
            "validation_from must not be after test_from", column="validation_from", value=val_from
        )
    return Split(
        interactions.take(np.flatnonzero(ts < val_from)),
        interactions.take(np.flatnonzero((ts >= val_from) & (ts < test_from))),
        interactions.take(np.flatnonzero(ts >= test_from)),
    )


def k_core(interactions: Interactions, k: int, *, item_k: int | None = None) -> Interactions:
    """Repeatedly drops users with fewer than ``k`` and items with fewer than ``item_k``
    (default ``k``) interactions until both hold."""
    if k < 1:
        raise DataError("k must be at least 1", column="k", value=k)
    ik = k if item_k is None else item_k
    current = interactions
    while True:
        _, u_inv, u_counts = np.unique(current.user_ids, return_inverse=True, return_counts=True)
        _, i_inv, i_counts = np.unique(current.item_ids, return_inverse=True, return_counts=True)
        keep = (u_counts[u_inv] >= k) & (i_counts[i_inv] >= ik)
        if keep.all():
            return current
        current = current.take(np.flatnonzero(keep))


def label_by_rating(interactions: Interactions, threshold: float = LIKE_THRESHOLD) -> Interactions:
    """Sets label 1 where rating >= ``threshold`` and 0 below it; rows without a rating keep
    their label (or none)."""
    ratings = interactions.ratings
    labels = interactions.labels.copy()
    rated = ~np.isnan(ratings)
    labels[rated] = (ratings[rated] >= threshold).astype(np.int8)
    labels[~rated & (labels == NO_LABEL)] = NO_LABEL
    return interactions.with_labels(labels)
