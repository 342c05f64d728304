"""Item layers (lever 1 of the latency issue): the item side's lower layers read the item
alone, so its states are computed once per item, cached in Redis and reused by every user."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from catalog import Catalog, leave_one_out, save_catalog
from duorank.cli import cli
from rerank import Reranker, export_onnx
from rerank.cross_encoder.model import (
    ITEM_TOKENS,
    RerankerConfig,
    new_net,
    pad_rows,
    prefix_hidden,
    save_net,
    split_pair_ids,
)
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import FEATURES
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder, bundled_model_path
from tests.rerank.cross_encoder.conftest import CFG, text_reading_net, text_vectors

USER = "Liked, most recent first: Toy Story (1995); Heat (1995). Disliked: Jumanji (1995). "
ITEMS = ["Casino (1995). Genres: Crime, Drama", "Sabrina", "A long item text " * 40]
CONFIG = RerankerConfig(features=FEATURES, attention="user_prefix", item_layers=3)


@pytest.fixture(scope="module")
def split_net() -> tuple[Any, Any]:
    return text_reading_net(CONFIG)


def _whole(net: Any, prefix: list[int], items: list[list[int]], features: Any) -> Any:
    ids, mask, types = pad_rows([prefix + row for row in items], 0, [len(prefix)] * len(items))
    return net(ids, mask, types, features)


@pytest.mark.parametrize("user", [USER, USER * 12])  # the second is cut to fit
def test_cached_item_states_give_the_whole_pairs_numbers(
    split_net: tuple[Any, Any], user: str
) -> None:
    net, tokenizer = split_net
    prefix, items = split_pair_ids(tokenizer, user, ITEMS, 160, CONFIG.item_room)
    assert max(len(r) for r in items) == ITEM_TOKENS + 1  # the long item is cut to its room
    features = torch.randn(len(ITEMS), len(FEATURES))
    with torch.no_grad():
        whole = _whole(net, prefix, items, features)  # training's path: masks over the pair
        ids, mask, _ = pad_rows(items, 0)
        states = net.item_states(ids, mask)  # no user anywhere
        served = net.prefixed(
            net.encode_prefix(torch.tensor([prefix])), ids, mask, features, states
        )
    torch.testing.assert_close(served, whole, atol=1e-4, rtol=1e-4)
    assert whole.std() > 0.1  # the items' scores differ: the comparison can fail


def test_the_lower_layers_never_see_the_user(split_net: tuple[Any, Any]) -> None:
    """Training's masks over whole pairs of one item with two users: the item's states after
    the item layers are the same for both and equal to the item encoded alone; the final
    logits differ (the upper layers read the user)."""
    net, tokenizer = split_net
    lower = SimpleNamespace(  # the backbone cut after the item layers, for training's path
        embeddings=net.backbone.embeddings,
        encoder=SimpleNamespace(layer=net.backbone.encoder.layer[: CONFIG.item_layers]),
        config=net.backbone.config,
        training=False,
    )
    ids, mask, _ = pad_rows(split_pair_ids(tokenizer, "", ITEMS[:1], 160, CONFIG.item_room)[1], 0)
    logits = []
    with torch.no_grad():
        alone = net.item_states(ids, mask)[0]
        for user in (USER, "Liked: Sabrina (1995)"):
            prefix, items = split_pair_ids(tokenizer, user, ITEMS[:1], 160, CONFIG.item_room)
            pair = pad_rows([prefix + items[0]], 0, [len(prefix)])
            hidden = prefix_hidden(lower, *pair, CONFIG.item_layers, CONFIG.item_start)
            torch.testing.assert_close(hidden[0, len(prefix) :], alone, atol=1e-5, rtol=1e-5)
            logits.append(_whole(net, prefix, items, torch.zeros(1, len(FEATURES))))
    assert not torch.allclose(logits[0], logits[1])


def test_the_reranker_reads_states_from_redis(
    split_net: tuple[Any, Any],
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    net, tokenizer = split_net
    save_net(net, tokenizer, tmp_path / "split", CONFIG)
    client = redis.Redis.from_url(redis_url)
    cache = EmbeddingCache(client, namespace=namespace, dtype="float16")
    features = np.random.default_rng(0).random((len(ITEMS), len(FEATURES))).astype(np.float32)
    cold = Reranker(tmp_path / "split", item_cache=cache)
    first = cold.score(USER, ITEMS, features)
    assert cache.stats.writes == len(ITEMS) and cache.stats.hits == 0
    # Another process's reranker: every state from Redis, the transformer's lower layers idle.
    warm = Reranker(tmp_path / "split", item_cache=cache)

    def no_lower_pass(*_a: object) -> None:
        raise AssertionError("the item layers ran")

    monkeypatch.setattr(warm.core, "item_states", no_lower_pass)
    np.testing.assert_array_equal(warm.score(USER, ITEMS, features), first)
    assert cache.stats.hits == len(ITEMS)
    # Without a cache the same float16-rounded states are computed: the same scores.
    np.testing.assert_array_equal(Reranker(tmp_path / "split").score(USER, ITEMS, features), first)
    # And the served numbers are the whole pairs' (float16 states: a looser tolerance).
    prefix, items = split_pair_ids(tokenizer, USER, ITEMS, 160, CONFIG.item_room)
    with torch.no_grad():
        whole = torch.sigmoid(_whole(net, prefix, items, torch.from_numpy(features))[:, 0])
    np.testing.assert_allclose(first, whole.numpy(), atol=2e-3)
    states = warm.item_states(ITEMS)
    assert [s.shape for s in states] == [(len(r), 384) for r in items]
    stored = client.get(cache.key(warm._states_key, ITEMS[0]))
    assert stored is not None and len(stored) == len(items[0]) * 384 * 2  # float16


def test_item_layers_are_trained_saved_and_refused_where_they_cannot_serve(
    tmp_path: Path, encoder: Encoder, trained: tuple[Path, Catalog]
) -> None:
    from dataclasses import replace

    catalog = trained[1]
    out = tmp_path / "split"
    card = train_reranker(
        catalog,
        leave_one_out(catalog.interactions),
        text_vectors(catalog, encoder),
        out,
        replace(CFG, item_layers=3, eval_before=False),
        progress=False,
    )
    assert card["config"]["item_layers"] == 3
    assert json.loads((out / "reranker.json").read_text())["item_layers"] == 3
    # The nightly step fills the cache (the home's embedded Redis); a second run finds it.
    save_catalog(catalog, tmp_path / "data")
    args = ["--home", str(tmp_path / "home"), "rerank", "cache-items", str(out)]
    args += ["--data", str(tmp_path / "data")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    n = len(catalog.items)
    assert f"{n} items: {n} states written, 0 already cached" in first.output
    again = CliRunner().invoke(cli, args)
    assert f"{n} items: 0 states written, {n} already cached" in again.output
    with pytest.raises(ValueError, match=r"has item layers: .* nothing to export"):
        export_onnx(out)
    with pytest.raises(ValueError, match="item_layers needs attention 'user_prefix'"):
        RerankerConfig(attention="full", item_layers=2)
    with pytest.raises(ValueError, match="item_layers must be below the backbone's 6 layers"):
        new_net(str(bundled_model_path()), replace(CONFIG, item_layers=6))


def test_cache_items_refuses_a_model_without_item_layers(
    trained: tuple[Path, Catalog], tmp_path: Path
) -> None:
    folder, catalog = trained
    save_catalog(catalog, tmp_path / "data")
    args = ["--home", str(tmp_path / "home"), "rerank", "cache-items", str(folder)]
    result = CliRunner().invoke(cli, [*args, "--data", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert f"{folder} has no item layers" in result.output
    assert not (tmp_path / "home").exists()  # refused before any Redis or home was opened
