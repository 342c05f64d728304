"""Dated tags: an item's text as of a time holds only the tags written before it.

MovieLens users write tags long after an item's first rating (in ml-latest-small, 3,575 of its
3,683 tags). An item text that holds every tag reads the future: a cold item's vector would
carry words written by the users whose events are being predicted. A catalog that knows when
each tag was written (:class:`DatedTags`, from ``tags.csv``) renders its items as of any time;
tags without a date (a table's tag column: metadata known at release) are always kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from catalog.model import Item


def ordered_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Distinct tags, most frequent first (case-insensitive counts, ties alphabetical), each in
    the spelling first seen: the order an item's text lists them in."""
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for tag in tags:
        key = tag.lower()
        counts[key] += 1
        spelling.setdefault(key, tag)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(spelling[k] for k, _ in ordered)


@dataclass(frozen=True)
class DatedTags:
    """Every tag event: the item, the tag, when it was written (seconds), in source order."""

    item_ids: npt.NDArray[np.str_] = field(default_factory=lambda: np.zeros(0, dtype="<U1"))
    tags: npt.NDArray[np.str_] = field(default_factory=lambda: np.zeros(0, dtype="<U1"))
    timestamps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if not len(self.item_ids) == len(self.tags) == len(self.timestamps):
            raise ValueError("item_ids, tags and timestamps must have the same length")

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str, int]]) -> DatedTags:
        """From (item id, tag, timestamp) rows."""
        listed = list(rows)
        return cls(
            np.array([r[0] for r in listed], dtype=str).reshape(-1),
            np.array([r[1] for r in listed], dtype=str).reshape(-1),
            np.array([r[2] for r in listed], dtype=np.int64).reshape(-1),
        )

    def before(self, at: int | None) -> int:
        """How many tags were written strictly before ``at`` (None: all)."""
        return len(self) if at is None else int(np.count_nonzero(self.timestamps < at))

    def items_as_of(self, items: Mapping[str, Item], at: int | None) -> dict[str, Item]:
        """``items`` with each dated item's tags rebuilt from the tags written strictly before
        ``at`` (None: every tag); items without dated tags keep theirs (undated metadata)."""
        if at is None or not len(self):
            return dict(items)
        kept: dict[str, list[str]] = {i: [] for i in set(self.item_ids.tolist())}
        for item_id, tag, when in zip(
            self.item_ids.tolist(), self.tags.tolist(), self.timestamps.tolist(), strict=True
        ):
            if when < at:
                kept[item_id].append(tag)
        return {
            i: replace(item, tags=ordered_tags(kept[i])) if i in kept else item
            for i, item in items.items()
        }
