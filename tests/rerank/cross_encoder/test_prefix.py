"""``user_prefix`` attention: the user side computed once gives the whole pair's numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.cross_encoder.model import (
    ITEM_TOKENS,
    RerankerConfig,
    _layer,
    new_net,
    pad_rows,
    read_config,
    split_pair_ids,
)
from rerank.cross_encoder.training_args import FEATURES
from retrieval.encoder import bundled_model_path
from tests.rerank.cross_encoder.conftest import text_reading_net

USER = "Liked, most recent first: Toy Story (1995); Heat (1995). Disliked: Jumanji (1995). "
ITEMS = ["Casino (1995). Genres: Crime, Drama", "Sabrina", "A long item text " * 40]


@pytest.fixture(scope="module")
def prefix_net() -> tuple[Any, Any]:
    return text_reading_net(RerankerConfig(features=FEATURES, attention="user_prefix"))


def _padded(rows: list[list[int]], prefix_len: int = 0) -> tuple[torch.Tensor, ...]:
    return pad_rows(rows, 0, [prefix_len] * len(rows))


def test_the_manual_layer_is_hugging_faces(prefix_net: tuple[Any, Any]) -> None:
    net, tokenizer = prefix_net
    enc = tokenizer([USER] * 2, ITEMS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = net.backbone(**enc).last_hidden_state
        hidden = net.backbone.embeddings(
            input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"]
        )
        mask = enc["attention_mask"].bool()[:, None, None, :]
        for layer in net.backbone.encoder.layer:
            hidden, _, _ = _layer(layer, hidden, mask)
    valid = enc["attention_mask"].bool()
    torch.testing.assert_close(hidden[valid], reference[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("user", [USER, USER * 12])  # the second is cut to fit
def test_user_once_equals_whole_pairs(prefix_net: tuple[Any, Any], user: str) -> None:
    net, tokenizer = prefix_net
    prefix, items = split_pair_ids(tokenizer, user, ITEMS, 160)
    features = torch.randn(len(ITEMS), len(FEATURES))
    with torch.no_grad():
        whole = net(*_padded([prefix + row for row in items], len(prefix)), features)
        ids, mask, _ = _padded(items)
        once = net.prefixed(net.encode_prefix(torch.tensor([prefix])), ids, mask, features)
    torch.testing.assert_close(once, whole, atol=1e-4, rtol=1e-4)
    assert whole.std() > 0.1  # the items' scores differ: the comparison can fail
    # The user's tokens do not see the item: the user side of every pair is the same.
    with torch.no_grad():
        whole_again = net(*_padded([prefix + items[0]] * 2, len(prefix)), features[:2])
    torch.testing.assert_close(whole_again[0], whole[0], atol=1e-4, rtol=1e-4)


def test_pairs_are_cut_from_the_oldest_history_and_fit(prefix_net: tuple[Any, Any]) -> None:
    _, tokenizer = prefix_net
    prefix, items = split_pair_ids(tokenizer, USER, ITEMS[:1], 160)
    assert prefix + items[0] == tokenizer(USER, ITEMS[0])["input_ids"]  # nothing cut
    long_user = USER * 12
    prefix, items = split_pair_ids(tokenizer, long_user, ITEMS, 160)
    full_user = tokenizer(long_user, add_special_tokens=False)["input_ids"]
    assert len(prefix) == 160 - ITEM_TOKENS - 1
    assert prefix[1:-1] == full_user[: len(prefix) - 2]  # the text's start: recent history
    assert all(len(prefix) + len(row) <= 160 for row in items)
    assert len(prefix) + len(items[2]) == 160  # the long item fills what is left
    assert split_pair_ids(tokenizer, USER, [], 160)[1] == []


def test_config_and_backbone_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attention must be one of"):
        RerankerConfig(attention="sparse")
    with pytest.raises(ValueError, match="max_length must be >= 64"):
        RerankerConfig(attention="user_prefix", max_length=40)
    # A folder written before the option existed is a standard cross-encoder.
    (tmp_path / "reranker.json").write_text(json.dumps({"head": "binary"}))
    assert read_config(tmp_path).attention == "full"
    # A backbone with one token type cannot tell the user side from the item side.
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "one-type"
    small = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        type_vocab_size=1,
    )
    BertModel(small).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"needs two token types.*attention 'full'"):
        new_net(str(folder), RerankerConfig(features=(), attention="user_prefix"))
    net, _ = new_net(str(folder), RerankerConfig(features=(), attention="full"))
    assert net.config.attention == "full"
