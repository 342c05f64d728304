"""The dataset folder: round trip, manifest, checksums, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import DataError, load_catalog, load_movielens, save_catalog


def test_round_trip_and_manifest(ml_csv: Path, tmp_path: Path) -> None:
    catalog = load_movielens(ml_csv)
    out = tmp_path / "ds"
    manifest = save_catalog(catalog, out)
    assert (manifest["users"], manifest["items"], manifest["interactions"]) == (2, 3, 4)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert set(on_disk["files"]) == {
        "items.parquet",
        "users.parquet",
        "interactions.parquet",
        "tags.parquet",  # the fixture's tags.csv dates its tags
    }
    again = load_catalog(out)
    assert again.items == catalog.items
    assert again.users == catalog.users
    assert again.interactions == catalog.interactions


def test_corrupt_file_is_named(ml_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    save_catalog(load_movielens(ml_csv), out)
    with (out / "users.parquet").open("ab") as handle:
        handle.write(b"junk")
    with pytest.raises(DataError, match=r"users\.parquet: sha256 does not match"):
        load_catalog(out)


def test_failed_write_keeps_the_old_dataset(ml_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    save_catalog(load_movielens(ml_csv), out)
    before = (out / "manifest.json").read_text()
    broken = load_movielens(ml_csv)
    broken.items["1"] = object()  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        save_catalog(broken, out)
    assert (out / "manifest.json").read_text() == before
    assert load_catalog(out).summary()["items"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_folder_or_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_catalog(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no manifest\.json"):
        load_catalog(tmp_path)
