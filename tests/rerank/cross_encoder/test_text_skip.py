"""A reranker whose head gives the text no weight scores from its features alone: the same
numbers without the transformer pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from catalog import Catalog
from rerank import Reranker

ITEMS = ["Toy Story (1995) Adventure|Animation", "Heat (1995) Action|Crime", "Up (2009)"]


def _with_head(trained: Path, out: Path, text_weight: float) -> Path:
    """A copy of ``trained`` whose text weights are all ``text_weight`` and whose feature head
    is a plain, moderate one (the tiny fixture's own fusion is extreme)."""
    shutil.copytree(trained, out)
    head = load_file(str(out / "head.safetensors"))
    head["head.weight"] = torch.full_like(head["head.weight"], text_weight)
    head["feature_head.weight"] = torch.tensor([[1.0, 0.5, -0.5, 0.2]])
    head["feature_head.bias"] = torch.tensor([-0.3])
    save_file(head, str(out / "head.safetensors"))
    return out


def test_no_text_weight_no_transformer_pass_same_scores(
    trained: tuple[Path, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _with_head(trained[0], tmp_path / "zero-text", 0.0)
    features = np.random.default_rng(0).random((len(ITEMS), 4)).astype(np.float32)
    full = Reranker(folder, skip_unweighted_text=False)
    assert full.features_only is None
    expected = full.score("liked: Jumanji (1995)", ITEMS, features)
    skipping = Reranker(folder)
    assert skipping.features_only is not None
    assert skipping._core is None and skipping.backend == "torch"  # the transformer not loaded

    def no_pass(*_a: object, **_k: object) -> None:
        raise AssertionError("the transformer ran")

    monkeypatch.setattr(skipping.core, "logits", no_pass)
    monkeypatch.setattr(skipping.core, "prefixed_logits", no_pass)
    got = skipping.score("liked: Jumanji (1995)", ITEMS, features)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.all((got > 0.05) & (got < 0.95)) and len(set(got.tolist())) == len(ITEMS)
    # The features still move the score; the text no longer can.
    np.testing.assert_array_equal(got, skipping.score("another user entirely", ITEMS, features))


def test_a_head_that_reads_the_text_runs_the_pass(
    trained: tuple[Path, Catalog], tmp_path: Path
) -> None:
    model = Reranker(_with_head(trained[0], tmp_path / "text", 0.05))
    assert model.features_only is None
    one = model.score("liked: Jumanji (1995)", ITEMS[:1], np.zeros((1, 4)))
    other = model.score("liked: Heat (1995)", ITEMS[:1], np.zeros((1, 4)))
    assert one[0] != other[0]  # the text is read
