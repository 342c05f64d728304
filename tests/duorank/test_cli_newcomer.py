"""What a newcomer touches first (issue 33's defects): the index commands without --root use
the home's index, `eval` with its default one seed writes its whole report, and `serve` on a
port in use says so with exit 2."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import save_catalog
from duorank.cli import EXIT_USAGE, cli
from tests.conftest import tiny_catalog


def test_index_commands_default_to_the_homes_index(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home")]
    for command in (["index", "list"], ["index", "verify"], ["index", "rollback"]):
        result = CliRunner().invoke(cli, [*home, *command])
        assert result.exit_code == EXIT_USAGE, result.output
        assert ("Traceback" not in result.output and result.exception is None) or isinstance(
            result.exception, SystemExit
        )
        assert str(tmp_path / "home" / "index") in result.output, result.output


def test_index_build_and_list_without_root_use_home_index(tmp_path: Path, redis_url: str) -> None:
    save_catalog(tiny_catalog(), tmp_path / "data")  # type: ignore[arg-type]
    base = ["--home", str(tmp_path / "home"), "--redis-url", redis_url]
    build = CliRunner().invoke(cli, [*base, "index", "build", "--data", str(tmp_path / "data")])
    assert build.exit_code == 0, build.output
    assert "  time " in build.output and "encode " in build.output  # where the time went
    listed = CliRunner().invoke(cli, [*base, "index", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output.strip().splitlines()[-1])["current"] is True
    assert (tmp_path / "home" / "index" / "CURRENT").is_file()


def test_serve_on_a_port_in_use_is_exit_2_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["--home", str(tmp_path / "home"), "serve", "--port", str(port)]
        )
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"port {port} is in use" in result.output


@pytest.mark.slow
def test_eval_with_the_default_one_seed_writes_its_report(tmp_path: Path, redis_url: str) -> None:
    save_catalog(tiny_catalog(n_items=40, n_users=12, per_user=8), tmp_path / "data")  # type: ignore[arg-type]
    base = ["--home", str(tmp_path / "home"), "--redis-url", redis_url]
    output = tmp_path / "report.json"
    args = ["eval", "--data", str(tmp_path / "data"), "--output", str(output), "--quick"]
    result = CliRunner().invoke(cli, [*base, *args, "--no-rerank-als"])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    ranking = report["methods"]["ranking_stage"]
    assert "seeds" not in ranking  # one seed: no seeds' summary, and nothing that needs one
    lo, hi = ranking["vs_first_stage"]["ndcg@10_mean_minus_reference_ci95"]
    assert lo <= hi
    assert output.with_suffix(".md").is_file() and "ranking_stage" in result.output
    assert output.with_name("report-recall.png").is_file()


@pytest.mark.slow
def test_eval_under_the_sasrec_protocol_records_what_it_prepared(
    tmp_path: Path, redis_url: str
) -> None:
    save_catalog(tiny_catalog(n_items=16, n_users=12, per_user=8), tmp_path / "data")  # type: ignore[arg-type]
    base = ["--home", str(tmp_path / "home"), "--redis-url", redis_url]
    output = tmp_path / "report.json"
    args = ["eval", "--data", str(tmp_path / "data"), "--output", str(output), "--quick"]
    result = CliRunner().invoke(cli, [*base, *args, "--no-rerank-als", "--protocol", "sasrec"])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    protocol = report["protocol"]
    assert protocol["name"] == "sasrec" and protocol["min_events"] == 5
    assert protocol["dropped_events"] > 0 and protocol["kept"]["items"] < 16  # under 5 ratings
    assert protocol["split"].startswith("the SASRec/BERT4Rec papers' leave-one-out")
    assert protocol["users"] == {"validation": 12, "test": 12}  # every user, as the papers
    assert "ranking_stage" in report["methods"] and "sasrec" in report["methods"]
    assert "Protocol: the SASRec/BERT4Rec papers'" in output.with_suffix(".md").read_text()


def test_serve_off_loopback_without_a_token_warns_loudly(tmp_path: Path) -> None:
    from duorank.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    where = ["--data", str(tmp_path / "none"), "--root", str(tmp_path / "none")]
    result = CliRunner().invoke(
        cli,
        ["--home", str(tmp_path / "home"), "serve", "--host", "0.0.0.0", "--port", "0", *where],
        env={"DUORANK_API_TOKEN": ""},
    )
    assert "WARNING: serving on 0.0.0.0 with no token" in result.output
    assert result.exit_code == EXIT_USAGE  # then the missing dataset stops it, before serving
