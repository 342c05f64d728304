"""Calibration of a trained reranker on validation: the binary head's fusion of its text logit
with the scalar features (:mod:`rerank.cross_encoder.fusion`: the order from the lists, P(like)
from the likes), or a temperature for the rating head; and refitting that fusion without
retraining."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.fsutil import MODEL, atomic_dir
from catalog.model import Catalog
from catalog.splits import Split
from rerank.cross_encoder.context import prepare_stage
from rerank.cross_encoder.evaluation import (
    ValidationSet,
    validation_logits,
    validation_metrics,
    validation_set,
)
from rerank.cross_encoder.model import RerankerConfig, RerankerNet, save_net
from rerank.cross_encoder.pairs import Example
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.towers import UserTower
from retrieval.vectors import ItemVectors

log = logging.getLogger(__name__)


def fit_temperature(
    logits: npt.NDArray[np.float32], labels: npt.NDArray[np.float64], config: RerankerConfig
) -> float:
    """The temperature (grid over 0.1..100, log-spaced) minimising validation log loss."""
    from rerank.cross_encoder.backends import probability_np

    best_t, best_loss = 1.0, float("inf")
    for t in np.logspace(-1, 2, 121):
        p = np.clip(probability_np(logits, replace(config, temperature=float(t))), 1e-7, 1 - 1e-7)
        loss = float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t


USER_LEVEL = frozenset({"user_rating_deviation"})
"""Features constant within a user's candidate list: they calibrate, they cannot reorder."""


def fit_fusion(
    net: RerankerNet,
    logits_l: npt.NDArray[np.float32],
    logits_c: npt.NDArray[np.float32],
    val: ValidationSet,
    seed: int = 0,
) -> tuple[dict[str, Any], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Refits the binary head's last layer on validation (:mod:`rerank.cross_encoder.fusion`).

    ``logits_l``/``logits_c`` are the net's logits of the labelled pairs and of the flattened
    candidate lists (one validation pass, reused). The fused weights are written into
    ``net.head`` (the text logit's scale) and ``net.feature_head``, so every backend and the
    ONNX export carry them; probabilities stay a sigmoid of one logit.

    Returns:
        The card's record, and the fused logits of the labelled pairs and of the candidates.
    """
    import torch

    from rerank.cross_encoder import fusion

    assert net.feature_head is not None and net.config.head == "binary"
    w_f = net.feature_head.weight.detach()[0].double().cpu().numpy()
    b_f = float(net.feature_head.bias.detach()[0])
    names = tuple(net.config.features)

    def rows(logits: npt.NDArray[np.float32], examples: Sequence[Example]) -> Any:
        feats = np.array([e.features for e in examples], dtype=np.float64).reshape(-1, len(names))
        text = logits[:, 0].astype(np.float64) - (feats @ w_f + b_f)
        return np.column_stack([text, feats])

    labelled, lists = val.labelled, val.lists
    x_l = rows(logits_l, labelled)
    x_c = rows(logits_c, [e for lst in lists for e in lst])
    with_target, targets, start = [], [], 0
    for lst in lists:
        hit = [n for n, e in enumerate(lst) if e.label == 1.0]
        if hit:
            with_target.append(x_c[start : start + len(lst)])
            targets.append(hit[0])
        start += len(lst)
    fit = fusion.fit(
        ("text", *names),
        x_l,
        np.array([e.label for e in labelled]),
        with_target,
        targets,
        user_level=[n for n in names if n in USER_LEVEL],
        seed=seed,
    )
    with torch.no_grad():
        net.head.weight.mul_(float(fit.weights[0]))
        net.head.bias.mul_(float(fit.weights[0]))
        net.feature_head.weight[0] = torch.from_numpy(fit.weights[1:]).to(net.feature_head.weight)
        net.feature_head.bias[0] = fit.bias
    record = {
        "text_scale": float(fit.weights[0]),
        "feature_weights": dict(zip(names, fit.weights[1:].tolist(), strict=True)),
        "bias": fit.bias,
        **fit.record,
    }
    return record, fit.logits(x_l), fit.logits(x_c)


def fuse(
    net: RerankerNet,
    logits: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    cfg: RerankerTrainArgs,
    val: ValidationSet,
    config: RerankerConfig,
    before: dict[str, float],
) -> dict[str, Any]:
    """Fits the fusion and returns the card's calibration record (validation before/after)."""
    fitted, fused_l, fused_c = fit_fusion(net, *logits, val, seed=cfg.seed)
    after = validation_metrics(fused_l[:, None], fused_c[:, None], val, config)
    log.info("validation after fusion %s: %s", fitted, after)
    return {
        "method": "fusion",
        "temperature": 1.0,
        **fitted,
        "before": before,
        "after": after,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "logloss_before": before["logloss"],
        "logloss_after": after["logloss"],
    }


def recalibrate(
    catalog: Catalog,
    split: Split,
    item_vectors: ItemVectors,
    folder: str | Path,
    *,
    tower: UserTower | None = None,
    val_users: int | None = None,
) -> dict[str, Any]:
    """Refits the validation fusion of a saved binary reranker, without retraining.

    For new validation data, or a new first stage of the same kind. The folder is replaced
    atomically (its ONNX exports are dropped: they would be stale; export again).

    Returns:
        The updated model card.

    Raises:
        ValueError: not a binary head with features.
    """
    from rerank.cross_encoder.model import load_net

    root = Path(folder)
    net, tokenizer, config = load_net(root)
    if config.head != "binary" or net.feature_head is None:
        raise ValueError(f"{root}: only a binary head with features has a fusion to refit")
    card: dict[str, Any] = json.loads((root / "duorank-card.json").read_text())
    raw = dict(card["config"])
    raw["features"] = config.features  # today's names (RENAMED) for a folder saved before
    if val_users is not None:
        raw["val_users"] = val_users
    cfg = RerankerTrainArgs(**raw)
    stage = prepare_stage(catalog, split, item_vectors, cfg, tower=tower)
    val = validation_set(catalog, split, stage, cfg)
    logits = validation_logits(net, tokenizer, stage, cfg, val)
    before = validation_metrics(*logits, val, config)
    card["calibration"] = {**fuse(net, logits, cfg, val, config, before), "refitted": True}
    with atomic_dir(root, MODEL) as staging:
        save_net(net, tokenizer, staging, config, card)
    return card
