"""Full fine-tuning of the text tower with in-batch negatives (MultipleNegativesRankingLoss).

Pairs come from the training split only: for each liked interaction at time t, the anchor is the
user's text rendered from the history strictly before t and the positive is the item's text.
Other items in the batch are the negatives (optionally one mined hard negative per pair). Each
epoch ends with validation Recall@K over the full catalog; the best epoch is kept (early
stopping). The result is a normal sentence-transformers folder plus ``duorank-card.json``.

This is the path for machines with a GPU; on a CPU, ``--quick``/``max_steps`` keeps it short.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalog.fsutil import MODEL, atomic_dir, write_json
from catalog.history import group_histories
from catalog.model import Catalog, User
from catalog.splits import Split
from catalog.text import ItemTextTemplate, UserTextTemplate, is_positive
from catalog.thresholds import LIKE_THRESHOLD
from retrieval.encoder import Encoder
from retrieval.evaluate import heldout_targets, recall_at_ks
from retrieval.index import FlatIndex
from retrieval.towers import HistoryTextTower
from retrieval.training import EarlyStopping, seed_everything, step_budget, warmup_then_decay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverTrainConfig:
    """Hyperparameters (recorded in the model card).

    Attributes:
        epochs: passes over the pairs.
        batch_size: pairs per step (in-batch negatives = batch_size - 1).
        lr: AdamW learning rate.
        warmup_ratio: linear warm-up share of the steps.
        max_steps: stop after this many steps (CI / quick runs).
        pairs_per_user: most recent liked interactions per user used as targets.
        min_history: likes before t needed to make a pair.
        hard_negatives: mine one hard negative per pair from the zero-shot ranking (0/1).
        hard_negative_rank: take the item at this rank (skipping the top, likely unlabelled
            positives).
        eval_ks: cut-offs for validation Recall@K.
        select_metric: the validation metric for early stopping.
        patience: epochs without improvement before stopping.
        max_val_users: validate on a seeded sample of users (None = all).
        seed: seeds Python, numpy and torch.
        like_threshold: rating at or above = like.
        max_user_tokens: token budget of the user text.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    max_steps: int | None = None
    pairs_per_user: int = 20
    min_history: int = 1
    hard_negatives: int = 0
    hard_negative_rank: int = 20
    eval_ks: tuple[int, ...] = (10, 50, 100)
    select_metric: str = "recall@100"
    patience: int = 1
    max_val_users: int | None = None
    seed: int = 0
    like_threshold: float = LIKE_THRESHOLD
    max_user_tokens: int = 128
    item_template: ItemTextTemplate = field(default_factory=ItemTextTemplate)


def build_pairs(
    catalog: Catalog,
    split: Split,
    cfg: RetrieverTrainConfig,
    user_template: UserTextTemplate,
    count_tokens: Any = None,
) -> list[tuple[str, str, str]]:
    """(user id, anchor text from history before t, item id at t) for liked train events."""
    histories = group_histories(split.train, seed=cfg.seed)
    pairs: list[tuple[str, str, str]] = []
    for user_id, events in histories.items():
        liked = [i for i, e in enumerate(events) if is_positive(e, cfg.like_threshold)]
        targets = [i for i in liked if sum(1 for j in liked if j < i) >= cfg.min_history]
        for i in targets[-cfg.pairs_per_user :]:
            t = events[i].timestamp
            past = [e for e in events[:i] if e.timestamp < t]
            if not any(is_positive(e, cfg.like_threshold) for e in past):
                continue
            profile = catalog.users.get(user_id, User(user_id))
            text = user_template.render(profile, past, catalog.items, count_tokens)
            pairs.append((user_id, text, events[i].item_id))
    return pairs


def _batches(
    pairs: Sequence[tuple[str, str, str]], size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of pair indices with no item twice in a batch (a duplicate positive
    would be a false negative for its neighbour)."""
    pool = list(range(len(pairs)))
    rng.shuffle(pool)
    batches: list[list[int]] = []
    while pool:
        batch: list[int] = []
        seen: set[str] = set()
        rest: list[int] = []
        for n in pool:
            if len(batch) < size and pairs[n][2] not in seen:
                batch.append(n)
                seen.add(pairs[n][2])
            else:
                rest.append(n)
        batches.append(batch)
        pool = rest
    return batches


def validate(
    encoder: Encoder,
    catalog: Catalog,
    split: Split,
    cfg: RetrieverTrainConfig,
    user_template: UserTextTemplate,
) -> dict[str, float]:
    """Validation Recall@K of the encoder as both towers (item text / history text)."""
    ids = list(catalog.items)
    vectors = encoder.encode_uncached([cfg.item_template.render(catalog.items[i]) for i in ids])
    index = FlatIndex(encoder.dim).build(ids, vectors)
    histories = group_histories(split.train, seed=cfg.seed)
    targets = heldout_targets(split.validation)
    if cfg.max_val_users is not None and len(targets) > cfg.max_val_users:
        keep = random.Random(cfg.seed).sample(sorted(targets), cfg.max_val_users)
        targets = {u: targets[u] for u in keep}
    tower = HistoryTextTower(encoder, catalog.items, user_template)
    profiles = {u: dict(catalog.users[u].attributes) for u in targets if u in catalog.users}
    return recall_at_ks(tower, index, histories, targets, cfg.eval_ks, profiles=profiles)


def train_retriever(
    catalog: Catalog,
    split: Split,
    out: str | Path,
    cfg: RetrieverTrainConfig | None = None,
    *,
    model: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tunes the tower and saves the best epoch to ``out`` (atomically).

    Returns:
        The model card (config, data sizes, zero-shot and per-epoch validation metrics).

    Raises:
        ValueError: no training pairs could be built (too little history).
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tqdm.auto import tqdm

    cfg = cfg or RetrieverTrainConfig()
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    encoder = Encoder(model, device=device, batch_size=64)
    st = encoder.model
    user_template = UserTextTemplate(
        max_tokens=cfg.max_user_tokens, like_threshold=cfg.like_threshold
    )
    pairs = build_pairs(catalog, split, cfg, user_template, encoder.count_tokens)
    if not pairs:
        raise ValueError(
            "no training pairs: users need at least "
            f"{cfg.min_history + 1} liked training interactions"
        )
    item_text = {i: cfg.item_template.render(it) for i, it in catalog.items.items()}
    negatives: dict[int, str] = {}
    if cfg.hard_negatives:
        negatives = _mine_hard_negatives(encoder, pairs, item_text, split, cfg)
    started = time.perf_counter()
    zero_shot = validate(encoder, catalog, split, cfg, user_template)
    log.info("zero-shot validation: %s", zero_shot)
    loss_fn = MultipleNegativesRankingLoss(st)
    total = step_budget(len(pairs), cfg.batch_size, cfg.epochs, cfg.max_steps)
    optimizer = torch.optim.AdamW(st.parameters(), lr=cfg.lr)
    warmup = max(1, int(total * cfg.warmup_ratio))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(total, warmup))
    stopper = EarlyStopping(
        cfg.patience, zero_shot[cfg.select_metric], copy.deepcopy(st.state_dict())
    )
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(cfg.epochs):
        st.train()
        batches = _batches(pairs, cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        losses = []
        for batch in bar:
            if step >= total:
                break
            columns = [[pairs[n][1] for n in batch], [item_text[pairs[n][2]] for n in batch]]
            if negatives:
                columns.append([item_text[negatives.get(n, pairs[n][2])] for n in batch])
            losses.append(_step(st, loss_fn, optimizer, scheduler, columns))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            step += 1
        st.eval()
        metrics = validate(encoder, catalog, split, cfg, user_template)
        history.append(
            {
                "epoch": epoch + 1,
                "steps": step,
                "train_loss": float(np.mean(losses)) if losses else None,
                **metrics,
            }
        )
        log.info("epoch %d validation: %s", epoch + 1, metrics)
        figure = metrics[cfg.select_metric]
        if stopper.update(figure, epoch + 1, lambda: copy.deepcopy(st.state_dict())):
            break
        if step >= total:
            break
    assert stopper.snapshot is not None
    st.load_state_dict(stopper.snapshot)
    data = {
        "source": catalog.source,
        "pairs": len(pairs),
        "train": len(split.train),
        "validation": len(split.validation),
        "hard_negatives": len(negatives),
    }
    card = _card(encoder, cfg, data, step, time.perf_counter() - started, zero_shot, history)
    card.update(best={cfg.select_metric: stopper.best}, user_template=asdict(user_template))
    with atomic_dir(Path(out), MODEL) as staging:
        st.save(str(staging))
        write_json(staging / "duorank-card.json", card)
    return card


def _card(
    encoder: Encoder,
    cfg: RetrieverTrainConfig,
    data: dict[str, Any],
    steps: int,
    seconds: float,
    zero_shot: dict[str, float],
    epochs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The fine-tuned model's card: what it was trained from, how, and what validation said."""
    return {
        "kind": "duorank.retriever/1",
        "base_model": encoder.model_name,
        "config": _jsonable(asdict(cfg)),
        "data": data,
        "steps": steps,
        "train_seconds": seconds,
        "zero_shot": zero_shot,
        "epochs": epochs,
    }


def _step(st: Any, loss_fn: Any, optimizer: Any, scheduler: Any, columns: list[list[str]]) -> float:
    """One optimiser step on a batch of (anchor, positive[, hard negative]) text columns,
    in-batch negatives; its loss."""
    import torch

    features = [_to_device(st.preprocess(col), st.device) for col in columns]
    loss = loss_fn(features, torch.zeros(len(columns[0])))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _to_device(features: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _mine_hard_negatives(
    encoder: Encoder,
    pairs: Sequence[tuple[str, str, str]],
    item_text: dict[str, str],
    split: Split,
    cfg: RetrieverTrainConfig,
) -> dict[int, str]:
    """For each pair, the zero-shot tower's item at ``hard_negative_rank`` that the user has
    not interacted with in training."""
    ids = list(item_text)
    index = FlatIndex(encoder.dim).build(ids, encoder.encode_uncached([item_text[i] for i in ids]))
    anchors = encoder.encode_uncached([p[1] for p in pairs])
    seen: dict[str, set[str]] = {}
    for u, i in zip(split.train.user_ids.tolist(), split.train.item_ids.tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    result = index.search(
        anchors, cfg.hard_negative_rank + 1, exclude=[seen.get(p[0], set()) for p in pairs]
    )
    return {n: row[-1] for n, row in enumerate(result.ids) if row}
