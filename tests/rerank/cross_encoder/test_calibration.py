"""Refitting the validation fusion of a saved reranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, leave_one_out
from rerank import Reranker
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from tests.rerank.cross_encoder.conftest import text_vectors

pytestmark = pytest.mark.slow


def test_recalibrate_refits_the_fusion_in_place(
    trained: tuple[Path, Catalog], tmp_path: Path, encoder: Encoder
) -> None:
    import shutil

    from safetensors.numpy import load_file

    from rerank.cross_encoder.calibration import recalibrate

    out, catalog = trained
    copy = tmp_path / "rr"
    shutil.copytree(out, copy)
    (copy / "onnx").mkdir(exist_ok=True)
    split = leave_one_out(catalog.interactions)
    card = recalibrate(catalog, split, text_vectors(catalog, encoder), copy, val_users=6)
    fusion = card["calibration"]
    assert fusion["refitted"] and set(fusion["before"]) >= {"auc", "ndcg@10_rerank"}
    assert not (copy / "onnx").exists()  # stale exports are dropped
    head = load_file(str(copy / "head.safetensors"))
    weights = [fusion["feature_weights"][f] for f in Reranker(copy).config.features]
    np.testing.assert_allclose(head["feature_head.weight"][0], weights, rtol=1e-5, atol=1e-6)
    assert json.loads((copy / "duorank-card.json").read_text())["calibration"]["refitted"]
    rating = tmp_path / "rating"
    cfg = RerankerTrainArgs(head="rating", max_steps=1, batch_size=8, val_users=3)
    train_reranker(catalog, split, text_vectors(catalog, encoder), rating, cfg, progress=False)
    with pytest.raises(ValueError, match="only a binary head"):
        recalibrate(catalog, split, text_vectors(catalog, encoder), rating)
