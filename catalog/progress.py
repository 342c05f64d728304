"""Progress of long work, the same way in every command.

On a terminal a tqdm bar (count, rate, ETA); elsewhere (a log file, CI, cron) a plain log line
every ``every_s`` seconds, since a bar's carriage returns make one unreadable line there; and
one summary line at the end with the elapsed time and the counts the caller names.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("duorank.progress")


def duration(seconds: float) -> str:
    """``seconds`` for people: ``42.1 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """A long loop's progress; use as a context manager and call :meth:`update`.

    Args:
        what: what is being done, for people ("encoding items").
        total: how many units in all, when known (for the ETA).
        unit: the units' name ("items", "users").
        enabled: False: silent; None or True: on (a bar on a terminal, lines elsewhere).
        every_s: seconds between plain lines when not on a terminal.
        stream: where a bar goes (default: stderr); its ``isatty`` decides bar or lines.
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        *,
        enabled: bool | None = None,
        every_s: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.enabled = enabled is not False
        self.stream = stream or sys.stderr
        self.done = 0
        self.counts: dict[str, int] = {}
        """Events worth a number in the summary (``note("fallbacks")``)."""
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None
        if self.enabled and _is_tty(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=what, unit=f" {unit}", file=self.stream, dynamic_ncols=True
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the bar (a summary line is the caller's: :meth:`summary`)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            log.info("%s", self.line())

    def note(self, name: str, n: int = 1) -> None:
        """Counts ``n`` more of ``name`` for the summary."""
        self.counts[name] = self.counts.get(name, 0) + n

    def line(self) -> str:
        """Where the work stands: count, share, rate and ETA."""
        elapsed = max(self.elapsed, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}"
        if self.total:
            share = self.done / self.total
            text += f"/{self.total:,} {self.unit} ({share:.0%})"
            if rate > 0 and self.done < self.total:
                left = duration((self.total - self.done) / rate)
                text += f", {rate:,.1f} {self.unit}/s, about {left} left"
        else:
            text += f" {self.unit}, {rate:,.1f} {self.unit}/s"
        return text

    def summary(self, **counts: int | float | str) -> str:
        """One line for the end: the units done, the elapsed time, what :meth:`note` counted
        and ``counts``."""
        text = f"{self.what}: {self.done:,} {self.unit} in {duration(self.elapsed)}"
        counts = {**self.counts, **counts}
        if counts:
            text += (
                " ("
                + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in counts.items())
                + ")"
            )
        return text


def _fmt(value: int | float | str) -> str:
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.4g}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
