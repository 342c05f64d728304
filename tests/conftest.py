"""Session-wide fixtures: offline model loading and the shared paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "ml-latest-small"


@pytest.fixture(scope="session")
def bundled_movielens() -> Path:
    """The ml-latest-small copy shipped with the repo."""
    return BUNDLED
