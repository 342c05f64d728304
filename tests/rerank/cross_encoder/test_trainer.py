"""Training: devices, frozen layers, both heads, the saved folder, resuming."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalog import Catalog, ItemTextTemplate, leave_one_out
from rerank import Reranker
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from tests.rerank.cross_encoder.conftest import CFG, TINY, rerank_catalog, text_vectors

pytestmark = pytest.mark.slow


def test_a_device_torch_cannot_use_fails_before_any_work(tmp_path: Path, encoder: Encoder) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    out = tmp_path / "reranker"
    with pytest.raises(ValueError, match="no CUDA device"):
        train_reranker(
            catalog, split, text_vectors(catalog, encoder), out, CFG, progress=False, device="cuda"
        )
    assert not out.exists() and not Path(str(out) + ".checkpoint").exists()


def test_frozen_layers_keep_their_pretrained_weights(tmp_path: Path, encoder: Encoder) -> None:
    from dataclasses import replace

    from transformers import AutoModel

    from retrieval.encoder import bundled_model_path

    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    vectors = text_vectors(catalog, encoder)
    with pytest.raises(ValueError, match=r"freeze_layers must be in 0\.\.5 .* got 6"):
        train_reranker(
            catalog, split, vectors, tmp_path / "bad", replace(CFG, freeze_layers=6), progress=False
        )
    assert not (tmp_path / "bad").exists()
    cfg = replace(CFG, freeze_layers=5, eval_before=False, calibrate=False)
    card = train_reranker(catalog, split, vectors, tmp_path / "r", cfg, progress=False)
    assert card["config"]["freeze_layers"] == 5
    # The tiny validation holds likes only (AUC undefined): the trained epoch is kept anyway.
    assert np.isnan(card["epochs"][0]["auc"])
    base = AutoModel.from_pretrained(str(bundled_model_path())).state_dict()
    tuned = AutoModel.from_pretrained(str(tmp_path / "r" / "backbone")).state_dict()
    frozen = [
        k for k in base if k.startswith("embeddings.") or re.match(r"encoder\.layer\.[0-4]\.", k)
    ]
    top = [k for k in base if k.startswith("encoder.layer.5.")]
    assert frozen and top
    assert all(base[k].equal(tuned[k]) for k in frozen)
    assert not all(base[k].equal(tuned[k]) for k in top)  # the top layer learned


def test_binary_head_saves_a_standard_folder(trained: tuple[Path, Catalog]) -> None:
    out, catalog = trained
    assert (out / "backbone" / "model.safetensors").exists()
    assert (out / "head.safetensors").exists()
    card = json.loads((out / "duorank-card.json").read_text())
    assert set(card["epochs"][0]) >= {"auc", "logloss", "ece", "ndcg@10_rerank"}
    assert set(card["before_training"]) >= {"auc", "ndcg@10_rerank", "ndcg@10_retrieval"}
    # The fusion fitted on validation is written into the saved head (every backend has it).
    fusion = card["calibration"]
    assert fusion["method"] == "fusion" and fusion["temperature"] == 1.0
    from safetensors.numpy import load_file

    head = load_file(str(out / "head.safetensors"))
    weights = [fusion["feature_weights"][f] for f in Reranker(out).config.features]
    np.testing.assert_allclose(head["feature_head.weight"][0], weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head["feature_head.bias"][0], fusion["bias"], rtol=1e-5, atol=1e-6)
    assert not Path(str(out) + ".checkpoint").exists()
    reranker = Reranker(out)
    texts = [ItemTextTemplate().render(catalog.items[str(i)]) for i in range(10)]
    probs = reranker.score("Liked, most recent first: Film 3; Film 7", texts, np.zeros((10, 4)))
    assert probs.shape == (10,) and ((probs > 0) & (probs < 1)).all()
    ranked = reranker.rerank("Liked: Film 3", [str(i) for i in range(10)], texts, k=4)
    assert len(ranked) == 4
    assert [r.probability for r in ranked] == sorted((r.probability for r in ranked), reverse=True)


def test_a_card_gives_back_the_arguments_it_was_trained_with(
    trained: tuple[Path, Catalog],
) -> None:
    out, _ = trained
    card = json.loads((out / "duorank-card.json").read_text())
    assert RerankerTrainArgs.of_card(card) == CFG
    # A card from before a field existed (and with the old feature names) reads as today's.
    old = {"config": {**card["config"], "features": ["retrieval_score", "item_mean_rating"]}}
    del old["config"]["loss"]
    args = RerankerTrainArgs.of_card(old)
    assert args.loss == "pointwise"
    assert args.features == ("retrieval_score", "item_rating_deviation")


def test_rating_head(tmp_path: Path, encoder: Encoder) -> None:
    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    cfg = replace(TINY, head="rating", max_steps=1, calibrate=False)
    train_reranker(
        catalog, split, text_vectors(catalog, encoder), tmp_path / "r", cfg, progress=False
    )
    reranker = Reranker(tmp_path / "r")
    assert reranker.config.head == "rating" and reranker.config.levels == (2.0, 5.0)
    probs = reranker.score("Liked: Film 1", ["Film 2", "Film 3"], np.zeros((2, 4)))
    assert ((probs >= 0) & (probs <= 1)).all()


def test_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rerank.cross_encoder.trainer as train_module

    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    vectors = text_vectors(catalog, encoder)
    cfg = RerankerTrainArgs(
        epochs=2,
        batch_size=8,
        targets_per_user=1,
        val_users=3,
        val_candidates=5,
        hard_pool=5,
        patience=5,
        calibrate=False,
    )
    real = train_module.validation_logits  # one validation pass
    calls = {"n": 0}

    def crash_in_second_epoch(*args: object, **kwargs: object) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # after epoch 1, after epoch 2 -> crash here
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "validation_logits", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_reranker(catalog, split, vectors, tmp_path / "r", cfg, progress=False)
    checkpoint = Path(str(tmp_path / "r") + ".checkpoint")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / "r").exists()
    monkeypatch.setattr(train_module, "validation_logits", real)
    card = train_reranker(catalog, split, vectors, tmp_path / "r", cfg, resume=True, progress=False)
    assert [e["epoch"] for e in card["epochs"]] == [1, 2]
    assert card["steps"] == 2 * state["step"]
    assert (tmp_path / "r" / "reranker.json").exists() and not checkpoint.exists()
