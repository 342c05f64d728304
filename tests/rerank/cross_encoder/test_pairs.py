"""Training pairs: the user text and features see only the history before each target."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from catalog import leave_one_out
from catalog.history import group_histories
from rerank.cross_encoder.context import prepare_stage
from rerank.cross_encoder.pairs import build_examples
from retrieval.encoder import Encoder
from tests.rerank.cross_encoder.conftest import CFG, rerank_catalog, text_vectors

pytestmark = pytest.mark.slow


def test_user_text_only_sees_history_before_the_target(encoder: Encoder) -> None:
    catalog = rerank_catalog()
    split = leave_one_out(catalog.interactions)
    stage = prepare_stage(catalog, split, text_vectors(catalog, encoder), CFG)
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
    assert names == (
        "retrieval_score",
        "log_popularity",
        "item_rating_deviation",
        "user_rating_deviation",
    )
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


def test_a_folder_saved_with_the_old_rating_feature_names_reads_as_today(tmp_path: Path) -> None:
    import json

    from rerank.cross_encoder.model import read_config

    (tmp_path / "reranker.json").write_text(
        json.dumps({"features": ["retrieval_score", "item_mean_rating", "user_mean_rating"]})
    )
    assert read_config(tmp_path).features == (
        "retrieval_score",
        "item_rating_deviation",
        "user_rating_deviation",
    )
