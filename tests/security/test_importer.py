"""The importer against careless files (case 7 and the empty ratings file of case 8): a bad
byte is charged to its own line and can be skipped; a file with nothing to import is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import DataError, load_movielens, load_table
from duorank.cli import EXIT_USAGE, cli

N_RATINGS = 4000  # well past the 8 KiB a text-mode file decodes at once


def _movielens(folder: Path, *, n_ratings: int = N_RATINGS) -> Path:
    folder.mkdir()
    movies = ["movieId,title,genres"] + [f"{i},Film {i} (2000),Drama" for i in range(1, 201)]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"{1 + n % 50},{1 + n % 200},4.0,{1_000_000 + n}" for n in range(n_ratings)
    ]
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return folder


def _corrupt_line(path: Path, line: int) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"Film", b"F\xffilm").replace(b",4.0,", b",4\xff,")
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(("name", "line"), [("movies.csv", 5), ("ratings.csv", 3002)])
def test_a_bad_byte_names_its_own_line(tmp_path: Path, name: str, line: int) -> None:
    folder = _movielens(tmp_path / "ml")
    _corrupt_line(folder / name, line)
    with pytest.raises(DataError) as caught:
        load_movielens(folder)
    assert f"{name}:{line}:" in str(caught.value)
    assert "cannot decode as utf-8" in str(caught.value) and "0xff" in str(caught.value)


def test_skip_bad_skips_and_counts_undecodable_lines(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "ml")
    _corrupt_line(folder / "movies.csv", 5)
    _corrupt_line(folder / "ratings.csv", 3002)
    catalog = load_movielens(folder, skip_bad=True)
    assert "4" not in catalog.items and len(catalog.items) == 199  # movieId 4 is on line 5
    assert catalog.stats["skipped_rows[movies.csv]"] == 1
    assert catalog.stats["skipped_rows[ratings.csv]"] == 1
    # the 20 ratings of movie 4 are excluded as unknown, the bad line as skipped
    assert len(catalog.interactions) == N_RATINGS - 1 - 20


def test_a_bad_byte_in_a_jsonl_table_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title\nA,Lamp\nB,Desk\n")
    lines = [b'{"user_id": "u", "item_id": "A", "timestamp": %d}' % n for n in range(3000)]
    lines[2500] = b'{"user_id": "\xff", "item_id": "A", "timestamp": 1}'
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"events\.jsonl:2501: cannot decode"):
        load_table(tmp_path / "items.csv", tmp_path / "events.jsonl")
    skipped = load_table(tmp_path / "items.csv", tmp_path / "events.jsonl", skip_bad=True)
    assert len(skipped.interactions) == 2999


def test_an_undecodable_header_is_an_error_even_with_skip_bad(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "ml")
    data = (folder / "ratings.csv").read_bytes()
    (folder / "ratings.csv").write_bytes(b"user\xffId" + data[len(b"userId") :])
    with pytest.raises(DataError, match=r"ratings\.csv:1: header row: cannot decode"):
        load_movielens(folder, skip_bad=True)


def test_a_header_only_ratings_file_is_an_error(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "ml", n_ratings=0)
    result = CliRunner().invoke(
        cli, ["data", "import", "movielens", str(folder), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert "ratings.csv: no interactions to import: the file has no data rows" in result.output
    assert not (tmp_path / "out").exists()


def test_all_rows_skipped_or_unknown_is_an_error(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "ml", n_ratings=3)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,999,4,1\n2,998,4,2\n")
    with pytest.raises(DataError, match="all 2 parsed rows name item ids missing"):
        load_movielens(folder)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,x,4,1\n")
    with pytest.raises(DataError, match=r"every row was skipped as bad \(1\)"):
        load_movielens(folder, skip_bad=True)
