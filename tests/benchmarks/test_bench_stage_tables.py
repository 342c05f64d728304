"""`bench stage-tables` measures the saved tables against the events form of the same log."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_stage_tables import EVENTS_PER_USER, _log, _one_size
from catalog.model import Item
from rerank.ranker.features import NEIGHBOURS


def test_one_size_weighs_both_forms_of_the_same_log(tmp_path: Path) -> None:
    items = {f"i{n}": Item(f"i{n}", f"item {n}", genres=("g",)) for n in range(60)}
    small = _one_size(items, 40, 0, tmp_path)
    large = _one_size(items, 400, 1, tmp_path)
    assert not list(tmp_path.iterdir())  # each size's files are removed
    for row, users in ((small, 40), (large, 400)):
        assert row["events"] == users * EVENTS_PER_USER
        assert row["events_form"]["log"] == row["events"] * 24
    # the events form grows with the users; the co-occurrence never holds more than its bound
    assert large["events_form"]["log"] == 10 * small["events_form"]["log"]
    assert large["cooccurrence_pairs"] <= 60 * min(NEIGHBOURS, 59)
    assert large["item_side"]["day_counts"] == small["item_side"]["day_counts"]


def test_the_synthetic_users_hold_distinct_items_in_time_order() -> None:
    log = _log(30, 100, 0)
    for history in log.values():
        assert len({e.item_id for e in history}) == EVENTS_PER_USER
        assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)
