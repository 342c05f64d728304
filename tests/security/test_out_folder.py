"""Hardening 2, defects 1, 10 and 11: an output folder is replaced only when it is new, empty
or made by the same kind of command; never the working folder, a folder above it or one that
holds the inputs; a killed writer's leftovers are swept by the next run; a `--users` file is
read line by line on ``\\n`` with its errors located, and an empty one replaces nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import save_catalog
from catalog.errors import DataError
from catalog.fsutil import DATASET, RECOMMENDATIONS, atomic_dir, check_replaceable
from duorank.batch import user_ids, write_parquet
from duorank.cli import EXIT_USAGE, cli
from tests.conftest import REPO, tiny_catalog


def _table_inputs(folder: Path) -> tuple[Path, Path]:
    (folder / "items.csv").write_text("item_id,title\n1,A\n")
    (folder / "ev.csv").write_text("user_id,item_id,timestamp\nu1,1,5\n")
    return folder / "items.csv", folder / "ev.csv"


def _import(out: str, items: Path, events: Path) -> object:
    args = ["data", "import", "table", "--items", str(items), "--interactions", str(events)]
    return CliRunner().invoke(cli, [*args, "--out", out])


def test_out_dot_is_refused_and_the_working_folder_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    items, events = _table_inputs(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    result = _import(".", items, events)
    assert result.exit_code == EXIT_USAGE  # type: ignore[attr-defined]
    assert "working folder" in result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.csv", "items.csv", "notes.txt"]


def test_a_folder_above_the_working_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    items, events = _table_inputs(inner)
    assert _import(str(tmp_path / "a"), items, events).exit_code == EXIT_USAGE  # type: ignore[attr-defined]
    assert items.is_file() and events.is_file()


def test_the_inputs_folder_is_refused_even_when_it_is_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "data"
    save_catalog(tiny_catalog(), out)  # type: ignore[arg-type]
    items, events = _table_inputs(out)  # inputs kept inside an earlier dataset folder
    result = _import(str(out), items, events)
    assert result.exit_code == EXIT_USAGE  # type: ignore[attr-defined]
    assert "holds an input" in result.output  # type: ignore[attr-defined]
    assert items.is_file() and (out / "manifest.json").is_file()


def test_movielens_import_over_its_own_source_folder_keeps_the_licence(tmp_path: Path) -> None:
    source = tmp_path / "ml"
    source.mkdir()
    for name in ("movies.csv", "ratings.csv", "README.txt"):
        (source / name).write_bytes((REPO / "data" / "ml-latest-small" / name).read_bytes()[:4000])
    (source / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    args = ["data", "import", "movielens", str(source), "--out", str(source)]
    assert CliRunner().invoke(cli, args).exit_code == EXIT_USAGE
    assert (source / "README.txt").is_file()


def test_a_foreign_folder_is_refused_and_an_empty_or_own_one_replaced(tmp_path: Path) -> None:
    items, events = _table_inputs(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    result = _import(str(foreign), items, events)
    assert result.exit_code == EXIT_USAGE and "not a duorank dataset" in result.output  # type: ignore[attr-defined]
    assert (foreign / "cat.jpg").read_bytes() == b"\xff\xd8"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _import(str(empty), items, events).exit_code == 0  # type: ignore[attr-defined]
    assert _import(str(empty), items, events).exit_code == 0  # its own dataset: replaced
    assert json.loads((empty / "manifest.json").read_text())["format"] == DATASET.value


def test_a_file_and_another_commands_output_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        check_replaceable(tmp_path / "file", DATASET)
    recs = tmp_path / "recs"
    write_parquet([], recs, {"format": RECOMMENDATIONS.value})
    with pytest.raises(DataError, match="not a duorank dataset"):
        check_replaceable(recs, DATASET)


def test_a_killed_writers_staging_folder_is_swept_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "recs"
    write_parquet([], out, {"format": RECOMMENDATIONS.value, "night": 1})
    killed = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from catalog.fsutil import RECOMMENDATIONS, atomic_dir\n"
        "with atomic_dir(Path(sys.argv[1]), RECOMMENDATIONS) as staging:\n"
        "    (staging / 'recommendations.parquet').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed, str(out)], cwd=REPO, check=False)
    assert done.returncode == -9
    assert [p.name for p in tmp_path.glob(".recs.staging-*")], "the kill left no staging folder"
    assert json.loads((out / "manifest.json").read_text())["night"] == 1  # old output survives
    write_parquet([], out, {"format": RECOMMENDATIONS.value, "night": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs"]
    assert json.loads((out / "manifest.json").read_text())["night"] == 2


def test_a_live_writers_staging_folder_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "recs"
    with atomic_dir(out, RECOMMENDATIONS) as outer:
        (outer / "manifest.json").write_text(json.dumps({"format": RECOMMENDATIONS.value}))
        write_parquet([], tmp_path / "recs", {"format": RECOMMENDATIONS.value})
        assert outer.is_dir()  # this process's own staging folder is never swept
    assert (out / "manifest.json").is_file()


# ---------------------------------------------------------------------------- --users files

KNOWN = ["a", "b", "c", "d\u2028e"]


def test_users_file_splits_on_newlines_only_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\nb\n\nd\xe2\x80\xa8e\na\n")
    assert user_ids(path, KNOWN) == ["a", "b", "d\u2028e"]


def test_users_file_errors_name_their_line_and_are_short(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(b"a\n\x0cb\nc\xff\n")
    with pytest.raises(DataError, match=r"users\.txt:3: cannot decode as UTF-8 \(byte 0xff"):
        user_ids(path, KNOWN)
    path.write_bytes(b"a\n" + b"z" * 10_000_000 + b"\n")
    with pytest.raises(DataError) as caught:
        user_ids(path, KNOWN)
    assert "users.txt:2:" in str(caught.value) and len(str(caught.value)) < 400


def test_an_empty_users_file_keeps_yesterdays_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_catalog(tiny_catalog(), data)  # type: ignore[arg-type]
    out = tmp_path / "recs"
    write_parquet([], out, {"format": RECOMMENDATIONS.value, "night": "yesterday"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "users.txt").write_text("\n\n")
    args = ["recommend-all", "--data", str(data), "--root", str(tmp_path / "index")]
    result = CliRunner().invoke(
        cli, [*args, "--users", str(tmp_path / "users.txt"), "--out", str(out)]
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert "no user ids" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_recommend_all_refuses_the_dataset_folder_before_any_work(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_catalog(tiny_catalog(), data)  # type: ignore[arg-type]
    before = sorted(os.listdir(data))
    args = ["recommend-all", "--data", str(data), "--root", str(tmp_path / "index")]
    result = CliRunner().invoke(cli, [*args, "--out", str(data)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert sorted(os.listdir(data)) == before
