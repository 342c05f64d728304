"""A damaged CURRENT version (case 5): `recommend` says what is wrong in one line with the
documented exit code; `serve` starts on the newest version that verifies and says so (log,
/readyz, a metric), or with `--strict` refuses; `index list` marks what fails verification."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from duorank.cli import EXIT_USAGE, EXIT_VERIFY, cli
from indexer import IndexRoot, NoVersionError, VerifyError
from serving.http import create_app
from serving.recommender import Recommender
from serving.schemas import ServerLimits
from tests.live import LiveServer, Stack

pytestmark = pytest.mark.slow


def _flip_byte(folder: Path) -> str:
    path = folder / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "index.faiss: sha256 mismatch"


def _drop_ids(folder: Path) -> str:
    (folder / "ids.json").unlink()
    return "ids.json: missing"


def _truncate_manifest(folder: Path) -> str:
    path = folder / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])
    return "manifest.json: invalid JSON"


DAMAGE: dict[str, Callable[[Path], str]] = {
    "flipped byte": _flip_byte,
    "missing ids.json": _drop_ids,
    "truncated manifest": _truncate_manifest,
}


def _recommend(stack: Stack, root: IndexRoot) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        [
            "--home",
            str(root.path.parent / "home"),
            "recommend",
            "--user",
            "u1",
            "--data",
            str(stack.data),
            "--root",
            str(root.path),
            "--reranker",
            str(stack.reranker),
        ],
    )
    return result.exit_code, result.output


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_recommend_names_the_damaged_file(stack: Stack, root: IndexRoot, damage: str) -> None:
    expected = DAMAGE[damage](root.version_dir(stack.versions[-1]))
    code, output = _recommend(stack, root)
    assert code == EXIT_VERIFY, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "pointer", [b"20990101T000000000000Z-dead\n", b"../../etc\n", b"\xff\xfe\x00garbage", b"\n"]
)
def test_recommend_names_a_damaged_current(stack: Stack, root: IndexRoot, pointer: bytes) -> None:
    root.current_file.write_bytes(pointer)
    code, output = _recommend(stack, root)
    assert code == EXIT_VERIFY, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CURRENT" in errors[0], output


def test_nothing_published_is_bad_input(stack: Stack, tmp_path: Path) -> None:
    empty = IndexRoot(tmp_path / "empty")
    empty.path.mkdir()
    code, output = _recommend(stack, empty)
    assert code == EXIT_USAGE and "no published version" in output


def test_the_library_raises_without_fallback(stack: Stack, root: IndexRoot) -> None:
    _flip_byte(root.version_dir(stack.versions[-1]))
    with pytest.raises(VerifyError, match="sha256 mismatch"):
        Recommender(root.path, stack.catalog)


def test_serve_falls_back_loudly_and_recovers(
    stack: Stack, root: IndexRoot, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = stack.versions[-1]
    _drop_ids(root.version_dir(damaged))
    with caplog.at_level(logging.ERROR, logger="serving.recommender"):
        rec = Recommender(root.path, stack.catalog, fallback=True)
    assert rec.index_version == stack.versions[-2]
    assert any("DEGRADED" in r.getMessage() and damaged in r.getMessage() for r in caplog.records)
    app = create_app(rec, token="s3cret", limits=ServerLimits(reload_interval_s=0.05))
    auth = {"Authorization": "Bearer s3cret"}
    with LiveServer(app) as live:
        ready = httpx.get(f"{live.url}/readyz").json()  # the open probe: no details
        assert ready["index_version"] == stack.versions[-2] and ready["degraded"] is True
        assert "degraded_reason" not in ready and "ids.json" not in json.dumps(ready)
        reason = httpx.get(f"{live.url}/readyz", headers=auth).json()["degraded_reason"]
        assert damaged in reason and "ids.json" in reason
        assert "duorank_index_degraded 1.0" in httpx.get(f"{live.url}/metrics", headers=auth).text
        r = httpx.post(f"{live.url}/recommend", json={"user_id": "u1", "k": 3}, headers=auth)
        assert r.status_code == 200 and r.json()["index_version"] == stack.versions[-2]
        # The operator rolls back: CURRENT names a good version, the server is whole again.
        root.set_current(stack.versions[0])
        for _ in range(200):
            ready = httpx.get(f"{live.url}/readyz").json()
            if ready["index_version"] == stack.versions[0]:
                break
            time.sleep(0.02)
        assert ready["index_version"] == stack.versions[0] and "degraded" not in ready
        assert "duorank_index_degraded 0.0" in httpx.get(f"{live.url}/metrics", headers=auth).text


def test_a_refused_version_is_not_hashed_again_until_it_changes(
    stack: Stack, root: IndexRoot
) -> None:
    root.set_current(stack.versions[0])
    rec = Recommender(root.path, stack.catalog)
    bad = stack.versions[1]
    _flip_byte(root.version_dir(bad))
    root.set_current(bad)
    with pytest.raises(VerifyError):
        rec.reload()
    assert rec.reload() is False  # the same damaged files: refused without re-hashing
    shutil.copy2(stack.root / "versions" / bad / "index.faiss", root.version_dir(bad))
    assert rec.reload() is True and rec.index_version == bad  # repaired in place


def test_serve_strict_refuses_to_start(stack: Stack, root: IndexRoot) -> None:
    _flip_byte(root.version_dir(stack.versions[-1]))
    result = CliRunner().invoke(
        cli,
        [
            *("--home", str(root.path.parent / "home"), "serve", "--strict"),
            *("--data", str(stack.data), "--root", str(root.path), "--port", "0"),
        ],
    )
    assert result.exit_code == EXIT_VERIFY, result.output
    assert "index.faiss: sha256 mismatch" in result.output


def test_nothing_verifies_is_an_error_even_with_fallback(stack: Stack, root: IndexRoot) -> None:
    for version in stack.versions:
        _drop_ids(root.version_dir(version))
    with pytest.raises(NoVersionError, match="no published version verifies"):
        Recommender(root.path, stack.catalog, fallback=True)


def test_index_list_marks_failed_versions(stack: Stack, root: IndexRoot) -> None:
    _truncate_manifest(root.version_dir(stack.versions[1]))
    result = CliRunner().invoke(cli, ["index", "list", "--root", str(root.path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["version"]: r for r in map(json.loads, result.output.strip().splitlines())}
    assert [rows[v]["verified"] for v in stack.versions] == [True, False, True]
    assert "invalid JSON" in rows[stack.versions[1]]["problem"]
    text = CliRunner().invoke(cli, ["index", "list", "--root", str(root.path)]).output
    assert sum("FAILED" in line for line in text.splitlines()) == 1
