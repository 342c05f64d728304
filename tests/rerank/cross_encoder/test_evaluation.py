"""Validation: which lists are scored, and scoring as serving and training do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, leave_one_out
from rerank.cross_encoder.context import prepare_stage
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from tests.rerank.cross_encoder.conftest import rerank_catalog, text_vectors

pytestmark = pytest.mark.slow


def test_validation_scores_only_the_lists_that_can_score(encoder: Encoder) -> None:
    from rerank.cross_encoder.evaluation import ndcg10, validation_set

    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    cfg = RerankerTrainArgs(val_users=None, val_candidates=15)
    stage = prepare_stage(catalog, split, text_vectors(catalog, encoder), cfg)
    full_set = validation_set(catalog, split, stage, cfg, every_list=True)
    kept_set = validation_set(catalog, split, stage, cfg)
    every, held = full_set.lists, full_set.held
    some, held_some = kept_set.lists, kept_set.held
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
    assert ndcg10([[e.item_id for e in lst] for lst in some], held) == ndcg10(orders, held)


def test_validation_scores_as_serving_and_training_do(
    trained: tuple[Path, Catalog], encoder: Encoder
) -> None:
    """A user_prefix model validates with its user side once per user (serving's path); the
    numbers equal the whole pairs training's loss sees."""
    import torch

    from rerank.cross_encoder.collator import collate
    from rerank.cross_encoder.evaluation import predict_logits, validation_set
    from rerank.cross_encoder.model import load_net

    out, catalog = trained
    net, tokenizer, config = load_net(out)
    assert config.attention == "user_prefix"  # the default
    split = leave_one_out(catalog.interactions)
    cfg = RerankerTrainArgs(val_users=None, val_candidates=10)
    stage = prepare_stage(catalog, split, text_vectors(catalog, encoder), cfg)
    val = validation_set(catalog, split, stage, cfg, every_list=True)
    examples = val.labelled + [e for lst in val.lists for e in lst]
    assert len({e.user_text for e in examples}) < len(examples)  # users share their side
    once = predict_logits(net, tokenizer, examples, stage, cfg, batch_size=4)
    with torch.inference_mode():
        whole = net(**collate(tokenizer, examples, stage, cfg, torch, "user_prefix")).numpy()
    np.testing.assert_allclose(once, whole, atol=1e-4)
    assert whole.std() > 0
