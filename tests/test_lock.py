"""requirements.lock, the exact set scripts/_env.sh installs: made from pyproject.toml as it
is now, pinning every requirement at a version pyproject allows, and (in an environment the
scripts made) installed exactly."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from importlib import metadata
from types import ModuleType

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.conftest import REPO


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("duorank_lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()


def _entries() -> list[tuple[str, str, str]]:
    """(name, version, marker) of every pin, in the lock's order."""
    out = []
    for line in (REPO / "requirements.lock").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+))?", line)
        if found:
            out.append((LOCK.canonical(found.group(1)), found.group(2), found.group(3) or ""))
    return out


def _here(marker: str) -> bool:
    return not marker.strip() or Marker(marker.strip()).evaluate()


def test_the_lock_was_made_from_this_pyproject() -> None:
    first = (REPO / "requirements.lock").read_text().splitlines()[0]
    assert first == LOCK.DIGEST_PREFIX + LOCK.digest(), (
        "pyproject.toml's requirements changed since requirements.lock was made: "
        "run `python scripts/lock.py`"
    )


def test_every_requirement_is_pinned_at_a_version_pyproject_allows() -> None:
    pins: dict[str, list[str]] = {}
    for name, version, marker in _entries():
        if _here(marker):
            pins.setdefault(name, []).append(version)
    project = LOCK.requirements()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for text in wanted:
        req = Requirement(text)
        name = LOCK.canonical(req.name)
        if name == "torch" or (req.marker is not None and not req.marker.evaluate()):
            continue  # torch: installed first, the CPU build, as the scripts do
        assert name in pins, f"{name} is not in requirements.lock"
        assert len(pins[name]) == 1, f"{name} pinned twice for this Python: {pins[name]}"
        assert req.specifier.contains(pins[name][0], prereleases=True), (name, pins[name])


def test_the_lock_leaves_out_torch_and_cuda_only_packages() -> None:
    names = {name for name, _, _ in _entries()}
    assert not {n for n in names if LOCK.LEFT_OUT.match(n)}
    assert {"faiss-cpu", "sentence-transformers", "redis", "lightgbm", "fastapi"} <= names
    text = (REPO / "requirements.lock").read_text()
    assert text.count("--hash=sha256:") >= len(names)  # every pin hash-checked


def test_this_environment_is_the_lock() -> None:
    """scripts/_env.sh (so CI) installs from the lock: each pin is what is installed."""
    if os.environ.get("DUORANK_LOCKED_ENV") != "1":
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run through scripts/test, which installs from the lock")
        pytest.skip("not an environment scripts/_env.sh made from the lock")
    wrong = []
    for name, version, marker in _entries():
        if not _here(marker):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed")
            continue
        if installed != version:
            wrong.append(f"{name}: {installed} installed, {version} locked")
    assert wrong == [], wrong
    assert metadata.version("torch").startswith("2.13.0"), sys.version
