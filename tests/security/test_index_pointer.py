"""Hardening 2, defects 7, 8 and 9: CURRENT is read only as a small regular file (a folder, a
link or a huge file is a damaged pointer: one line, exit 4, degraded serving); whatever it holds
is escaped and truncated before it is echoed, and the open /readyz says only "degraded"; serving
falls back only to versions CURRENT has named, never to one a killed build left behind."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable

import httpx
import pytest
from click.testing import CliRunner

from duorank.cli import EXIT_VERIFY, cli
from indexer import IndexRoot, VerifyError
from serving.http import create_app
from serving.recommender import Recommender
from tests.live import LiveServer, Stack

pytestmark = pytest.mark.slow

SECRET = "root:x:0:0:SECRET-LINE\n" * 40
TOKEN = "s3cret"


def _as_folder(root: IndexRoot, stack: Stack) -> None:
    root.current_file.unlink()
    root.current_file.mkdir()


def _as_link_to_version(root: IndexRoot, stack: Stack) -> None:
    root.current_file.unlink()
    root.current_file.symlink_to(root.version_dir(stack.versions[-1]))


def _as_link_to_secret(root: IndexRoot, stack: Stack) -> None:
    secret = root.path.parent / "passwd"
    secret.write_text(SECRET)
    root.current_file.unlink()
    root.current_file.symlink_to(secret)


def _as_huge_file(root: IndexRoot, stack: Stack) -> None:
    root.current_file.write_text(SECRET * 3000)


POINTERS: dict[str, Callable[[IndexRoot, Stack], None]] = {
    "folder": _as_folder,
    "link to a version": _as_link_to_version,
    "link to a secret": _as_link_to_secret,
    "10 MB file": _as_huge_file,
}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("pointer", list(POINTERS))
def test_a_damaged_pointer_is_one_line_and_exit_4(
    stack: Stack, root: IndexRoot, pointer: str
) -> None:
    POINTERS[pointer](root, stack)
    home = str(root.path.parent / "home")
    where = ("--data", str(stack.data), "--root", str(root.path))
    code, output = _cli("--home", home, "recommend", "--user", "u1", *where, "--no-ranker")
    assert code == EXIT_VERIFY, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CURRENT" in errors[0], output
    assert "Traceback" not in output and "SECRET-LINE" not in output and len(output) < 1000
    code, output = _cli("index", "verify", "--root", str(root.path))
    assert code == EXIT_VERIFY and "Traceback" not in output and "SECRET-LINE" not in output
    code, output = _cli("index", "list", "--root", str(root.path), "--no-verify")
    assert code == 0, output
    assert "warning:" in output and "SECRET-LINE" not in output
    listed = [line for line in output.splitlines() if not line.startswith("warning:")]
    assert len(listed) == 3 and not any(line.startswith("*") for line in listed)


@pytest.mark.parametrize("pointer", list(POINTERS))
def test_serve_degrades_on_a_damaged_pointer_and_the_open_probe_leaks_nothing(
    stack: Stack, root: IndexRoot, pointer: str
) -> None:
    POINTERS[pointer](root, stack)
    rec = Recommender(root.path, stack.catalog, fallback=True)
    assert rec.index_version == stack.versions[-1] or pointer != "link to a version"
    assert rec.degraded is not None and "CURRENT" in rec.degraded
    assert "SECRET-LINE" not in rec.degraded and "\n" not in rec.degraded
    with LiveServer(create_app(rec, token=TOKEN)) as live:
        ready = httpx.get(f"{live.url}/readyz").json()
        assert ready["degraded"] is True and set(ready) == {"status", "index_version", "degraded"}
        assert str(root.path) not in json.dumps(ready)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        reason = httpx.get(f"{live.url}/readyz", headers=auth).json()["degraded_reason"]
        assert "CURRENT" in reason and "SECRET-LINE" not in reason
        r = httpx.post(f"{live.url}/recommend", json={"user_id": "u1", "k": 3}, headers=auth)
        assert r.status_code == 200


def test_a_pointer_with_control_characters_is_echoed_escaped(stack: Stack, root: IndexRoot) -> None:
    root.current_file.write_bytes(b"\x1b[2J\x1b]0;owned\x07evil\nsecond line\n" + b"x" * 500)
    with pytest.raises(VerifyError) as caught:
        root.require_current()
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message and "\n" not in message
    assert "\\x1b[2J" in message and "\\\\x1b" not in message  # escaped once, not twice
    assert len(message) < 600


def test_rollback_repairs_a_linked_pointer(stack: Stack, root: IndexRoot) -> None:
    _as_link_to_version(root, stack)
    code, output = _cli("index", "rollback", stack.versions[0], "--root", str(root.path))
    assert code == 0, output
    assert not root.current_file.is_symlink() and root.require_current() == stack.versions[0]


# ---------------------------------------------------------------------------- killed builds


def _killed_build(root: IndexRoot, stack: Stack) -> str:
    """What a build killed between its version folder's rename and CURRENT's swap leaves: a
    complete, verifying version newer than all, never named by CURRENT, and a temp file."""
    stray = "29990101T000000000000Z-killed"
    shutil.copytree(root.version_dir(stack.versions[0]), root.version_dir(stray))
    temp = root.path / ".CURRENT.abc123"
    temp.write_text(stray + "\n")
    old = time.time() - 3600
    os.utime(temp, (old, old))
    return stray


def test_degraded_serving_never_falls_back_to_an_unpublished_version(
    stack: Stack, root: IndexRoot
) -> None:
    stray = _killed_build(root, stack)
    assert root.check(stray) is None  # it verifies: only the publish log tells it apart
    assert root.unpublished() == [stray]
    (root.version_dir(stack.versions[-1]) / "ids.json").unlink()  # CURRENT's version damaged
    rec = Recommender(root.path, stack.catalog, fallback=True)
    assert rec.index_version == stack.versions[-2]
    assert rec.degraded is not None and stray not in rec.degraded


def test_index_list_and_rollback_skip_an_unpublished_version(stack: Stack, root: IndexRoot) -> None:
    stray = _killed_build(root, stack)
    code, output = _cli("index", "list", "--root", str(root.path), "--json")
    rows = {r["version"]: r for r in map(json.loads, output.strip().splitlines())}
    assert code == 0 and rows[stray]["published"] is False
    assert all(rows[v]["published"] for v in stack.versions)
    text = _cli("index", "list", "--root", str(root.path), "--no-verify")[1]
    assert [line.split()[0] for line in text.splitlines() if "UNPUBLISHED" in line] == [stray]
    root.set_current(stray)  # published by hand: a version like any other from now on
    assert root.unpublished() == [] and root.previous(stray) == stack.versions[-1]


def test_the_next_build_sweeps_stale_publish_temp_files(root: IndexRoot) -> None:
    stale = root.path / ".CURRENT.stale"
    stale.write_text("x\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = root.path / ".CURRENT.fresh"  # a publish in progress right now
    fresh.write_text("y\n")
    assert root.remove_stale_temp_files() == [".CURRENT.stale"]
    assert fresh.exists() and not stale.exists()


def test_a_root_from_before_the_publish_log_starts_one_with_its_history(
    stack: Stack, root: IndexRoot
) -> None:
    root.published_log.unlink()
    assert root.published() is None and root.unpublished() == []  # legacy: all published
    root.set_current(stack.versions[1])
    assert root.published() == set(stack.versions)  # the older ones and the one before
