"""MovieLens loaders: each public layout, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import DataError, load_movielens
from catalog.movielens import detect_layout


def test_csv_layout(ml_csv: Path) -> None:
    catalog = load_movielens(ml_csv)
    assert catalog.summary() == {"users": 2, "items": 3, "interactions": 4}
    toy = catalog.items["1"]
    assert toy.genres == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert toy.tags == ("pixar", "fun")  # case-folded duplicates merged, most frequent first
    assert catalog.items["2"].title == "American President, The (1995)"
    assert catalog.items["3"].genres == ()
    assert catalog.interactions.ratings.tolist() == [4.0, 3.5, 5.0, 1.0]
    assert catalog.source["layout"] == "csv"


def test_100k_layout_decodes_latin1_and_genre_flags(ml_100k: Path) -> None:
    catalog = load_movielens(ml_100k)
    assert catalog.summary() == {"users": 2, "items": 2, "interactions": 3}
    assert catalog.items["1"].genres == ("Animation", "Children's", "Comedy")
    assert catalog.items["2"].title == "Señor Café (1996)"
    assert catalog.users["1"].attributes["occupation"] == "technician"
    assert catalog.interactions.timestamps[0] == 874965758


def test_1m_layout_maps_codes(ml_1m: Path) -> None:
    catalog = load_movielens(ml_1m)
    assert catalog.summary() == {"users": 2, "items": 2, "interactions": 3}
    assert catalog.items["2"].title == "Amélie (2001)"
    assert catalog.users["1"].attributes == {
        "gender": "F",
        "age": "under 18",
        "occupation": "K-12 student",
        "zip": "48067",
    }
    assert catalog.users["2"].attributes["occupation"] == "self-employed"


def test_detect_layout_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a MovieLens folder"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        detect_layout(tmp_path / "missing")


def test_malformed_row_names_file_line_and_column(ml_csv: Path) -> None:
    ratings = ml_csv / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,abc,200\n")
    with pytest.raises(DataError) as info:
        load_movielens(ml_csv)
    message = str(info.value)
    assert f"{ratings}:3" in message and "'rating'" in message and "'abc'" in message


def test_skip_bad_counts_rows(ml_csv: Path) -> None:
    (ml_csv / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,abc,200\n2,1,5.0\n2,3,1.0,160\n"
    )
    catalog = load_movielens(ml_csv, skip_bad=True)
    assert len(catalog.interactions) == 2
    assert catalog.stats["skipped_rows"] == 2
    assert catalog.stats["skipped_rows[ratings.csv]"] == 2


def test_wrong_field_count_in_dat_file(ml_1m: Path) -> None:
    (ml_1m / "ratings.dat").write_text("1::1::5::978300760\n1::2\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected"):
        load_movielens(ml_1m)


def test_unknown_item_ids_are_counted_not_silently_dropped(ml_csv: Path) -> None:
    (ml_csv / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,999,4.0,200\n"
    )
    catalog = load_movielens(ml_csv)
    assert len(catalog.interactions) == 1
    assert catalog.stats["unknown_item_interactions"] == 1


def test_empty_and_missing_files(ml_csv: Path) -> None:
    (ml_csv / "ratings.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_movielens(ml_csv)
    (ml_csv / "ratings.csv").unlink()
    with pytest.raises(DataError, match="file not found"):
        load_movielens(ml_csv)


def test_duplicate_movie_id(ml_csv: Path) -> None:
    with (ml_csv / "movies.csv").open("a") as handle:
        handle.write("1,Toy Story again,Comedy\n")
    with pytest.raises(DataError, match=r"movies\.csv:5: column 'movieId' value '1': duplicate"):
        load_movielens(ml_csv)


def test_bundled_copy_matches_the_published_counts() -> None:
    root = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"
    catalog = load_movielens(root)
    assert catalog.summary() == {"users": 610, "items": 9742, "interactions": 100836}
    assert (root / "README.txt").exists()
    assert np.isfinite(catalog.interactions.ratings).all()
