"""The contract every benchmark follows: a printed table and a JSON record.

The JSON holds ``machine`` (CPU model, cores, library versions), ``date``, ``commit``,
``params``, ``results`` and ``targets`` (a list of ``{"name", "measured", "target", "met"}``),
so anyone can see at a glance which targets hold and on what machine they were measured.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from catalog.fsutil import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of measured values (NaN for none)."""
    return float(np.percentile(np.asarray(values), p)) if len(values) else float("nan")


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` compared with ``target`` by ``op`` (``>=`` or ``<=``)."""

    name: str
    measured: float
    target: float
    op: str = ">="

    @property
    def met(self) -> bool:
        """Whether the measured value satisfies the target."""
        if math.isnan(self.measured):  # NaN never meets a target
            return False
        return self.measured >= self.target if self.op == ">=" else self.measured <= self.target

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "measured": self.measured,
            "target": f"{self.op} {self.target}",
            "met": self.met,
        }


@dataclass
class BenchReport:
    """What one benchmark run produced."""

    name: str
    params: dict[str, Any]
    results: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The full JSON record, with machine, date and commit."""
        record = stamp({"benchmark": self.name})
        record.update(
            params=self.params,
            results=self.results,
            targets=[t.as_dict() for t in self.targets],
        )
        return record

    def write(self, output: Path | None = None) -> Path:
        """Writes the JSON record (default ``benchmarks/results/NAME.json``)."""
        path = output or RESULTS_DIR / f"{self.name}.json"
        write_json(path, self.to_json())
        return path

    def render(self) -> str:
        """The human-readable table plus the targets."""
        lines: list[str] = []
        # Consecutive rows with the same columns form one table.
        group: list[dict[str, Any]] = []
        for row in self.table:
            if group and list(row) != list(group[-1]):
                lines += [format_table(group), ""]
                group = []
            group.append(row)
        if group:
            lines.append(format_table(group))
        if self.targets:
            lines.append("")
            lines.append(
                format_table(
                    [
                        {
                            "target": t.name,
                            "measured": t.measured,
                            "wanted": f"{t.op} {t.target}",
                            "met": "yes" if t.met else "NO",
                        }
                        for t in self.targets
                    ]
                )
            )
        return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Formats dict rows as an aligned plain-text table (floats to 4 significant digits)."""
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where available."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, OS and the versions of the libraries that decide speed."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in (
                "torch",
                "faiss-cpu",
                "numpy",
                "sentence-transformers",
                "transformers",
                "redis",
                "onnxruntime",
            )
        },
    }


def git_commit() -> str | None:
    """The commit of the working tree (suffixed ``+dirty`` when it has changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def stamp(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``machine``, ``date`` and ``commit`` set: every committed figure names
    where and when it was measured."""
    record["machine"] = machine_info()
    record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["commit"] = git_commit()
    return record


@dataclass(frozen=True)
class BenchContext:
    """What the app layer hands a benchmark (benchmarks never read the environment)."""

    home: Path = Path(".duorank")
    redis_url: str | None = None
    data: Path = Path(__file__).resolve().parent.parent / "data" / "ml-latest-small"
    #: where the record goes (None: ``benchmarks/results/NAME.json``); a long benchmark
    #: writes what it has finished there as it goes.
    output: Path | None = None


BenchFn = Callable[[bool, BenchContext], BenchReport]
