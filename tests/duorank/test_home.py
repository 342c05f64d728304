"""The home layout: every default path of the commands, named once."""

from __future__ import annotations

from pathlib import Path

from duorank.home import Home
from duorank.settings import Settings


def test_the_layout_and_what_was_trained(tmp_path: Path) -> None:
    home = Settings.from_env({}, home=tmp_path).layout
    assert home == Home(tmp_path)
    assert home.dataset() == tmp_path / "datasets" / "ml-latest-small"
    assert home.index == tmp_path / "index" and home.redis == tmp_path / "redis"
    assert home.trained_reranker() is None and home.trained_tower() is None
    home.reranker.mkdir(parents=True)
    assert home.trained_reranker() is None  # a folder is not a model
    (home.reranker / "reranker.json").write_text("{}")
    (home.tower).mkdir(parents=True)
    (home.tower / "tower.json").write_text("{}")
    assert home.trained_reranker() == home.reranker and home.trained_tower() == home.tower
