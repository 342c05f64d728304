"""Fixtures the security suites share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from indexer import IndexRoot
from tests.live import Stack


@pytest.fixture
def root(stack: Stack, tmp_path: Path) -> IndexRoot:
    """A private copy of the stack's index root, CURRENT on its newest version."""
    shutil.copytree(stack.root, tmp_path / "index")
    store = IndexRoot(tmp_path / "index")
    store.set_current(stack.versions[-1])
    return store
