"""Progress of long work: a bar on a terminal, plain log lines elsewhere, one summary."""

from __future__ import annotations

import io
import logging

import pytest

from catalog.progress import Progress, duration


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_read_like_people_write_them() -> None:
    assert [duration(s) for s in (4.23, 65, 3725)] == ["4.2 s", "1 min 05 s", "1 h 02 min"]


def test_off_a_terminal_it_logs_count_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    at_info = caplog.at_level(logging.INFO, logger="duorank.progress")
    with at_info, Progress("encoding items", 400, "items", every_s=0.0, stream=stream) as bar:
        for _ in range(4):
            bar.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("encoding items: 100/400 items (25%), ")
    assert "items/s, about " in lines[0] and lines[0].endswith(" left")
    assert lines[-1].startswith("encoding items: 400/400 items (100%)")
    assert stream.getvalue() == ""  # no bar, no carriage returns in a log


def test_on_a_terminal_it_draws_a_bar(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    at_info = caplog.at_level(logging.INFO, logger="duorank.progress")
    with at_info, Progress("recommending", 3, "users", every_s=0.0, stream=stream) as bar:
        bar.update(3)
    assert "recommending" in stream.getvalue() and "3/3" in stream.getvalue()
    assert not caplog.records


def test_the_summary_names_elapsed_time_and_counts() -> None:
    with Progress("recommending", 2, "users", enabled=False) as bar:
        bar.update(2)
        bar.note("fallbacks")
    line = bar.summary(rows=20)
    assert line.startswith("recommending: 2 users in ") and line.endswith("(fallbacks 1, rows 20)")
