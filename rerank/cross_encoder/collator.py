"""Batches of (user text, item text, features) pairs as the network takes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.cross_encoder.context import Stage
from rerank.cross_encoder.model import ITEM_TOKENS, pad_rows, split_pair_ids
from rerank.cross_encoder.pairs import Example
from rerank.cross_encoder.training_args import RerankerTrainArgs


def collate(
    tokenizer: Any,
    examples: Sequence[Example],
    stage: Stage,
    cfg: RerankerTrainArgs,
    torch: Any,
    attention: str = "full",
) -> dict[str, Any]:
    """Whole pairs, padded. ``user_prefix`` pairs are cut as serving cuts them
    (:func:`rerank.cross_encoder.model.split_pair_ids`), so training sees the tokens serving
    scores."""
    features = torch.tensor([e.features for e in examples], dtype=torch.float32).reshape(
        len(examples), len(cfg.features)
    )
    if attention == "user_prefix":
        pairs = [
            split_pair_ids(
                tokenizer,
                e.user_text,
                [stage.item_text[e.item_id]],
                cfg.max_length,
                ITEM_TOKENS if cfg.item_layers else None,
            )
            for e in examples
        ]
        ids, mask, types = pad_rows(
            [prefix + items[0] for prefix, items in pairs],
            tokenizer.pad_token_id or 0,
            [len(prefix) for prefix, _ in pairs],
        )
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "features": features,
        }
    enc = tokenizer(
        [e.user_text for e in examples],
        [stage.item_text[e.item_id] for e in examples],
        truncation=True,
        max_length=cfg.max_length,
        padding=True,
        return_tensors="pt",
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])),
        "features": features,
    }


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch's tensors on the network's device (batches are built on the CPU)."""
    return {k: v.to(device) for k, v in batch.items()}
