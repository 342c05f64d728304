"""A serving process's view of the live events stream: every user's accepted events since a
mark, as columns, read a little at a time.

Each worker tails the stream itself (workers share nothing but Redis), at most once per
``poll_s`` seconds on the call path, and at once after an ingestion of its own: an event is in
every worker's item counts within ``poll_s`` of its acceptance, and in the accepting worker's
next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

import numpy as np
import numpy.typing as npt

from online.users import StreamEntry, UserStore, stream_order

POLL_S = 0.05
"""Seconds between two reads of the stream on the call path (an event reaches every worker's
counts within this)."""
PAGE = 10_000
"""Entries read per round trip."""


class EventTail:
    """The stream's entries after ``start``, held as columns in order of arrival.

    Args:
        store: the online user store whose stream this reads.
        start: the stream id to read after (``0-0``: from the start).
        poll_s: the least seconds between two reads on the call path.
    """

    def __init__(
        self,
        store: UserStore,
        start: str = "0-0",
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self._clock = clock
        self._lock = threading.Lock()
        self.generation = 0
        """Changes whenever the entries held do (a cache key)."""
        self.epoch = 0
        """Changes whenever entries held are dropped (a restart, a new start): between two
        changes the entries only grow at the end, so a reader may take just the new ones."""
        self.restart(start)

    def restart(self, start: str) -> None:
        """Forgets what was read and reads after ``start`` from the next poll."""
        with self._lock:
            self.start = self.last = start
            self.entries: list[StreamEntry] = []
            self.released = 0
            """Entries dropped from the front once their reader took them (:meth:`release`):
            positions stay those of every entry read since the start."""
            self.newest: int | None = None
            """The latest event time read (None before any)."""
            self._polled = -float("inf")
            self.generation += 1
            self.epoch += 1

    def move_start(self, start: str) -> None:
        """Serves from ``start`` on: a later one forgets what came up to it (a new build's
        tables hold those events), an earlier one reads again from it (a rollback)."""
        if stream_order(start) < stream_order(self.start) or self.released:
            self.restart(start)  # entries it needs were dropped or never read: read again
            return
        with self._lock:
            bound = stream_order(start)
            self.entries = [e for e in self.entries if stream_order(e.stream_id) > bound]
            self.start = start
            if stream_order(self.last) < bound:
                self.last = start
            self.generation += 1
            self.epoch += 1

    @property
    def count(self) -> int:
        """Entries read since the start (held or released)."""
        return self.released + len(self.entries)

    @property
    def held(self) -> int:
        """Entries held (read and not released)."""
        return len(self.entries)

    def release(self, upto: int) -> None:
        """Drops the entries before position ``upto``: their reader has taken them (as item
        counts), so a worker holds only what it has not taken yet, not every event since the
        fold. A reader that needs them again (another version) reads the stream again
        (:meth:`move_start`, :meth:`restart`)."""
        with self._lock:
            drop = min(upto, self.count) - self.released
            if drop > 0:
                del self.entries[:drop]
                self.released += drop

    def poll(self, force: bool = False) -> int:
        """Reads the entries that arrived since the last read, unless one ran within
        ``poll_s`` (``force``: read now); returns how many arrived.

        Raises:
            redis.RedisError: the store does not answer (nothing read is lost).
        """
        with self._lock:
            now = self._clock()
            if not force and now - self._polled < self.poll_s:
                return 0
            new: list[StreamEntry] = []
            while True:
                page = self.store.events_since(self.last, PAGE)
                new += page
                if page:
                    self.last = page[-1].stream_id
                if len(page) < PAGE:
                    break
            self.entries += new
            if new:
                latest = max(e.event.timestamp for e in new)
                self.newest = latest if self.newest is None else max(self.newest, latest)
                self.generation += 1
            self._polled = now
            return len(new)

    def after(
        self, mark: str, late: Collection[str] = (), first: int = 0
    ) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64], int]:
        """The item ids, times and ratings (NaN: none) of the entries from position ``first``
        on that come after ``mark``, except the ``late`` ones (the events a log folded at
        ``mark`` does not hold), and the position to read from next time (within one
        :attr:`epoch`)."""
        bound = stream_order(mark)
        with self._lock:
            if first < self.released:
                raise ValueError(
                    f"entries from position {first} were released (up to {self.released}): "
                    "restart the tail to read them again"
                )
            upto = self.count
            kept = [
                e
                for e in self.entries[first - self.released :]
                if stream_order(e.stream_id) > bound and e.stream_id not in late
            ]
        return (
            [e.event.item_id for e in kept],
            np.array([e.event.timestamp for e in kept], dtype=np.int64),
            np.array(
                [np.nan if e.event.rating is None else e.event.rating for e in kept],
                dtype=np.float64,
            ),
            upto,
        )
