"""Validation of a reranker: the held-out pairs (like/dislike AUC, log loss, calibration) and the
first stage's candidate lists (NDCG@10 of the reranked order next to the retrieval order)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.history import group_histories
from catalog.model import Catalog
from catalog.splits import Split
from catalog.text import likes
from rerank.cross_encoder.collator import collate, to_device
from rerank.cross_encoder.context import Stage
from rerank.cross_encoder.model import RerankerConfig, RerankerNet, pad_rows, split_pair_ids
from rerank.cross_encoder.pairs import Example, user_text_at
from rerank.cross_encoder.training_args import RerankerTrainArgs


@dataclass(frozen=True)
class ValidationSet:
    """What validation scores, built once per run.

    Attributes:
        labelled: the held-out validation pair of each user, labelled like/dislike (for AUC).
        lists: per user, the first stage's candidates as pairs (for NDCG@10); empty where the
            candidates miss the held-out item.
        held: the held-out item of each list.
    """

    labelled: list[Example]
    lists: list[list[Example]]
    held: list[str]


def validation_set(
    catalog: Catalog,
    split: Split,
    stage: Stage,
    cfg: RerankerTrainArgs,
    *,
    every_list: bool = False,
) -> ValidationSet:
    """Held-out validation pairs (for AUC) and, per user, the retrieval candidates (for NDCG).

    The user text and features use the whole training history (all of it precedes the
    validation interaction). A list whose candidates miss the held-out item is left empty
    unless ``every_list``: no order of it can score, so it costs the reranker nothing to skip
    (about two thirds of the lists; NDCG@10 still averages over every user).
    """
    histories = group_histories(split.train, seed=cfg.seed)
    targets = {
        u: (i, bool(liked))
        for u, i, liked in zip(
            split.validation.user_ids.tolist(),
            split.validation.item_ids.tolist(),
            likes(split.validation, cfg.threshold).tolist(),
            strict=True,
        )
    }
    users = sorted(u for u in targets if targets[u][0] in stage.item_text)
    if cfg.val_users is not None and len(users) > cfg.val_users:
        users = sorted(random.Random(cfg.seed).sample(users, cfg.val_users))
    labelled: list[Example] = []
    lists: list[list[Example]] = []
    held: list[str] = []
    vectors = stage.features.user_vectors([histories.get(u, []) for u in users])
    for user_id, uvec in zip(users, vectors, strict=True):
        history = histories.get(user_id, [])
        item_id, liked = targets[user_id]
        text = user_text_at(
            stage.template, catalog.users.get(user_id), history, catalog.items, 2**62
        )
        f = stage.features.features(uvec, [item_id], history)[0]
        labelled.append(
            Example(
                user_id, text, item_id, float(liked), 0, tuple(float(x) for x in f), "validation"
            )
        )
        if not np.any(uvec):
            continue
        seen = {e.item_id for e in history}
        result = stage.features.index.search(uvec[None, :], cfg.val_candidates, exclude=[seen])
        cands = [i for i in result.ids[0] if i in stage.item_text]
        if item_id not in cands and not every_list:
            lists.append([])
            held.append(item_id)
            continue
        feats = stage.features.features(uvec, cands, history)
        lists.append(
            [
                Example(
                    user_id,
                    text,
                    c,
                    float(c == item_id),
                    0,
                    tuple(float(x) for x in feats[j]),
                    "candidate",
                )
                for j, c in enumerate(cands)
            ]
        )
        held.append(item_id)
    return ValidationSet(labelled, lists, held)


def predict_logits(
    net: RerankerNet,
    tokenizer: Any,
    examples: Sequence[Example],
    stage: Stage,
    cfg: RerankerTrainArgs,
    batch_size: int = 64,
) -> npt.NDArray[np.float32]:
    """Logits for examples (eval mode, no grad), in order. A ``user_prefix`` model encodes
    each user text once for all of its examples, as serving does."""
    import torch

    net.eval()
    dev = next(net.parameters()).device
    out = np.zeros((len(examples), net.config.n_outputs), dtype=np.float32)
    attention = net.config.attention
    with torch.inference_mode():
        if attention == "user_prefix":
            by_user: dict[str, list[int]] = {}
            for i, e in enumerate(examples):
                by_user.setdefault(e.user_text, []).append(i)
            for text, members in by_user.items():
                prefix, items = split_pair_ids(
                    tokenizer,
                    text,
                    [stage.item_text[examples[i].item_id] for i in members],
                    cfg.max_length,
                    net.config.item_room,
                )
                user = net.encode_prefix(torch.tensor([prefix], dtype=torch.long, device=dev))
                for start in range(0, len(members), batch_size):
                    rows = items[start : start + batch_size]
                    chosen = members[start : start + batch_size]
                    ids, mask, _ = pad_rows(rows, tokenizer.pad_token_id or 0)
                    feats = torch.tensor(
                        [examples[i].features for i in chosen], dtype=torch.float32
                    ).reshape(len(chosen), len(cfg.features))
                    logits = net.prefixed(user, ids.to(dev), mask.to(dev), feats.to(dev))
                    out[chosen] = logits.float().cpu().numpy()
            return out
        order = np.argsort([len(e.user_text) + len(stage.item_text[e.item_id]) for e in examples])
        for start in range(0, len(examples), batch_size):
            idx = order[start : start + batch_size]
            batch = collate(tokenizer, [examples[i] for i in idx], stage, cfg, torch, attention)
            out[idx] = net(**to_device(batch, dev)).float().cpu().numpy()
    return out


def validation_logits(
    net: RerankerNet,
    tokenizer: Any,
    stage: Stage,
    cfg: RerankerTrainArgs,
    val: ValidationSet,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One validation pass: logits of the labelled pairs and of the flattened candidate lists
    (scored together, so a ``user_prefix`` model encodes each user's side once)."""
    logits = predict_logits(
        net, tokenizer, [*val.labelled, *(e for lst in val.lists for e in lst)], stage, cfg
    )
    return logits[: len(val.labelled)], logits[len(val.labelled) :]


def validation_metrics(
    logits_l: npt.NDArray[Any],
    logits_c: npt.NDArray[Any],
    val: ValidationSet,
    config: RerankerConfig,
) -> dict[str, float]:
    """Validation AUC, log loss, ECE and NDCG@10 of reranking vs retrieval order, from logits."""
    labelled, lists, held = val.labelled, val.lists, val.held
    from metrics import auc, logloss
    from metrics import expected_calibration_error as ece
    from rerank.cross_encoder.backends import probability_np

    probs = probability_np(logits_l, config)
    labels = np.array([e.label for e in labelled])
    cand_probs = probability_np(logits_c, config) if len(logits_c) else np.zeros(0)
    reranked, retrieval = [], []
    pos = 0
    for lst in lists:
        p = cand_probs[pos : pos + len(lst)]
        pos += len(lst)
        retrieval.append([e.item_id for e in lst])
        reranked.append([lst[i].item_id for i in np.argsort(-p, kind="stable")])
    return {
        "auc": auc(probs, labels),
        "logloss": logloss(probs, labels),
        "ece": ece(probs, labels),
        "ndcg@10_rerank": ndcg10(reranked, held),
        "ndcg@10_retrieval": ndcg10(retrieval, held),
        "pairs": float(len(labelled)),
        "lists": float(len(lists)),
        "lists_scored": float(sum(1 for lst in lists if lst)),
    }


def evaluate(
    net: RerankerNet,
    tokenizer: Any,
    stage: Stage,
    cfg: RerankerTrainArgs,
    val: ValidationSet,
    config: RerankerConfig,
) -> dict[str, float]:
    """Validation AUC, log loss, ECE and NDCG@10 of reranking vs retrieval order."""
    return validation_metrics(*validation_logits(net, tokenizer, stage, cfg, val), val, config)


def ndcg10(order_lists: Sequence[Sequence[str]], held: Sequence[str]) -> float:
    """NDCG@10 of each list's held-out item (:func:`metrics.heldout_ndcg`)."""
    from metrics import heldout_ndcg

    return heldout_ndcg(order_lists, held, 10)


def auc_rank(auc: float) -> float:
    """Epochs are kept by validation AUC; one whose validation holds a single class (AUC
    undefined) still ranks above the untrained start (-1), so its training is not thrown away."""
    return auc if auc == auc else -0.5
