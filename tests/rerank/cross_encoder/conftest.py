"""The reranker suite's tiny catalog, its vectors, the training arguments and one trained model
(shared by the modules that only read it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, ItemTextTemplate, leave_one_out
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from retrieval.vectors import ItemVectors
from tests.conftest import tiny_catalog


def rerank_catalog() -> Catalog:
    catalog = tiny_catalog(n_items=30, n_users=10, per_user=8)
    assert isinstance(catalog, Catalog)
    return catalog


def text_vectors(catalog: Catalog, encoder: Encoder) -> ItemVectors:
    ids = list(catalog.items)
    template = ItemTextTemplate()
    return ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))


TINY = RerankerTrainArgs(
    max_steps=2, batch_size=8, targets_per_user=2, val_users=4, val_candidates=5, hard_pool=5
)
"""The smallest run that trains, validates and saves (tests that only need a folder)."""
CFG = RerankerTrainArgs(
    max_steps=2,
    batch_size=8,
    targets_per_user=3,
    val_users=6,
    val_candidates=10,
    hard_pool=10,
    eval_before=True,
)


@pytest.fixture(scope="package")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Catalog]]:
    encoder = Encoder(device="cpu")
    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    out = tmp_path_factory.mktemp("rr") / "reranker"
    card = train_reranker(catalog, split, text_vectors(catalog, encoder), out, CFG, progress=False)
    assert card["steps"] == 2
    import torch

    # Default device: CUDA when present; the saved weights are the same CPU tensors either way.
    assert card["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    yield out, catalog


def text_reading_net(config: Any) -> tuple[Any, Any]:
    """A fresh net on the bundled MiniLM (eval mode) whose heads are random, so the text part
    shows in the logits and a comparison of two paths can fail."""
    import torch

    from rerank.cross_encoder.model import new_net
    from retrieval.encoder import bundled_model_path

    torch.manual_seed(0)
    net, tokenizer = new_net(str(bundled_model_path()), config)
    net.eval()
    with torch.no_grad():
        net.head.weight.normal_()
        assert net.feature_head is not None
        net.feature_head.weight.normal_()
    return net, tokenizer
