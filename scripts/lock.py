"""Writes requirements.lock: every package duorank and its dev extra install, pinned with
hashes by a real resolver (uv), for every Python and platform pyproject.toml allows.

torch is left out, with the CUDA packages only PyPI's torch build needs: scripts/_env.sh
installs torch==2.13.0 (the CPU build) first, as before. The lock's first line records a digest
of pyproject.toml's requirements, so a test notices a pyproject edit without a refresh.

Refresh (the one command): ``.venv/bin/python scripts/lock.py`` (needs uv: ``pip install uv``).
A refresh keeps every existing pin the requirements still allow (uv reads the old lock as its
preferences), so adding one dependency moves nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
EXTRAS = ("dev",)
LEFT_OUT = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")
"""torch and what only its CUDA build pulls in (the CPU build needs none of them)."""
DIGEST_PREFIX = "# pyproject-requirements-sha256: "


def requirements(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    """What the lock is made from: the dependencies and optional dependencies."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return {
        "dependencies": project["dependencies"],
        "optional-dependencies": project.get("optional-dependencies", {}),
        "requires-python": project.get("requires-python"),
    }


def digest(pyproject: Path = REPO / "pyproject.toml") -> str:
    """A hash of :func:`requirements`, written into the lock's first line."""
    text = json.dumps(requirements(pyproject), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pinned(lock: Path = LOCK) -> dict[str, list[str]]:
    """Each locked package's pinned versions (several where they fork by Python version)."""
    out: dict[str, list[str]] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if found:
            out.setdefault(canonical(found.group(1)), []).append(found.group(2))
    return out


def canonical(name: str) -> str:
    """PEP 503's normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _compile(out: Path, leave_out: list[str]) -> None:
    args = ["uv", "pip", "compile", str(REPO / "pyproject.toml"), "--universal"]
    args += ["--python-version", "3.10", "--generate-hashes", "--quiet", "-o", str(out)]
    args += ["--custom-compile-command", "python scripts/lock.py"]
    for extra in EXTRAS:
        args += ["--extra", extra]
    for name in leave_out:
        args += ["--no-emit-package", name]
    subprocess.run(args, check=True, cwd=REPO)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "all.txt"
        if LOCK.is_file():  # uv keeps an output file's pins where the requirements allow
            first.write_text(LOCK.read_text(encoding="utf-8"), encoding="utf-8")
        _compile(first, ["torch"])  # once to learn the CUDA packages PyPI's torch names
        names = sorted(n for n in pinned(first) if LEFT_OUT.match(n))
        _compile(first, sorted({"torch", *names}))
        body = first.read_text(encoding="utf-8")
    LOCK.write_text(
        f"{DIGEST_PREFIX}{digest()}\n"
        "# torch and its CUDA-only packages are left out: scripts/_env.sh installs torch==2.13.0\n"
        "# (the CPU build) first, then this file with --require-hashes --no-deps.\n" + body,
        encoding="utf-8",
    )
    print(f"wrote {LOCK.relative_to(REPO)}: {len(pinned(LOCK))} packages; left out {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
