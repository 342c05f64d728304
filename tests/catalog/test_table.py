"""The generic CSV/JSONL/Parquet loader."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import ColumnMapping, DataError, load_table


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("sku,name,cats,brand\nA,Lamp,home|light,Acme\nB,Desk,home,\n")
    inter = tmp_path / "events.csv"
    inter.write_text("uid,sku,ts,kind\nu1,A,2024-01-02T03:04:05Z,click\nu1,B,1700000000,view\n")
    mapping = ColumnMapping.from_pairs(
        ["item_id=sku", "title=name", "genres=cats", "user_id=uid", "timestamp=ts", "event=kind"]
    )
    catalog = load_table(items, inter, mapping=mapping)
    assert catalog.summary() == {"users": 1, "items": 2, "interactions": 2}
    assert catalog.items["A"].genres == ("home", "light")
    assert catalog.items["A"].attributes == {"brand": "Acme"}
    assert catalog.interactions.timestamps.tolist() == [1704164645, 1700000000]
    assert catalog.interactions.events.tolist() == ["click", "view"]


def test_jsonl_and_parquet(tmp_path: Path) -> None:
    items = _write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"item_id": 1, "title": "One", "tags": ["x", "y"], "description": "First."},
            {"item_id": 2, "title": "Two"},
        ],
    )
    users = _write_jsonl(tmp_path / "users.jsonl", [{"user_id": "u9", "age": 30}])
    inter = tmp_path / "inter.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u9", "u8"],
                "item_id": ["1", "2"],
                "timestamp": [5, 6],
                "rating": [4.5, None],
                "label": [1, 0],
            }
        ),
        inter,
    )
    catalog = load_table(items, inter, users)
    assert catalog.items["1"].tags == ("x", "y")
    assert catalog.users["u9"].attributes == {"age": "30"}
    assert set(catalog.users) == {"u9", "u8"}
    assert catalog.interactions.labels.tolist() == [1, 0]
    assert catalog.interactions.row(1).rating is None


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\nA,x\nB,y\nA,z\n")
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\nu,A,1\n")
    with pytest.raises(
        DataError,
        match=r"items.csv:4: column 'item_id' value 'A': duplicate item "
        r"id \(first seen on line 2\)",
    ):
        load_table(items, inter)
    assert load_table(items, inter, duplicates="last").items["A"].title == "z"


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\nA,x\n")
    inter = tmp_path / "inter.jsonl"
    _write_jsonl(inter, [{"user_id": "u", "item_id": "A", "timestamp": "yesterday"}])
    with pytest.raises(DataError, match=r"inter.jsonl:1: column 'timestamp' value 'yesterday'"):
        load_table(items, inter)
    inter.write_text(
        '{"user_id": "u", "item_id": "A", "label": 3}\nnot json\n'
        '{"user_id": "u", "item_id": "A", "timestamp": 5}\n'
    )
    with pytest.raises(DataError, match="label must be 0 or 1"):
        load_table(items, inter)
    catalog = load_table(items, inter, skip_bad=True)
    assert catalog.stats["skipped_rows"] == 2 and len(catalog.interactions) == 1


def test_unsupported_type_and_bad_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "items.xlsx"
    bad.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(bad, bad)
    with pytest.raises(DataError, match="unknown field"):
        ColumnMapping.from_pairs(["colour=c"])
    with pytest.raises(DataError, match="FIELD=COLUMN"):
        ColumnMapping.from_pairs(["title"])
