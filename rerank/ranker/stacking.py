"""Training lists for the ranking stage, built by a first stage that never saw their targets.

A ranker learns how to correct the first stage on the lists it will be given at serving time.
If those lists came from a first stage fitted on the very events they hold out, the first
stage's scores on them would be too good (it memorised the targets) and the ranker would learn
to trust them too much. So, per user, the targets are the last ``per_user`` training events, and
the first stage that builds every training list is fitted on :attr:`Stacked.fit_histories`: each
user's events before their first target. A list's history (the request's input) holds the events
before its own target, earlier targets included; the first stage reads them as input, as it
reads any user's history at serving time, but never trained on them.

Validation lists come from the full first stage (fitted on all training events), exactly as
served.

Every stacked list's history holds at least ``min_history`` events, so the trees never see a
user who has just arrived. :func:`short_copies` adds such users: a share of the lists again, each
history cut to its newest one to three events (what a user new this week has), the same target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from catalog.text import HistoryEvent
from rerank.ranker.features import Request


@dataclass(frozen=True)
class StackedList:
    """One training list: the request (history before the target) and the target item."""

    request: Request
    target: HistoryEvent


@dataclass(frozen=True)
class Stacked:
    """The first stage's training data and the lists it builds for the ranker.

    Attributes:
        fit_histories: per user, the events before their first target (what every first-stage
            model and table of the training lists is fitted on).
        lists: every target with its request, users in sorted order, targets oldest first.
    """

    fit_histories: dict[str, list[HistoryEvent]]
    lists: list[StackedList]


def request_time(event: HistoryEvent) -> int:
    """The request time of a list whose target is ``event``: one second after it, because
    a log orders events within one second only by the split's tie-break; the history is cut by
    position, and no log a feature reads holds the target (see :func:`stack`)."""
    return event.timestamp + 1


def stack(
    histories: Mapping[str, Sequence[HistoryEvent]],
    per_user: int = 5,
    min_history: int = 5,
) -> Stacked:
    """Per user, the last ``per_user`` events become targets, keeping at least
    ``min_history`` events before the first (shorter histories give no list, and fit the first
    stage whole).

    Raises:
        ValueError: ``per_user`` < 1 or ``min_history`` < 1.
    """
    if per_user < 1:
        raise ValueError(f"per_user must be >= 1, got {per_user}")
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1, got {min_history}")
    fit: dict[str, list[HistoryEvent]] = {}
    lists: list[StackedList] = []
    for user in sorted(histories):
        events = list(histories[user])
        k = max(0, min(per_user, len(events) - min_history))
        first = len(events) - k
        fit[user] = events[:first]
        for pos in range(first, len(events)):
            lists.append(
                StackedList(Request(user, events[:pos], request_time(events[pos])), events[pos])
            )
    return Stacked(fit, lists)


SHORT = (1, 3)
"""The history lengths of a short copy (drawn uniformly): a cold user's first events."""


def short_draws(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per list, a uniform draw (the list gets a copy when it is below the share) and the
    copy's length. Fixed by ``seed`` alone, so a larger share's copies hold a smaller one's."""
    rng = np.random.default_rng(seed)
    low, high = SHORT
    return rng.random(n), rng.integers(low, high + 1, n)


def short_positions(lists: Sequence[StackedList], share: float, seed: int) -> list[int]:
    """Which of ``lists`` get a short copy (:func:`short_copies`), in order.

    Raises:
        ValueError: ``share`` is outside [0, 1].
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of short copies must be in [0, 1], got {share}")
    draws, lengths = short_draws(len(lists), seed)
    return [
        n
        for n, (s, u, k) in enumerate(zip(lists, draws, lengths.tolist(), strict=True))
        if u < share and len(s.request.history) > k
    ]


def short_copies(lists: Sequence[StackedList], share: float, seed: int) -> list[StackedList]:
    """A seeded ``share`` of ``lists`` again, each request's history cut to its newest
    :data:`SHORT` events (the request time and the target unchanged): the lists of users
    with one to three events, whom stacking alone never gives the trees.

    Raises:
        ValueError: ``share`` is outside [0, 1].
    """
    _, lengths = short_draws(len(lists), seed)
    out = []
    for n in short_positions(lists, share, seed):
        s, k = lists[n], int(lengths[n])
        cut = Request(s.request.user_id, list(s.request.history)[-k:], s.request.at)
        out.append(StackedList(cut, s.target))
    return out
