"""The list-wise loss: lists from the sampled pairs, whole lists per batch, the softmax
cross-entropy of each list's positive, and a training run that uses it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from catalog import leave_one_out
from rerank.cross_encoder.listwise import example_lists, list_batches, listwise_loss
from rerank.cross_encoder.pairs import Example
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from tests.rerank.cross_encoder.conftest import CFG, rerank_catalog, text_vectors


def _example(kind: str) -> Example:
    return Example("u", "Liked: A", "i", float(kind == "positive"), 0, (), kind)


def test_a_list_is_a_positive_and_the_negatives_sampled_for_it() -> None:
    kinds = ["positive", "random", "hard", "dislike", "positive", "hard", "positive", "positive"]
    # The dislike ends the first run; a positive without a negative is no list.
    assert example_lists([_example(k) for k in kinds]) == [[0, 1, 2], [4, 5]]
    assert example_lists([_example("dislike"), _example("hard")]) == []


def test_batches_hold_whole_lists_and_every_list_once() -> None:
    lists = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10]]
    batches = list_batches(lists, batch_size=5, seed=0)
    assert sorted(lst[0] for batch in batches for lst in batch) == [0, 3, 5, 9]
    assert all(sum(map(len, batch)) <= 5 or len(batch) == 1 for batch in batches)
    assert batches == list_batches(lists, batch_size=5, seed=0)  # seeded
    assert list_batches([[0, 1, 2, 3, 4, 5]], batch_size=2, seed=0) == [[[0, 1, 2, 3, 4, 5]]]


def test_the_loss_is_the_positives_softmax_cross_entropy_per_list() -> None:
    import torch

    logits = torch.tensor([2.0, 0.0, 0.0, 1.0, 3.0])  # lists [2, 0, 0] and [1, 3]
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(math.exp(1) / (math.exp(1) + math.exp(3)))
    loss = listwise_loss(logits, [3, 2])
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)


def test_listwise_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="binary head"):
        RerankerTrainArgs(loss="listwise", head="rating")
    with pytest.raises(ValueError, match="needs negatives"):
        RerankerTrainArgs(loss="listwise", random_negatives=0, hard_negatives=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        RerankerTrainArgs(loss="pairwise")


@pytest.mark.slow
def test_a_listwise_run_learns_and_records_its_loss(tmp_path: Path, encoder: Encoder) -> None:
    from rerank import Reranker
    from rerank.cross_encoder.trainer import train_reranker

    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    cfg = replace(CFG, loss="listwise", hard_negatives=3, max_steps=3, eval_before=False)
    card = train_reranker(
        catalog, split, text_vectors(catalog, encoder), tmp_path / "r", cfg, progress=False
    )
    assert card["config"]["loss"] == "listwise"
    assert card["epochs"][0]["train_loss"] > 0 and card["steps"] == 3
    probs = Reranker(tmp_path / "r").score("Liked: Film 1", ["Film 2", "Film 3"], None)
    assert ((probs > 0) & (probs < 1)).all()
