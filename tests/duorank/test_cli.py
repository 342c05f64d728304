"""The command line: import, info, bench and the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from duorank.cli import EXIT_USAGE, cli
from duorank.settings import Settings


def test_import_movielens_prints_and_records_counts(
    bundled_movielens: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli, ["data", "import", "movielens", str(bundled_movielens), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["users"], summary["items"], summary["interactions"]) == (610, 9742, 100836)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["users"], manifest["items"], manifest["interactions"]) == (610, 9742, 100836)
    info = CliRunner().invoke(cli, ["data", "info", str(out)])
    assert "  items                       9,742" in info.output
    assert "1996-03-29 18:36 UTC to 2018-09-24 14:27 UTC" in info.output
    assert "100,836 from 0.5 to 5 (10 distinct values" in info.output
    raw = json.loads(CliRunner().invoke(cli, ["data", "info", str(out), "--json"]).output)
    assert raw["manifest"]["items"] == 9742 and raw["summary"]["rating_max"] == 5.0


def test_import_table_with_mapping(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text("sku,name\nA,Lamp\n")
    (tmp_path / "e.csv").write_text("uid,sku,ts\nu,A,1\n")
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "import",
            "table",
            "--items",
            str(tmp_path / "i.csv"),
            "--interactions",
            str(tmp_path / "e.csv"),
            "--map",
            "item_id=sku",
            "--map",
            "title=name",
            "--map",
            "user_id=uid",
            "--map",
            "timestamp=ts",
            "--out",
            str(tmp_path / "ds"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "interactions" in result.output


def test_bad_input_exits_2_with_a_named_location(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    root.mkdir()
    (root / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\nx,1,4,1\n")
    result = CliRunner().invoke(
        cli, ["data", "import", "movielens", str(root), "--out", str(tmp_path / "ds")]
    )
    assert result.exit_code == EXIT_USAGE
    assert "ratings.csv:2: column 'userId' value 'x'" in result.output
    assert not (tmp_path / "ds").exists()


def test_unknown_benchmark_lists_the_known_ones() -> None:
    result = CliRunner().invoke(cli, ["bench", "nope"])
    assert result.exit_code == EXIT_USAGE
    assert "metrics" in result.output


def test_bench_help_names_every_registered_suite() -> None:
    from benchmarks.registry import BENCHMARKS

    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    text = "".join(result.output.split())  # the wrapping may break a name at its hyphen
    assert all(name in text for name in BENCHMARKS), text


def test_bench_writes_the_contract_json(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = CliRunner().invoke(cli, ["bench", "metrics", "--quick", "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert {"machine", "date", "commit", "params", "results", "targets"} <= set(record)
    assert record["machine"]["cores"] >= 1
    assert all({"name", "measured", "target", "met"} <= set(t) for t in record["targets"])


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("duorank")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "data" in result.stdout and "bench" in result.stdout


def test_settings_from_env_and_secret_masking() -> None:
    env = {
        "DUORANK_REDIS_URL": "redis://user:pw@host:6379/0",
        "DUORANK_API_TOKEN": "s3cret",
        "DUORANK_HOME": "/x",
    }
    settings = Settings.from_env(env, home="/y")
    assert settings.home == Path("/y")
    assert "s3cret" not in repr(settings)
    public = settings.public()
    assert public["api_token"] == "***" and "pw" not in public["redis_url"]


def test_debug_logging_shows_the_settings_masked(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DUORANK_REDIS_URL": "redis://user:pw@127.0.0.1:1/0",
        "DUORANK_API_TOKEN": "s3cret",
        "DUORANK_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "duorank",
            "--log-level",
            "debug",
            "index",
            "list",
            "--root",
            str(tmp_path / "none"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "settings: {" in done.stderr and "redis://***@127.0.0.1:1/0" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout and ":pw@" not in done.stderr


def test_tower_index_and_recommend_end_to_end(tmp_path: Path, redis_url: str) -> None:
    """train tower -> index build --tower -> recommend (the tower serves), then a version
    without a tower served with --text-users (users embedded from text through Redis)."""
    from catalog import save_catalog
    from tests.conftest import tiny_catalog

    save_catalog(tiny_catalog(n_items=30, n_users=10, per_user=8), tmp_path / "data")  # type: ignore[arg-type]
    base = ["--home", str(tmp_path / "home"), "--redis-url", redis_url]
    data, root, tower = str(tmp_path / "data"), str(tmp_path / "index"), str(tmp_path / "tower")
    runner = CliRunner()
    result = runner.invoke(
        cli, [*base, "train", "tower", "--data", data, "--out", tower, "--quick"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tower" / "duorank-card.json").read_text())["blend"]
    build = [*base, "index", "build", "--data", data, "--root", root, "--json"]
    result = runner.invoke(cli, [*build, "--tower", tower])
    assert result.exit_code == 0, result.output
    recommend = [*base, "recommend", "--user", "u1", "-k", "3", "--data", data, "--root", root]
    result = runner.invoke(cli, [*recommend, "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(first["items"]) == 3 and first["fallback"] is None

    # the ranking stage over the tower's candidates and three other sources
    ranker = str(tmp_path / "ranker")
    train = [*base, "train", "ranker", "--data", data, "--tower", tower, "--out", ranker]
    result = runner.invoke(cli, [*train, "--quick", "--per-user", "3", "--min-history", "2"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "ranker" / "ranker.json").read_text())
    served = card["record"]["choice"]["served"]
    assert f"serves the {served.replace('_', ' ')}" in result.output
    assert "P(like) head: " in result.output  # its validation AUC, or why there is none
    assert card["record"]["stage"]["depths"]["tower"] == 100
    assert card["config"]["cold_dropout"] == 0.5  # the measured default: cold copies
    record = card["record"]  # the measured default: five user folds, their models' mean
    assert (card["config"]["folds"], card["config"]["bag"]) == (5, True)
    assert record["folds"] == 5 and record["bagged"] and record["trees"] == 5 * record["rounds"]
    assert "chosen on 5 user folds, served as the mean of the fold models" in result.output
    cold_view = card["record"]["choice"]["cold_view_ndcg@10"]
    assert 0.0 <= cold_view <= 1.0 and f"NDCG@10 {cold_view:.4f}" in result.output
    short_view = card["record"]["choice"]["short_view_ndcg@10"]  # every history cut short
    assert (
        f"as new users (every history cut to its newest 1 to 3 events): NDCG@10 {short_view:.4f}"
        in result.output
    )
    from rerank.ranker.train import RankingStageArgs

    assert card["record"]["stage"]["short_histories"] == RankingStageArgs().short_histories
    result = runner.invoke(cli, [*build, "--tower", tower, "--ranker", ranker])
    assert result.exit_code == 0, result.output  # the stage's tables published in the version
    from indexer import IndexRoot

    index_root = IndexRoot(tmp_path / "index")
    manifest = index_root.manifest(index_root.require_current())
    assert manifest["stage"]["files"] == ["stage.npz", "stage.json"]
    assert {"stage.npz", "stage.json"} <= set(manifest["files"])
    result = runner.invoke(cli, [*recommend, "--ranker", ranker, "--json"])
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(ranked["items"]) == 3
    assert ("candidates" in ranked["timings_ms"]) == (served == "ranker")
    result = runner.invoke(cli, [*recommend, "--ranker", ranker, "--no-ranker", "--json"])
    assert "candidates" not in json.loads(result.stdout.strip().splitlines()[-1])["timings_ms"]

    result = runner.invoke(cli, build)  # a plain text-model version
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, [*recommend, "--text-users", "--json"])
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout.strip().splitlines()[-1])
    assert second["index_version"] != first["index_version"] and len(second["items"]) == 3

    result = runner.invoke(cli, [*build, "--tower", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "cannot load the tower" in result.output


def test_missing_tower_or_reranker_folder_is_a_clean_usage_error(tmp_path: Path) -> None:
    from catalog import save_catalog
    from tests.conftest import tiny_catalog

    save_catalog(tiny_catalog(), tmp_path / "data")  # type: ignore[arg-type]
    data, missing = str(tmp_path / "data"), str(tmp_path / "nowhere")
    for args in (
        ["train", "reranker", "--data", data, "--out", str(tmp_path / "rr"), "--tower", missing],
        ["rerank", "calibrate", missing, "--data", data],
        ["train", "ranker", "--data", data, "--out", str(tmp_path / "rr"), "--tower", missing],
    ):
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), *args])
        assert result.exit_code == EXIT_USAGE, result.output
        assert "nowhere" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "rr").exists()  # nothing half-written


def test_train_reranker_defaults_to_the_measured_300_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --max-steps the command trains what the README's figures measured; --quick
    its CI size unless steps are given; 0 asks for whole epochs."""
    from duorank import jobs

    seen: list[object] = []

    def fake(settings: object, job: object, cfg: object) -> dict[str, object]:
        seen.append(cfg)
        card = {"epoch": 1, "steps": 0}
        return {
            "before_training": None,
            "epochs": [card],
            "calibration": {},
            "steps": 0,
            "train_seconds": 0.0,
        }

    monkeypatch.setattr(jobs, "train_reranker", fake)
    base = [
        "--home",
        str(tmp_path / "home"),
        "train",
        "reranker",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "rr"),
    ]
    for extra, steps in (
        ([], 300),
        (["--quick"], 30),
        (["--quick", "--max-steps", "50"], 50),
        (["--max-steps", "0"], None),
    ):
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 0, result.output
        assert seen[-1].max_steps == steps, extra  # type: ignore[attr-defined]


def test_a_wrong_ranker_folder_is_a_clean_error_and_publishes_nothing(tmp_path: Path) -> None:
    from catalog import save_catalog
    from tests.conftest import tiny_catalog

    save_catalog(tiny_catalog(), tmp_path / "data")  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ranker.json").write_text("{not json")
    base = ["--home", str(tmp_path / "home")]
    data, root = str(tmp_path / "data"), str(tmp_path / "index")
    build = [*base, "index", "build", "--data", data, "--root", root, "--ranker"]
    for folder, message in (("empty", "not a ranker folder"), ("bad", "not valid JSON")):
        result = CliRunner().invoke(cli, [*build, str(tmp_path / folder)])
        assert result.exit_code == EXIT_USAGE, result.output
        assert message in result.output and folder in result.output
    assert not (tmp_path / "index" / "versions").exists() or not any(
        (tmp_path / "index" / "versions").iterdir()
    )  # nothing published
    items = [*base, "index", "build", "--items", data, "--root", root]
    result = CliRunner().invoke(cli, [*items, "--ranker", str(tmp_path / "bad")])
    assert result.exit_code == EXIT_USAGE and "--ranker needs --data" in result.output
    recommend = [*base, "recommend", "--user", "u1", "--ranker", str(tmp_path / "nowhere")]
    result = CliRunner().invoke(cli, recommend)
    assert result.exit_code == EXIT_USAGE and "nowhere" in result.output


def test_index_build_engine_flags_are_checked_before_any_work(tmp_path: Path) -> None:
    data = tmp_path / "missing-data"
    data.mkdir()
    base = ["index", "build", "--data", str(data), "--root", str(tmp_path / "idx")]
    stray = CliRunner().invoke(cli, [*base, "--ray-address", "auto"])
    assert stray.exit_code == 2 and "--ray-address needs --engine ray" in stray.output
    for flags in ([], ["--redis-url", "unix:///tmp/x.sock"]):  # the embedded Redis, or a socket
        remote = CliRunner().invoke(
            cli, [*flags, *base, "--engine", "ray", "--ray-address", "auto"]
        )
        assert remote.exit_code == 2 and "Redis" in remote.output, remote.output
    assert not (tmp_path / "idx").exists()  # nothing built, nothing published


def test_serving_commands_let_idle_openmp_threads_sleep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recommend` (as `serve` and `recommend-all`) sets OMP_WAIT_POLICY=PASSIVE before
    anything loads OpenMP (the pools would spin on each other's cores), unless the user chose."""
    runner = CliRunner()
    args = ["--home", str(tmp_path / "home"), "recommend", "--user", "u1"]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    runner.invoke(cli, [*args, "--data", str(tmp_path / "missing")])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runner.invoke(cli, [*args, "--data", str(tmp_path / "missing")])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
