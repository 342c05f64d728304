"""Full fine-tuning of the tower: one real training step on a tiny catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import Catalog, Interactions, leave_one_out
from catalog.text import UserTextTemplate
from retrieval.encoder import Encoder
from retrieval.train import RetrieverTrainConfig, build_pairs, train_retriever
from tests.conftest import tiny_catalog as _tiny

pytestmark = pytest.mark.slow


def tiny_catalog() -> Catalog:
    catalog = _tiny()
    assert isinstance(catalog, Catalog)
    return catalog


def test_pairs_use_only_history_before_the_target() -> None:
    catalog = tiny_catalog()
    split = leave_one_out(catalog.interactions)
    pairs = build_pairs(catalog, split, RetrieverTrainConfig(), UserTextTemplate())
    assert pairs
    test_items = dict(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True))
    for user, text, item in pairs:
        assert f"Film {item}" not in text.split(": ", 1)[1].split("; ")  # target not in its anchor
        assert item != test_items.get(user)  # never a held-out item


def test_one_step_trains_and_saves_a_loadable_folder(tmp_path: Path) -> None:
    catalog = tiny_catalog()
    split = leave_one_out(catalog.interactions)
    cfg = RetrieverTrainConfig(max_steps=1, batch_size=4, hard_negatives=1, hard_negative_rank=2)
    card = train_retriever(catalog, split, tmp_path / "model", cfg, device="cpu", progress=False)
    assert card["steps"] == 1
    assert set(card["zero_shot"]) == {"recall@10", "recall@50", "recall@100"}
    assert card["epochs"][0]["train_loss"] > 0
    saved = json.loads((tmp_path / "model" / "duorank-card.json").read_text())
    assert saved["config"]["max_steps"] == 1 and saved["data"]["pairs"] > 0
    assert (tmp_path / "model" / "model.safetensors").exists()
    reloaded = Encoder(tmp_path / "model", device="cpu")
    assert reloaded.encode(["Film 1"]).shape == (1, 384)


def test_no_pairs_is_a_clear_error(tmp_path: Path) -> None:
    catalog = tiny_catalog()
    one_each = Interactions(["a", "b"], ["1", "2"], [1, 2], [5.0, 5.0])
    catalog.interactions = one_each
    with pytest.raises(ValueError, match="no training pairs"):
        train_retriever(
            catalog,
            leave_one_out(one_each),
            tmp_path / "m",
            RetrieverTrainConfig(max_steps=1),
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "m").exists()
