"""The point-wise reranker: both heads, no leakage, backends in agreement, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalog import Catalog, ItemTextTemplate, leave_one_out
from catalog.history import group_histories
from rerank import Reranker
from rerank.data import build_examples
from rerank.train import RerankerTrainConfig, prepare_stage, train_reranker
from retrieval.encoder import Encoder
from retrieval.vectors import ItemVectors
from tests.conftest import tiny_catalog

pytestmark = pytest.mark.slow


def _catalog() -> Catalog:
    catalog = tiny_catalog(n_items=30, n_users=10, per_user=8)
    assert isinstance(catalog, Catalog)
    return catalog


def _vectors(catalog: Catalog, encoder: Encoder) -> ItemVectors:
    ids = list(catalog.items)
    template = ItemTextTemplate()
    return ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))


CFG = RerankerTrainConfig(
    max_steps=2,
    batch_size=8,
    targets_per_user=3,
    val_users=6,
    val_candidates=10,
    hard_pool=10,
    eval_before=True,
)


def test_user_text_only_sees_history_before_the_target(encoder: Encoder) -> None:
    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    stage = prepare_stage(catalog, split, _vectors(catalog, encoder), CFG)
    histories = group_histories(split.train)
    examples = build_examples(
        histories,
        catalog.users,
        catalog.items,
        stage.item_text,
        stage.features,
        stage.template,
        targets_per_user=5,
        random_negatives=1,
        hard_negatives=1,
        hard_pool=10,
        threshold=4.0,
        levels=(),
        seed=0,
    )
    assert {e.kind for e in examples} >= {"positive", "dislike", "random", "hard"}
    held_out = set(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    ) | set(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True))
    for e in examples:
        mentioned = set(re.findall(r"Film (\d+)", e.user_text))
        earlier = {h.item_id for h in histories[e.user_id] if h.timestamp < e.timestamp}
        assert mentioned <= earlier, (e, mentioned - earlier)
        if e.kind in ("positive", "dislike"):  # labels come from training interactions only
            assert (e.user_id, e.item_id) not in held_out
            assert e.item_id not in mentioned

    # The rating features see neither the pair's own rating nor anything after it.
    train = split.train
    rated = ~np.isnan(train.ratings)
    mean = float(train.ratings[rated].mean())
    names = stage.features.names
    assert names == ("retrieval_score", "log_popularity", "item_mean_rating", "user_mean_rating")
    for e in (e for e in examples if e.kind in ("positive", "dislike")):
        own = next(h for h in histories[e.user_id] if h.timestamp == e.timestamp)
        others = [
            float(r)
            for u, i, r in zip(train.user_ids, train.item_ids, train.ratings, strict=True)
            if i == e.item_id and u != e.user_id
        ]
        assert own.item_id == e.item_id and own.rating is not None
        expected_item = (sum(others) + 5 * mean) / (len(others) + 5) - mean
        earlier = [h.rating for h in histories[e.user_id] if h.timestamp < e.timestamp]
        expected_user = (sum(earlier) + 5 * mean) / (len(earlier) + 5) - mean  # type: ignore[arg-type]
        assert e.features[2] == pytest.approx(expected_item, abs=1e-4)
        assert e.features[3] == pytest.approx(expected_user, abs=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Catalog]]:
    encoder = Encoder(device="cpu")
    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    out = tmp_path_factory.mktemp("rr") / "reranker"
    card = train_reranker(catalog, split, _vectors(catalog, encoder), out, CFG, progress=False)
    assert card["steps"] == 2
    import torch

    # Default device: CUDA when present; the saved weights are the same CPU tensors either way.
    assert card["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    yield out, catalog


def test_a_device_torch_cannot_use_fails_before_any_work(tmp_path: Path, encoder: Encoder) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    out = tmp_path / "reranker"
    with pytest.raises(ValueError, match="no CUDA device"):
        train_reranker(
            catalog, split, _vectors(catalog, encoder), out, CFG, progress=False, device="cuda"
        )
    assert not out.exists() and not Path(str(out) + ".checkpoint").exists()


def test_frozen_layers_keep_their_pretrained_weights(tmp_path: Path, encoder: Encoder) -> None:
    from dataclasses import replace

    from transformers import AutoModel

    from retrieval.encoder import bundled_model_path

    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    vectors = _vectors(catalog, encoder)
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


def test_empty_unknown_and_bad_features(trained: tuple[Path, Catalog]) -> None:
    out, _ = trained
    reranker = Reranker(out)
    assert reranker.score("x", []).shape == (0,)
    assert reranker.rerank("x", [], [], k=5) == []
    with pytest.raises(KeyError, match="unknown item id 'nope'"):
        reranker.rerank_items("x", ["1", "nope"], {"1": "Film 1"}, k=2)
    with pytest.raises(ValueError, match=r"features must have shape \(2, 4\)"):
        reranker.score("x", ["a", "b"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown backend"):
        Reranker(out, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="not a reranker folder"):
        Reranker(out / "backbone")


def test_backends_agree(trained: tuple[Path, Catalog]) -> None:
    from rerank import export_onnx

    out, catalog = trained
    written = export_onnx(out)
    # Whole pairs, then (user_prefix) the user side and the item side as two graphs; int8 of each.
    names = ["model.onnx", "user.onnx", "items.onnx"]
    assert [p.name for p in written] == names + [n.replace(".", "-int8.") for n in names]
    # The heads stay fp32 in the int8 file: quantizing the feature head's input would put the
    # retrieval score, popularity and ratings on one 8-bit scale.
    import onnx

    from rerank.inference import _head_nodes

    assert len(_head_nodes(written[0])) == 4  # two Gemms, and the MatMuls they become
    for int8 in (written[3], written[5]):  # the whole pairs, the item side
        int8_nodes = onnx.load(str(int8)).graph.node
        quantized = [n.name for n in int8_nodes if n.op_type == "MatMulInteger"]
        assert quantized and not [n for n in quantized if "head/" in n], int8.name
    texts = [ItemTextTemplate().render(item) for item in catalog.items.values()]
    rng = np.random.default_rng(0)
    n = len(texts)
    feats = np.stack(
        [rng.uniform(-0.2, 0.9, n), rng.uniform(0, 1, n), *rng.uniform(-1, 1, (2, n))], axis=1
    )
    user = "Liked, most recent first: Film 3; Film 7; Film 11. Disliked: Film 2"
    # With the features the default model reads, every backend; the text part alone (whose
    # scores barely differ after two training steps) for the float backends. Int8 on the text
    # alone of a fully trained model is measured by `duorank bench rerank`.
    for features, backends in (
        (feats, ("torch-bf16", "onnx", "onnx-int8")),
        (np.zeros_like(feats), ("torch-bf16", "onnx")),
    ):
        reference = Reranker(out).score(user, texts, features)
        for backend in backends:
            other = Reranker(out, backend=backend).score(user, texts, features)
            rho = _spearman(reference, other)
            assert rho >= 0.98, (backend, rho)
    reference = Reranker(out).score(user, texts, feats)
    onnx_fp32 = Reranker(out, backend="onnx")
    assert onnx_fp32.core.prefix_once  # the two graphs: the user side once, as torch does
    np.testing.assert_allclose(onnx_fp32.score(user, texts, feats), reference, atol=1e-4)
    onnx_fp32.core.prefix_once = False  # the whole-pair graph gives the same numbers
    np.testing.assert_allclose(onnx_fp32.score(user, texts, feats), reference, atol=1e-4)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_onnx_loads_without_training_code(trained: tuple[Path, Catalog]) -> None:
    import onnxruntime as ort

    out, _ = trained
    if not (out / "onnx" / "model.onnx").exists():
        from rerank import export_onnx

        export_onnx(out, quantize=False)
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids", "features"]
    user = ort.InferenceSession(str(out / "onnx" / "user.onnx"))
    items = ort.InferenceSession(str(out / "onnx" / "items.onnx"))
    assert [i.name for i in user.get_inputs()] == ["prefix_ids"]
    assert [i.name for i in items.get_inputs()] == [
        "input_ids",
        "attention_mask",
        "past",
        "total",
        "features",
    ]


def test_rating_head(tmp_path: Path, encoder: Encoder) -> None:
    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    cfg = RerankerTrainConfig(
        head="rating",
        max_steps=1,
        batch_size=8,
        targets_per_user=2,
        val_users=4,
        val_candidates=5,
        hard_pool=5,
        calibrate=False,
    )
    train_reranker(catalog, split, _vectors(catalog, encoder), tmp_path / "r", cfg, progress=False)
    reranker = Reranker(tmp_path / "r")
    assert reranker.config.head == "rating" and reranker.config.levels == (2.0, 5.0)
    probs = reranker.score("Liked: Film 1", ["Film 2", "Film 3"], np.zeros((2, 4)))
    assert ((probs >= 0) & (probs <= 1)).all()


def test_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rerank.train as train_module

    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    vectors = _vectors(catalog, encoder)
    cfg = RerankerTrainConfig(
        epochs=2,
        batch_size=8,
        targets_per_user=1,
        val_users=3,
        val_candidates=5,
        hard_pool=5,
        patience=5,
        calibrate=False,
    )
    real = train_module._val_logits  # one validation pass
    calls = {"n": 0}

    def crash_in_second_epoch(*args: object, **kwargs: object) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # after epoch 1, after epoch 2 -> crash here
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "_val_logits", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_reranker(catalog, split, vectors, tmp_path / "r", cfg, progress=False)
    checkpoint = Path(str(tmp_path / "r") + ".checkpoint")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / "r").exists()
    monkeypatch.setattr(train_module, "_val_logits", real)
    card = train_reranker(catalog, split, vectors, tmp_path / "r", cfg, resume=True, progress=False)
    assert [e["epoch"] for e in card["epochs"]] == [1, 2]
    assert card["steps"] == 2 * state["step"]
    assert (tmp_path / "r" / "reranker.json").exists() and not checkpoint.exists()


def test_recalibrate_refits_the_fusion_in_place(
    trained: tuple[Path, Catalog], tmp_path: Path, encoder: Encoder
) -> None:
    import shutil

    from safetensors.numpy import load_file

    from rerank.train import recalibrate

    out, catalog = trained
    copy = tmp_path / "rr"
    shutil.copytree(out, copy)
    (copy / "onnx").mkdir(exist_ok=True)
    split = leave_one_out(catalog.interactions)
    card = recalibrate(catalog, split, _vectors(catalog, encoder), copy, val_users=6)
    fusion = card["calibration"]
    assert fusion["refitted"] and set(fusion["before"]) >= {"auc", "ndcg@10_rerank"}
    assert not (copy / "onnx").exists()  # stale exports are dropped
    head = load_file(str(copy / "head.safetensors"))
    weights = [fusion["feature_weights"][f] for f in Reranker(copy).config.features]
    np.testing.assert_allclose(head["feature_head.weight"][0], weights, rtol=1e-5, atol=1e-6)
    assert json.loads((copy / "duorank-card.json").read_text())["calibration"]["refitted"]
    rating = tmp_path / "rating"
    cfg = RerankerTrainConfig(head="rating", max_steps=1, batch_size=8, val_users=3)
    train_reranker(catalog, split, _vectors(catalog, encoder), rating, cfg, progress=False)
    with pytest.raises(ValueError, match="only a binary head"):
        recalibrate(catalog, split, _vectors(catalog, encoder), rating)


def test_validation_scores_only_the_lists_that_can_score(encoder: Encoder) -> None:
    from rerank.train import _ndcg10, validation_examples

    catalog = _catalog()
    split = leave_one_out(catalog.interactions)
    cfg = RerankerTrainConfig(val_users=None, val_candidates=15)
    stage = prepare_stage(catalog, split, _vectors(catalog, encoder), cfg)
    _, every, held = validation_examples(catalog, split, stage, cfg, every_list=True)
    _, some, held_some = validation_examples(catalog, split, stage, cfg)
    assert held_some == held and len(some) == len(every) == len(held)
    skipped = 0
    for full, kept, target in zip(every, some, held, strict=True):
        if any(e.item_id == target for e in full):
            assert [e.item_id for e in kept] == [e.item_id for e in full]
        else:
            assert kept == []
            skipped += 1
    assert 0 < skipped < len(held)  # some of each at 15 candidates out of 30 items
    # NDCG@10 still averages over every user: the skipped lists count as the zeros they are.
    orders = [[e.item_id for e in lst] for lst in every]
    assert _ndcg10([[e.item_id for e in lst] for lst in some], held) == _ndcg10(orders, held)


def test_validation_scores_as_serving_and_training_do(
    trained: tuple[Path, Catalog], encoder: Encoder
) -> None:
    """A user_prefix model validates with its user side once per user (serving's path); the
    numbers equal the whole pairs training's loss sees."""
    import torch

    from rerank.model import load_net
    from rerank.train import _batch, predict_logits, validation_examples

    out, catalog = trained
    net, tokenizer, config = load_net(out)
    assert config.attention == "user_prefix"  # the default
    split = leave_one_out(catalog.interactions)
    cfg = RerankerTrainConfig(val_users=None, val_candidates=10)
    stage = prepare_stage(catalog, split, _vectors(catalog, encoder), cfg)
    labelled, lists, _ = validation_examples(catalog, split, stage, cfg, every_list=True)
    examples = labelled + [e for lst in lists for e in lst]
    assert len({e.user_text for e in examples}) < len(examples)  # users share their side
    once = predict_logits(net, tokenizer, examples, stage, cfg, batch_size=4)
    with torch.inference_mode():
        whole = net(**_batch(tokenizer, examples, stage, cfg, torch, "user_prefix")).numpy()
    np.testing.assert_allclose(once, whole, atol=1e-4)
    assert whole.std() > 0
