"""`duorank eval --protocol sasrec`: the SASRec/BERT4Rec papers' MovieLens-1M, prepared from
the ML-1M files as their script prepared it, holds out the events they held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluation.literature import file_order_ties, prepare
from catalog import Interactions, leave_one_out, load_movielens


def _ml_1m(root: Path) -> Path:
    """An ML-1M-layout folder: items 1-5 rated by users 1-5, item 6 rated 3 times and user 6
    with 4 ratings (both dropped), ties in time written in a known file order."""
    root.mkdir()
    (root / "movies.dat").write_bytes(
        "".join(f"{i}::Movie {i} (199{i})::Drama\n" for i in range(1, 7)).encode("latin-1")
    )
    (root / "users.dat").write_text(
        "".join(f"{u}::F::25::{u}::0000{u}\n" for u in range(1, 7)), encoding="latin-1"
    )
    lines = ["1::6::3::50"]
    # user 1: the last two at the same second, 5 before 4 in the file
    lines += ["1::1::5::100", "1::2::4::200", "1::3::3::300", "1::5::5::400", "1::4::2::400"]
    lines += ["2::6::2::999"] + [f"2::{i}::4::{1000 + i}" for i in range(1, 6)]
    # user 3: three ties at the end, in the file's order 5, 2, 3
    lines += ["3::1::3::50", "3::4::3::60", "3::5::1::80", "3::2::5::80", "3::3::4::80"]
    lines += [f"{u}::{i}::4::{2000 + i}" for u in (4, 5) for i in range(1, 6)]
    lines += ["6::1::5::10", "6::2::5::20", "6::3::5::30", "6::6::5::40"]
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return root


def test_the_sasrec_protocol_holds_out_the_papers_events(tmp_path: Path) -> None:
    catalog = load_movielens(_ml_1m(tmp_path / "ml-1m"))
    prepared, done = prepare(catalog, "sasrec")
    # one pass over the raw counts: user 6 (4 ratings) and item 6 (3 ratings) go
    assert "6" in catalog.users and "6" in catalog.items
    assert "6" not in prepared.items and "6" not in prepared.users
    assert set(prepared.interactions.user_ids.tolist()) == {"1", "2", "3", "4", "5"}
    assert done["dropped_events"] == 4 + 2  # user 6's, and item 6's by users 1 and 2
    assert done["kept"] == {"users": 5, "items": 5, "events": 25}
    for seed in (0, 1, 7):  # no tie is left for a seed to break
        split = leave_one_out(prepared.interactions, seed=seed)
        test = dict(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True))
        val = dict(
            zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
        )
        # user 1's tie at 400 keeps the file's order (5, then 4); user 3's (5, 2, then 3)
        assert test == {"1": "4", "2": "5", "3": "3", "4": "5", "5": "5"}
        assert val == {"1": "5", "2": "4", "3": "2", "4": "4", "5": "4"}
    # duorank's own protocol leaves the dataset as imported
    same, plain = prepare(catalog, "duorank")
    assert len(same.interactions) == len(catalog.interactions) and "dropped_events" not in plain
    with pytest.raises(ValueError, match="unknown protocol 'bert'; choose from duorank, sasrec"):
        prepare(catalog, "bert")


def test_ties_become_strict_in_file_order_and_only_ties_move() -> None:
    events = Interactions(
        ["a", "a", "a", "a", "b", "b"],
        ["1", "2", "3", "4", "1", "2"],
        [10, 10, 10, 11, 5, 7],
    )
    strict, moved = file_order_ties(events)
    assert strict.timestamps.tolist() == [10, 11, 12, 13, 5, 7]  # the shift carries on to 11
    assert moved == 3
    np.testing.assert_array_equal(strict.item_ids, events.item_ids)
