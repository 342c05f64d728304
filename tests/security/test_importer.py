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


# ---------------------------------------------------------------------------- Hardening 2


FIRST = '{"user_id": "u1", "item_id": "1", "timestamp": 5}\n'


def _table(folder: Path, events: str, name: str = "events.csv") -> tuple[Path, Path]:
    (folder / "items.csv").write_text("item_id,title\n1,A\n2,B\n")
    (folder / name).write_text(events)
    return folder / "items.csv", folder / name


def _import_table(items: Path, events: Path, out: Path, *extra: str) -> tuple[int, str]:
    args = ["data", "import", "table", "--items", str(items), "--interactions", str(events)]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), *extra])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("events.csv", "inf", "'inf'"),
        ("events.csv", "1e400", "'1e400'"),
        ("events.csv", "99999999999999999999999", "'99999999999999999999999'"),
        ("events.jsonl", "Infinity", "'inf'"),
        ("events.jsonl", "1e300", "'1e+300'"),
        ("events.jsonl", "-9223372036854775809", "'-9223372036854775809'"),
    ],
)
def test_an_infinite_or_overlong_timestamp_is_exit_2_with_its_place(
    tmp_path: Path, name: str, value: str, shown: str
) -> None:
    """Defect 5: never a traceback; file:line, column and value."""
    if name.endswith(".csv"):
        text = f"user_id,item_id,timestamp\nu1,1,5\nu1,2,{value}\n"
    else:
        text = FIRST + f'{{"user_id": "u1", "item_id": "2", "timestamp": {value}}}\n'
    code, output = _import_table(*_table(tmp_path, text, name), tmp_path / "out")
    assert code == EXIT_USAGE, output
    assert f"{name}:3: column 'timestamp' value {shown}" in output or (
        f"{name}:2: column 'timestamp' value {shown}" in output
    ), output
    assert "Traceback" not in output and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("events.csv", "user_id,item_id,timestamp\nu1,1,5\nu1,2,\n", 3),
        (
            "events.jsonl",
            '{"user_id":"u","item_id":"1","timestamp":5}\n{"user_id":"u","item_id":"2","timestamp":NaN}\n',
            2,
        ),
        (
            "events.jsonl",
            '{"user_id":"u","item_id":"1","timestamp":5}\n{"user_id":"u","item_id":"2","timestamp":null}\n',
            2,
        ),
        (
            "events.jsonl",
            '{"user_id":"u","item_id":"1","timestamp":5}\n{"user_id":"u","item_id":"2"}\n',
            2,
        ),
    ],
)
def test_a_missing_timestamp_is_an_error_or_a_counted_skip(
    tmp_path: Path, name: str, text: str, line: int
) -> None:
    """Defect 6: never the row's line number as its time."""
    items, events = _table(tmp_path, text, name)
    code, output = _import_table(items, events, tmp_path / "out")
    assert code == EXIT_USAGE and f"{name}:{line}: column 'timestamp'" in output, output
    assert "time is missing" in output
    catalog = load_table(items, events, skip_bad=True)
    assert catalog.interactions.timestamps.tolist() == [5]
    assert catalog.stats[f"skipped_rows[{name}]"] == 1


def test_a_table_without_a_time_column_keeps_file_order(tmp_path: Path) -> None:
    items, events = _table(tmp_path, "user_id,item_id\nu1,2\nu1,1\n")
    catalog = load_table(items, events)
    assert catalog.interactions.item_ids.tolist() == ["2", "1"]
    assert catalog.interactions.timestamps.tolist() == [2, 3]


@pytest.mark.parametrize("rating", ["1e300", "99", "-5", "5.5", "inf"])
def test_a_rating_off_the_star_scale_is_refused(tmp_path: Path, rating: str) -> None:
    """Defect 17: nothing stored as float32 inf, nothing silently off the 0-5 scale."""
    text = f"user_id,item_id,timestamp,rating\nu1,1,5,4\nu1,2,6,{rating}\n"
    items, events = _table(tmp_path, text)
    code, output = _import_table(items, events, tmp_path / "out")
    assert code == EXIT_USAGE and f"events.csv:3: column 'rating' value '{rating}'" in output
    assert "star scale" in output or "finite" in output, output
    assert load_table(items, events, skip_bad=True).interactions.ratings.tolist() == [4.0]


def test_movielens_ratings_and_times_are_bounded_too(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "ml", n_ratings=10)
    with (folder / "ratings.csv").open("a") as handle:
        handle.write("1,1,7.0,1000\n")
    with pytest.raises(DataError, match=r"ratings\.csv:12: column 'rating' value '7\.0'"):
        load_movielens(folder)
    folder = _movielens(tmp_path / "ml2", n_ratings=10)
    with (folder / "ratings.csv").open("a") as handle:
        handle.write("1,1,4.0,99999999999999999999999\n")
    with pytest.raises(DataError, match=r"ratings\.csv:12: column 'timestamp'.*out of range"):
        load_movielens(folder)
