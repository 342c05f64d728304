"""`duorank train reranker`: fine-tunes the point-wise cross-encoder on the training split.

Each epoch ends with validation: like/dislike AUC, log loss and expected calibration error of the
held-out validation interactions, and NDCG@10 of reranking the retrieval stage's top candidates
(next to the retrieval order's own NDCG@10 on the same lists). The best epoch by validation AUC
is kept; then a fusion of its text logit and the scalar features (binary head,
:func:`fit_fusion`) or a temperature (rating head), fitted on validation, calibrates the
probabilities. Checkpoints at the end of each epoch let ``--resume`` continue an interrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.fsutil import atomic_dir
from catalog.history import group_histories
from catalog.model import Catalog
from catalog.splits import Split
from catalog.text import ItemTextTemplate, UserTextTemplate
from catalog.thresholds import LIKE_THRESHOLD
from rerank.data import (
    Example,
    FeatureMaker,
    RatingStats,
    build_examples,
    item_texts,
    user_text_at,
)
from rerank.model import (
    DEFAULT_FEATURES,
    RerankerConfig,
    RerankerNet,
    new_net,
    pad_rows,
    save_net,
    split_pair_ids,
)
from retrieval.index import FlatIndex
from retrieval.towers import MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankerTrainConfig:
    """Hyperparameters (recorded in the model card).

    Attributes:
        head: ``binary`` or ``rating``.
        epochs, batch_size, lr, warmup_ratio, max_steps: optimisation (``lr``: the backbone).
        head_lr: learning rate of the linear heads over the pooled text and the features.
        targets_per_user: most recent training events per user used as targets.
        random_negatives, hard_negatives: sampled negatives per positive.
        hard_pool: hard negatives come from the retrieval stage's top ``hard_pool``.
        threshold: rating at or above = like.
        max_length: token cap of a pair.
        max_liked, max_disliked: history items in the user text.
        features: scalar features beside the text (empty tuple for text only).
        val_users: validate on a seeded sample of this many users (None = all).
        val_candidates: retrieval candidates reranked for validation NDCG@10.
        patience: epochs without AUC improvement before stopping.
        calibrate: fit the fusion (binary head) or a temperature (rating head) on validation.
        eval_before: also validate the untrained model (a baseline for the card; one more
            validation pass, minutes on a CPU).
        attention: ``user_prefix`` (the user side computed once per user at serving) or
            ``full`` (a standard cross-encoder); see :mod:`rerank.model`.
        freeze_layers: the backbone's token embeddings and its first ``freeze_layers``
            transformer layers stay as pretrained (0: fine-tune all): backward then stops
            above them, so steps are cheaper (results: docs/results.md).
        seed: seeds Python, numpy and torch.
    """

    head: str = "binary"
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    head_lr: float = 1e-3
    warmup_ratio: float = 0.1
    max_steps: int | None = None
    targets_per_user: int = 10
    random_negatives: int = 1
    hard_negatives: int = 1
    hard_pool: int = 50
    threshold: float = LIKE_THRESHOLD
    max_length: int = 160
    max_liked: int = 10
    max_disliked: int = 5
    features: tuple[str, ...] = DEFAULT_FEATURES
    val_users: int | None = 1000
    val_candidates: int = 50
    patience: int = 1
    calibrate: bool = True
    eval_before: bool = False
    attention: str = "user_prefix"
    freeze_layers: int = 3
    seed: int = 0

    def reduced(self) -> RerankerTrainConfig:
        """The reduced run of the quickstart and CI: 30 steps (unless set), 2 targets per
        user, 20 validation candidates. Every validation user is kept: fewer leave the fusion
        too few pairs to tie the probability to the item."""
        return replace(self, max_steps=self.max_steps or 30, targets_per_user=2, val_candidates=20)


@dataclass
class Stage:
    """What training and validation share: texts, the first stage and its features."""

    item_text: dict[str, str]
    features: FeatureMaker
    template: UserTextTemplate
    levels: tuple[float, ...]


def prepare_stage(
    catalog: Catalog,
    split: Split,
    item_vectors: ItemVectors,
    cfg: RerankerTrainConfig,
    item_template: ItemTextTemplate | None = None,
    tower: UserTower | None = None,
) -> Stage:
    """Builds the first stage and the feature maker from the training split.

    The first stage is ``tower`` (bound to its indexed item vectors, e.g. the trained
    sequential tower) or, by default, the mean-of-recent-likes tower over ``item_vectors``.
    """
    texts = item_texts(catalog.items, item_template or ItemTextTemplate())
    counts = Counter(split.train.item_ids.tolist())
    if tower is None:
        tower = MeanItemsTower(item_vectors, n_recent=5, like_threshold=cfg.threshold)
    vectors = getattr(tower, "item_vectors", None)
    if not isinstance(vectors, ItemVectors):
        raise ValueError(f"the {tower.name} tower is not bound to item vectors")
    index = FlatIndex(vectors.dim).build(vectors.ids, vectors.matrix)
    ratings = split.train.ratings[~np.isnan(split.train.ratings)]
    levels = tuple(float(v) for v in np.unique(ratings)) if cfg.head == "rating" else ()
    template = UserTextTemplate(
        max_liked=cfg.max_liked,
        max_disliked=cfg.max_disliked,
        max_tokens=cfg.max_length // 2 + 20,
        like_threshold=cfg.threshold,
    )
    features = FeatureMaker(tower, index, dict(counts), cfg.features, RatingStats.of(split.train))
    return Stage(texts, features, template, levels)


def _batch(
    tokenizer: Any,
    examples: Sequence[Example],
    stage: Stage,
    cfg: RerankerTrainConfig,
    torch: Any,
    attention: str = "full",
) -> dict[str, Any]:
    """Whole pairs, padded. ``user_prefix`` pairs are cut as serving cuts them
    (:func:`rerank.model.split_pair_ids`), so training sees the tokens serving scores."""
    features = torch.tensor([e.features for e in examples], dtype=torch.float32).reshape(
        len(examples), len(cfg.features)
    )
    if attention == "user_prefix":
        pairs = [
            split_pair_ids(tokenizer, e.user_text, [stage.item_text[e.item_id]], cfg.max_length)
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


def _auc_rank(auc: float) -> float:
    """Epochs are kept by validation AUC; one whose validation holds a single class (AUC
    undefined) still ranks above the untrained start (-1), so its training is not thrown away."""
    return auc if auc == auc else -0.5


def freeze_bottom(net: RerankerNet, layers: int) -> list[Any]:
    """Freezes the backbone's embeddings and first ``layers`` layers; returns the parameters
    left to train.

    Raises:
        ValueError: ``layers`` is negative or not below the backbone's depth (the top layer
            must learn), or the backbone has no BERT-style ``embeddings`` + ``encoder.layer``.
    """
    if layers == 0:
        return list(net.parameters())
    blocks = getattr(getattr(net.backbone, "encoder", None), "layer", None)
    embeddings = getattr(net.backbone, "embeddings", None)
    if blocks is None or embeddings is None:
        raise ValueError(
            "freeze_layers needs a BERT-style backbone (embeddings + encoder.layer[*]); "
            f"this {type(net.backbone).__name__} has not: use freeze_layers 0"
        )
    if not 0 <= layers < len(blocks):
        raise ValueError(
            f"freeze_layers must be in 0..{len(blocks) - 1} for this {len(blocks)}-layer "
            f"backbone, got {layers}"
        )
    for module in (embeddings, *blocks[:layers]):
        for p in module.parameters():
            p.requires_grad_(False)
    return [p for p in net.parameters() if p.requires_grad]


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch's tensors on the network's device (batches are built on the CPU)."""
    return {k: v.to(device) for k, v in batch.items()}


def predict_logits(
    net: RerankerNet,
    tokenizer: Any,
    examples: Sequence[Example],
    stage: Stage,
    cfg: RerankerTrainConfig,
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
            batch = _batch(tokenizer, [examples[i] for i in idx], stage, cfg, torch, attention)
            out[idx] = net(**_to(batch, dev)).float().cpu().numpy()
    return out


def validation_examples(
    catalog: Catalog,
    split: Split,
    stage: Stage,
    cfg: RerankerTrainConfig,
    *,
    every_list: bool = False,
) -> tuple[list[Example], list[list[Example]], list[str]]:
    """Held-out validation pairs (for AUC) and, per user, the retrieval candidates (for NDCG).

    The user text and features use the whole training history (all of it precedes the
    validation interaction). A list whose candidates miss the held-out item is left empty
    unless ``every_list``: no order of it can score, so it costs the reranker nothing to skip
    (about two thirds of the lists; NDCG@10 still averages over every user).
    Returns (labelled pairs, candidate lists, held-out item per list).
    """
    histories = group_histories(split.train, seed=cfg.seed)
    targets = {
        u: (i, r)
        for u, i, r in zip(
            split.validation.user_ids.tolist(),
            split.validation.item_ids.tolist(),
            split.validation.ratings.tolist(),
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
        item_id, rating = targets[user_id]
        text = user_text_at(
            stage.template, catalog.users.get(user_id), history, catalog.items, 2**62
        )
        rating_value = None if math.isnan(rating) else float(rating)
        liked = rating_value is None or rating_value >= cfg.threshold
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
    return labelled, lists, held


def _ndcg10(order_lists: Sequence[Sequence[str]], held: Sequence[str]) -> float:
    from metrics import list_ranks, ndcg_at_k_from_ranks

    return ndcg_at_k_from_ranks(list_ranks(order_lists, held), 10)


def fit_temperature(
    logits: npt.NDArray[np.float32], labels: npt.NDArray[np.float64], config: RerankerConfig
) -> float:
    """The temperature (grid over 0.1..100, log-spaced) minimising validation log loss."""
    from rerank.inference import probability_np

    best_t, best_loss = 1.0, float("inf")
    for t in np.logspace(-1, 2, 121):
        p = np.clip(probability_np(logits, replace(config, temperature=float(t))), 1e-7, 1 - 1e-7)
        loss = float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t


USER_LEVEL = frozenset({"user_mean_rating"})
"""Features constant within a user's candidate list: they calibrate, they cannot reorder."""


def fit_fusion(
    net: RerankerNet,
    logits_l: npt.NDArray[np.float32],
    logits_c: npt.NDArray[np.float32],
    labelled: Sequence[Example],
    lists: Sequence[Sequence[Example]],
    seed: int = 0,
) -> tuple[dict[str, Any], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Refits the binary head's last layer on validation (:mod:`rerank.fusion`).

    ``logits_l``/``logits_c`` are the net's logits of the labelled pairs and of the flattened
    candidate lists (one validation pass, reused). The fused weights are written into
    ``net.head`` (the text logit's scale) and ``net.feature_head``, so every backend and the
    ONNX export carry them; probabilities stay a sigmoid of one logit.

    Returns:
        The card's record, and the fused logits of the labelled pairs and of the candidates.
    """
    import torch

    from rerank import fusion

    assert net.feature_head is not None and net.config.head == "binary"
    w_f = net.feature_head.weight.detach()[0].double().cpu().numpy()
    b_f = float(net.feature_head.bias.detach()[0])
    names = tuple(net.config.features)

    def rows(logits: npt.NDArray[np.float32], examples: Sequence[Example]) -> Any:
        feats = np.array([e.features for e in examples], dtype=np.float64).reshape(-1, len(names))
        text = logits[:, 0].astype(np.float64) - (feats @ w_f + b_f)
        return np.column_stack([text, feats])

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


def _fuse(
    net: RerankerNet,
    logits: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    cfg: RerankerTrainConfig,
    labelled: Sequence[Example],
    lists: Sequence[Sequence[Example]],
    held: Sequence[str],
    config: RerankerConfig,
    before: dict[str, float],
) -> dict[str, Any]:
    """Fits the fusion and returns the card's calibration record (validation before/after)."""
    fitted, fused_l, fused_c = fit_fusion(net, *logits, labelled, lists, seed=cfg.seed)
    after = _val_metrics(fused_l[:, None], fused_c[:, None], labelled, lists, held, config)
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


def _val_logits(
    net: RerankerNet,
    tokenizer: Any,
    stage: Stage,
    cfg: RerankerTrainConfig,
    labelled: Sequence[Example],
    lists: Sequence[Sequence[Example]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One validation pass: logits of the labelled pairs and of the flattened candidate lists
    (scored together, so a ``user_prefix`` model encodes each user's side once)."""
    logits = predict_logits(
        net, tokenizer, [*labelled, *(e for lst in lists for e in lst)], stage, cfg
    )
    return logits[: len(labelled)], logits[len(labelled) :]


def _val_metrics(
    logits_l: npt.NDArray[Any],
    logits_c: npt.NDArray[Any],
    labelled: Sequence[Example],
    lists: Sequence[Sequence[Example]],
    held: Sequence[str],
    config: RerankerConfig,
) -> dict[str, float]:
    """Validation AUC, log loss, ECE and NDCG@10 of reranking vs retrieval order, from logits."""
    from metrics import auc, logloss
    from metrics import expected_calibration_error as ece
    from rerank.inference import probability_np

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
        "ndcg@10_rerank": _ndcg10(reranked, held),
        "ndcg@10_retrieval": _ndcg10(retrieval, held),
        "pairs": float(len(labelled)),
        "lists": float(len(lists)),
        "lists_scored": float(sum(1 for lst in lists if lst)),
    }


def evaluate(
    net: RerankerNet,
    tokenizer: Any,
    stage: Stage,
    cfg: RerankerTrainConfig,
    labelled: Sequence[Example],
    lists: Sequence[Sequence[Example]],
    held: Sequence[str],
    config: RerankerConfig,
) -> dict[str, float]:
    """Validation AUC, log loss, ECE and NDCG@10 of reranking vs retrieval order."""
    logits = _val_logits(net, tokenizer, stage, cfg, labelled, lists)
    return _val_metrics(*logits, labelled, lists, held, config)


def _save_checkpoint(
    folder: Path, net: RerankerNet, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> None:
    """Weights (safetensors), optimizer and schedule state, and progress; state.json last."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(folder / "net.safetensors.tmp"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        folder / "optimizer.pt.tmp",
    )
    (folder / "state.json.tmp").write_text(json.dumps(state))
    for name in ("net.safetensors", "optimizer.pt", "state.json"):  # state.json last: the marker
        (folder / f"{name}.tmp").replace(folder / name)


def _load_checkpoint(
    folder: Path, net: RerankerNet, optimizer: Any, scheduler: Any
) -> dict[str, Any] | None:
    """Restores what :func:`_save_checkpoint` wrote; None when there is no checkpoint."""
    import torch
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        return None
    net.load_state_dict(load_file(str(folder / "net.safetensors")))
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    return state


def train_reranker(
    catalog: Catalog,
    split: Split,
    item_vectors: ItemVectors,
    out: str | Path,
    cfg: RerankerTrainConfig | None = None,
    *,
    base_model: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    count_tokens: Any = None,
    tower: UserTower | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Trains the reranker and saves the best epoch (calibrated) to ``out`` atomically.

    Args:
        catalog: items, users and interactions.
        split: the temporal split; only ``train`` builds pairs, ``validation`` selects.
        item_vectors: the retrieval stage's item vectors (for features and hard negatives).
        out: the model folder to write.
        cfg: hyperparameters.
        base_model: backbone folder (default: the bundled MiniLM).
        resume: continue from ``<out>.checkpoint`` if an earlier run left one.
        progress: show progress bars.
        count_tokens: the tokenizer's counter for the user-text budget.
        tower: the first stage to learn from (its scores become the ``retrieval_score``
            feature; default: mean of recent liked ``item_vectors``).
        device: where the network trains (``cpu``, ``cuda``; default: CUDA when present).
            The saved model is the same either way; serving loads it on the CPU.

    Returns:
        The model card.

    Raises:
        ValueError: no training pairs could be built, or ``device`` is CUDA where torch sees
            none.
    """
    import torch
    from tqdm.auto import tqdm

    from retrieval.encoder import bundled_model_path
    from retrieval.train import seed_everything, warmup_then_decay

    cfg = cfg or RerankerTrainConfig()
    # The device first: a bad one fails before minutes of pair building, not after.
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here (use cpu)")
    seed_everything(cfg.seed)
    base = str(base_model or bundled_model_path())
    started = time.perf_counter()
    stage = prepare_stage(catalog, split, item_vectors, cfg, tower=tower)
    # The network before the pairs: a backbone that cannot be frozen as asked fails fast.
    config = RerankerConfig(
        head=cfg.head,
        levels=stage.levels,
        threshold=cfg.threshold,
        features=cfg.features,
        max_length=cfg.max_length,
        user_template=asdict(stage.template),
        base_model=base,
        retrieval=stage.features.tower.name,
        attention=cfg.attention,
    )
    net, tokenizer = new_net(base, config)
    trainable = freeze_bottom(net, cfg.freeze_layers)
    histories = group_histories(split.train, seed=cfg.seed)
    examples = build_examples(
        histories,
        catalog.users,
        catalog.items,
        stage.item_text,
        stage.features,
        stage.template,
        targets_per_user=cfg.targets_per_user,
        random_negatives=cfg.random_negatives,
        hard_negatives=cfg.hard_negatives,
        hard_pool=cfg.hard_pool,
        threshold=cfg.threshold,
        levels=stage.levels,
        seed=cfg.seed,
        count_tokens=count_tokens,
    )
    if not examples:
        raise ValueError("no training pairs: the training split has no usable interactions")
    kinds = Counter(e.kind for e in examples)
    log.info("training pairs: %s", dict(kinds))
    net.to(dev)
    labelled, lists, held = validation_examples(catalog, split, stage, cfg)
    # The backbone fine-tunes gently; the heads start from scratch (the scalar features'
    # weights would barely move in a few hundred steps at the backbone's rate).
    heads = [p for m in (net.head, net.feature_head) if m is not None for p in m.parameters()]
    head_ids = {id(p) for p in heads}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if id(p) not in head_ids], "lr": cfg.lr},
            {"params": heads, "lr": cfg.head_lr},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(total * cfg.warmup_ratio))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(total, warmup))
    checkpoint = Path(str(out) + ".checkpoint")
    state = _load_checkpoint(checkpoint, net, optimizer, scheduler) if resume else None
    history: list[dict[str, Any]] = state["history"] if state else []
    step = int(state["step"]) if state else 0
    first_epoch = int(state["epoch"]) if state else 0
    initial = (
        evaluate(net, tokenizer, stage, cfg, labelled, lists, held, config)
        if cfg.eval_before and state is None
        else None
    )
    if initial is not None:
        log.info("before training: %s", initial)
    best_auc = max([_auc_rank(h["auc"]) for h in history], default=-1.0)
    best_state = copy.deepcopy(net.state_dict())
    best_logits: tuple[Any, Any] | None = None  # the kept epoch's validation pass, for the fusion
    stale = 0
    loss_fn = torch.nn.BCEWithLogitsLoss() if cfg.head == "binary" else torch.nn.CrossEntropyLoss()
    for epoch in range(first_epoch, cfg.epochs):
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        net.train()
        losses: list[float] = []
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for idx in bar:
            if step >= total:
                break
            chunk = [examples[i] for i in idx]
            batch = _batch(tokenizer, chunk, stage, cfg, torch, config.attention)
            logits = net(**_to(batch, dev))
            if cfg.head == "binary":
                target = torch.tensor([e.label for e in chunk], dtype=torch.float32, device=dev)
                loss = loss_fn(logits[:, 0], target)
            else:
                loss = loss_fn(logits, torch.tensor([e.level for e in chunk], device=dev))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            step += 1
        logits = _val_logits(net, tokenizer, stage, cfg, labelled, lists)
        metrics = _val_metrics(*logits, labelled, lists, held, config)
        record = {
            "epoch": epoch + 1,
            "steps": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            **metrics,
        }
        history.append(record)
        log.info("epoch %d validation: %s", epoch + 1, metrics)
        if _auc_rank(metrics["auc"]) > best_auc:
            best_auc, best_state = _auc_rank(metrics["auc"]), copy.deepcopy(net.state_dict())
            stale = 0
            best_logits = logits
        else:
            stale += 1
        _save_checkpoint(
            checkpoint,
            net,
            optimizer,
            scheduler,
            {"epoch": epoch + 1, "step": step, "history": history},
        )
        if stale >= cfg.patience or step >= total:
            break
    net.load_state_dict(best_state)
    calibration: dict[str, Any] = {"temperature": 1.0}
    if cfg.calibrate and labelled and cfg.head == "binary" and net.feature_head is not None:
        if best_logits is None:  # resumed past the best epoch: one more pass
            best_logits = _val_logits(net, tokenizer, stage, cfg, labelled, lists)
        before = _val_metrics(best_logits[0], best_logits[1], labelled, lists, held, config)
        calibration = _fuse(net, best_logits, cfg, labelled, lists, held, config, before)
    elif cfg.calibrate and labelled:
        logits = predict_logits(net, tokenizer, labelled, stage, cfg)
        labels = np.array([e.label for e in labelled])
        temperature = fit_temperature(logits, labels, config)
        none = np.zeros((0, logits.shape[1]), dtype=np.float32)
        before = _val_metrics(logits, none, labelled, [], [], config)
        config = replace(config, temperature=temperature)
        after = _val_metrics(logits, none, labelled, [], [], config)
        calibration = {
            "method": "temperature",
            "temperature": temperature,
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "logloss_before": before["logloss"],
            "logloss_after": after["logloss"],
        }
    card = {
        "kind": "duorank.reranker/1",
        "base_model": base,
        "config": asdict(cfg),
        "data": {
            "source": catalog.source,
            "pairs": dict(kinds),
            "train": len(split.train),
            "validation_pairs": len(labelled),
            "validation_lists": len(lists),
        },
        "steps": step,
        "device": str(dev),
        "train_seconds": time.perf_counter() - started,
        "before_training": initial,
        "epochs": history,
        "calibration": calibration,
        "retrieval": {"tower": stage.features.tower.name, **stage.features.tower.config()},
        "note": "calibration/fusion fitted on the same validation data it is reported on",
    }
    net.to("cpu")
    with atomic_dir(Path(out)) as staging:
        save_net(net, tokenizer, staging, config, card)
    import shutil

    shutil.rmtree(checkpoint, ignore_errors=True)
    return card


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
    from rerank.model import load_net

    root = Path(folder)
    net, tokenizer, config = load_net(root)
    if config.head != "binary" or net.feature_head is None:
        raise ValueError(f"{root}: only a binary head with features has a fusion to refit")
    card: dict[str, Any] = json.loads((root / "duorank-card.json").read_text())
    raw = dict(card["config"])
    raw["features"] = tuple(raw.get("features", ()))
    if val_users is not None:
        raw["val_users"] = val_users
    cfg = RerankerTrainConfig(**raw)
    stage = prepare_stage(catalog, split, item_vectors, cfg, tower=tower)
    labelled, lists, held = validation_examples(catalog, split, stage, cfg)
    logits = _val_logits(net, tokenizer, stage, cfg, labelled, lists)
    before = _val_metrics(*logits, labelled, lists, held, config)
    card["calibration"] = {
        **_fuse(net, logits, cfg, labelled, lists, held, config, before),
        "refitted": True,
    }
    with atomic_dir(root) as staging:
        save_net(net, tokenizer, staging, config, card)
    return card
