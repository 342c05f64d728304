"""One build at a time per index root: an advisory ``flock`` on ``ROOT/.lock``.

The lock dies with its process (a SIGKILLed build never leaves a stale lock), and the file holds
the holder's pid, host and start time so a second build can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType


class LockHeldError(RuntimeError):
    """Another process holds the build lock; the message names it."""


class BuildLock:
    """Exclusive lock for one index root.

    Args:
        root: the index root.
        wait: block until the lock is free (up to ``timeout`` seconds) instead of failing.
        timeout: seconds to wait; None waits forever.
    """

    def __init__(self, root: Path, *, wait: bool = False, timeout: float | None = None) -> None:
        self.path = root / ".lock"
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as recorded in the lock file (best effort)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return "unknown process"
        return (
            f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
            if info
            else "unknown process"
        )

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            LockHeldError: not waiting (or the wait timed out) and another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = self.holder()
                    os.close(fd)
                    raise LockHeldError(f"another build holds {self.path}: {holder}") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
