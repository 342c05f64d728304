"""Small file-system helpers for atomic, verifiable artifacts.

An artifact is a folder written in a staging location, fsynced, then renamed into place, so a
reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsyncs a directory so renames inside it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsyncs every file and folder under ``path`` (inclusive)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Marker:
    """How a folder shows that a command made it: a JSON object in ``file`` inside it, whose
    ``key`` (when given) holds ``value``. Only such a folder, or an empty one, is replaced."""

    file: str
    what: str
    key: str | None = None
    value: str | None = None
    older: tuple[str, ...] = ()
    """Earlier values of ``key`` the same command wrote (an older format of its output)."""

    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` carries this marker (a regular file of bounded size)."""
        path = folder / self.file
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size > MARKER_MAX_BYTES:
                return False
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        if not isinstance(data, dict):
            return False
        return self.key is None or data.get(self.key) in (self.value, *self.older)


MARKER_MAX_BYTES = 1 << 24
DATASET = Marker("manifest.json", "a duorank dataset", "format", "duorank.dataset/1")
RECOMMENDATIONS = Marker(
    "manifest.json",
    "a recommend-all output",
    "format",
    "duorank.recommendations/2",
    older=("duorank.recommendations/1",),
)
MODEL = Marker("duorank-card.json", "a duorank model folder")
RANKER = Marker("ranker.json", "a duorank ranking stage", "kind", "gbdt")


def check_replaceable(target: Path, marker: Marker, inputs: Iterable[Path] = ()) -> None:
    """Refuses an output folder whose replacement could lose someone's files.

    A command may replace only a folder that does not exist, an empty one, or one it made
    before (it carries ``marker``); never the working folder or one above it, the home folder
    or one above it, or a folder holding one of the command's inputs.

    Raises:
        DataError: naming the folder and why (the CLI's exit 2).
    """
    from catalog.errors import DataError

    resolved = target.resolve()
    protected = {Path.cwd().resolve(), Path.home().resolve()}
    for base in list(protected):
        protected.update(base.parents)
    if resolved in protected:
        raise DataError(
            "refusing to write here: it is the working folder, the home folder or a folder "
            "above them; give a new or empty folder",
            path=target,
        )
    for source in inputs:
        held = source.resolve()
        if held == resolved or resolved in held.parents:
            raise DataError(
                f"refusing to write here: it holds an input of this command ({source}); "
                "give a new or empty folder",
                path=target,
            )
    if not resolved.exists():
        return
    if not resolved.is_dir():
        raise DataError("refusing to write here: it exists and is not a folder", path=target)
    if next(resolved.iterdir(), None) is None or marker.matches(resolved):
        return
    raise DataError(
        f"refusing to replace this folder: it is not empty and is not {marker.what} (no "
        f"{marker.file} of one inside); give a new or empty folder",
        path=target,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_leftovers(target: Path) -> None:
    """Removes staging and set-aside folders that a killed run of this host left beside
    ``target`` (their names carry the host and the pid that made them)."""
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.(?:staging|old)-{re.escape(_HOST)}-(\d+)(?:-.*)?$"
    )
    for sibling in target.parent.iterdir():
        found = pattern.match(sibling.name)
        if found and int(found.group(1)) != os.getpid() and not _alive(int(found.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


@contextmanager
def atomic_dir(target: Path, marker: Marker, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yields a staging folder that replaces ``target`` only if the block succeeds.

    The staging folder sits beside the target (same file system, so the rename is atomic). An
    existing target must pass :func:`check_replaceable`; it is moved aside first and deleted
    only after the new one is in place. Leftovers of killed runs beside it are removed.
    """
    check_replaceable(target, marker, inputs)
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(target)
    tag = f"{_HOST}-{os.getpid()}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{tag}-", dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
        old: Path | None = None
        if target.exists():
            check_replaceable(target, marker, inputs)  # it may have changed meanwhile
            old = target.parent / f".{target.name}.old-{tag}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
