"""The versioned index root: versions, the CURRENT pointer, verification and rollback.

Layout::

    ROOT/CURRENT                    the published version id (replaced atomically)
    ROOT/published.log              every version CURRENT has named, one id a line, appended
    ROOT/versions/<version-id>/     index.faiss, ids.json, index.json, item_hashes.json,
                                    manifest.json (sha256 of every other file)
    ROOT/staging/                   builds in progress; leftovers are removed by the next build
    ROOT/.lock                      the build lock

A version folder appears only by ``rename`` from staging after every file was fsynced, and
CURRENT changes only by ``os.replace``: a reader sees a complete old version or a complete new one.
A version is *published* once CURRENT has named it (the log keeps that); a build killed between
its version folder and CURRENT leaves an unpublished version, which degraded serving never
falls back to, `index list` marks and ``--keep`` retires like any old version.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.errors import printable
from catalog.fsutil import fsync_dir, sha256_file
from retrieval.index import VectorIndex, VectorIndexError, load_index

MANIFEST = "manifest.json"
PUBLISHED = "published.log"
CURRENT_MAX_BYTES = 1024
"""CURRENT holds one version id (at most 200 characters); anything longer is not one."""


class VerifyError(RuntimeError):
    """A version failed verification; ``problems`` lists each (file and what is wrong)."""

    def __init__(self, version: str, problems: list[str]) -> None:
        self.version = printable(version)
        self.problems = [printable(p, 400) for p in problems]
        super().__init__(f"version {self.version} failed verification: " + "; ".join(self.problems))


class NoVersionError(LookupError):
    """The root has no published version, or the named version does not exist."""


@dataclass(frozen=True)
class IndexRoot:
    """Paths and pointer operations of one index root."""

    path: Path

    @property
    def versions_dir(self) -> Path:
        return self.path / "versions"

    @property
    def staging_dir(self) -> Path:
        return self.path / "staging"

    @property
    def current_file(self) -> Path:
        return self.path / "CURRENT"

    def version_dir(self, version: str) -> Path:
        """The folder of ``version`` (checked to be a plain name, not a path)."""
        if (
            not version
            or "/" in version
            or "\\" in version
            or "\0" in version
            or version.startswith(".")
            or len(version) > 200
        ):
            raise NoVersionError(f"invalid version id {version!r}")
        return self.versions_dir / version

    def versions(self) -> list[str]:
        """Published version ids, oldest first (ids sort by creation time)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    @property
    def published_log(self) -> Path:
        return self.path / PUBLISHED

    def current(self) -> str | None:
        """What CURRENT says (stripped), or None before the first publish.

        The version is not checked: see :meth:`require_current`. CURRENT is read only as a
        regular file of at most :data:`CURRENT_MAX_BYTES` (never through a link); bytes that are
        not UTF-8 are kept visible (backslash escapes), so a damaged pointer never looks like
        "nothing published".

        Raises:
            VerifyError: CURRENT is a link, a folder or another non-file, or too long.
        """
        try:
            fd = os.open(self.current_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError:
            if self.current_file.is_symlink():
                raise self._damaged("a symbolic link; it must be a file naming a version") from None
            raise self._damaged("cannot be read as a file") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._damaged("not a regular file (a folder?); it must name a version")
            raw = os.read(fd, CURRENT_MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > CURRENT_MAX_BYTES:
            raise self._damaged(f"over {CURRENT_MAX_BYTES} bytes: not a version id")
        value = raw.decode("utf-8", errors="backslashreplace").strip()
        return value or None

    def _damaged(self, what: str) -> VerifyError:
        return VerifyError(
            "CURRENT",
            [f"{self.current_file}: {what} (`duorank index rollback VERSION` rewrites it)"],
        )

    def current_or_none(self) -> str | None:
        """:meth:`current`, with a damaged CURRENT read as nothing published (for a build,
        which publishes a new version over it)."""
        try:
            return self.current()
        except VerifyError:
            return None

    def published(self) -> set[str] | None:
        """The versions CURRENT has named (:data:`PUBLISHED`), or None for a root written
        before the log existed (then every version counts as published)."""
        try:
            text = self.published_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        return {line.strip() for line in text.splitlines() if line.strip()}

    def unpublished(self) -> list[str]:
        """Versions CURRENT has never named: left by a build killed before it published."""
        published = self.published()
        if published is None:
            return []
        current = self.current_or_none()
        return [v for v in self.versions() if v not in published and v != current]

    def require_current(self) -> str:
        """The current version id, checked to name a published version folder.

        Raises:
            NoVersionError: nothing published yet.
            VerifyError: CURRENT is damaged: empty, garbage, a path, or a version that does not
                exist.
        """
        version = self.current()
        if version is None:
            if self.current_file.exists():
                raise VerifyError("CURRENT", [f"{self.current_file}: empty"])
            raise NoVersionError(
                f"{self.path}: no published version yet (run `duorank index build`)"
            )
        try:
            folder = self.version_dir(version)
        except NoVersionError:
            folder = None
        if folder is None or not folder.is_dir():
            raise VerifyError(
                version,
                [f"{self.current_file}: names '{printable(version)}', not a published version"],
            )
        return version

    def set_current(self, version: str) -> None:
        """Points CURRENT at ``version`` atomically (temp file, fsync, rename, fsync folder),
        then appends it to the publish log.

        Raises:
            NoVersionError: no such version.
            VerifyError: CURRENT is a folder (remove it by hand: nothing here deletes one).
        """
        if not self.version_dir(version).is_dir():
            raise NoVersionError(f"{self.path}: version {version!r} does not exist")
        if self.current_file.is_dir() and not self.current_file.is_symlink():
            raise self._damaged("a folder; remove it, then publish again")
        before = self.current_or_none()
        fd, tmp = tempfile.mkstemp(prefix=".CURRENT.", dir=self.path)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(version + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.current_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.path)
        self._log_published(version, before)

    def _log_published(self, version: str, before: str | None) -> None:
        """Appends ``version`` to the publish log. A root without a log (written before it
        existed) starts one with the version CURRENT named before and every older one."""
        published = self.published()
        if published is None:
            older = [v for v in self.versions() if before is not None and v <= before]
            published, lines = set(), [*older, version]
        else:
            lines = [v for v in (before, version) if v is not None and v in self.versions()]
        lines = [v for v in dict.fromkeys(lines) if v not in published]
        if not lines:
            return
        with self.published_log.open("a", encoding="utf-8") as handle:
            handle.write("".join(v + "\n" for v in lines))
            handle.flush()
            os.fsync(handle.fileno())

    def remove_stale_temp_files(self, older_than_s: float = 600.0) -> list[str]:
        """Removes ``.CURRENT.*`` temp files a killed publish left (old enough that no
        publish in progress still needs them); returns their names."""
        import time

        removed = []
        for path in self.path.glob(".CURRENT.*"):
            try:
                if time.time() - path.lstat().st_mtime > older_than_s:
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                continue
        return removed

    def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest.

        Raises:
            NoVersionError: the version does not exist.
            VerifyError: the manifest is missing or not valid JSON.
        """
        folder = self.version_dir(version)
        if not folder.is_dir():
            raise NoVersionError(f"{self.path}: version {version!r} does not exist")
        path = folder / MANIFEST
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise VerifyError(version, [f"{path}: missing"]) from None
        except json.JSONDecodeError as exc:
            raise VerifyError(version, [f"{path}: invalid JSON ({exc.msg})"]) from None
        return data

    def verify(self, version: str) -> dict[str, Any]:
        """Checks checksums, presence, loadability, dimensions and counts of a version.

        Returns:
            The manifest, when everything holds.

        Raises:
            VerifyError: listing each problem with the file it concerns.
        """
        manifest = self.manifest(version)
        folder = self.version_dir(version)
        problems: list[str] = []
        files: dict[str, str] = manifest.get("files", {})
        if not files:
            problems.append(f"{folder / MANIFEST}: lists no files")
        for name, digest in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: sha256 mismatch (changed or corrupt)")
        extra = {p.name for p in folder.iterdir()} - set(files) - {MANIFEST}
        problems += [f"{folder / name}: not listed in the manifest" for name in sorted(extra)]
        if not problems:
            try:
                index = load_index(folder)
            except VectorIndexError as exc:
                problems.append(str(exc))
            else:
                if index.dim != manifest.get("dims"):
                    problems.append(
                        f"{folder / 'index.faiss'}: dim {index.dim} but manifest "
                        f"says {manifest.get('dims')}"
                    )
                if len(index) != manifest.get("items"):
                    problems.append(
                        f"{folder / 'index.faiss'}: {len(index)} items but manifest "
                        f"says {manifest.get('items')}"
                    )
        if problems:
            raise VerifyError(version, problems)
        return manifest

    def check(self, version: str) -> str | None:
        """None when ``version`` verifies, else one line saying what is wrong (for listings)."""
        try:
            self.verify(version)
        except (VerifyError, NoVersionError) as exc:
            return str(exc)
        return None

    def load(self, version: str | None = None) -> tuple[VectorIndex, dict[str, Any]]:
        """Verifies and loads a version (default: CURRENT); a corrupted one is refused.

        Raises:
            NoVersionError: nothing published, or no such version.
            VerifyError: the version is damaged (nothing is loaded).
        """
        version = version or self.require_current()
        manifest = self.verify(version)
        return load_index(self.version_dir(version), mmap=True), manifest

    def previous(self, version: str) -> str | None:
        """The published version just before ``version`` (never an unpublished one)."""
        unpublished = set(self.unpublished())
        versions = [v for v in self.versions() if v not in unpublished]
        if version not in versions:
            return None
        i = versions.index(version)
        return versions[i - 1] if i > 0 else None
