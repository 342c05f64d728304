"""Training the sequential tower: next-item prediction with a full softmax over the catalog,
early stopping on validation Recall@10, then the cold-item blend and the collaborative block
chosen on validation (see :mod:`retrieval.sequential` for what each block is)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.progress import duration
from catalog.text import HistoryEvent
from catalog.thresholds import COLD_ITEM_THRESHOLD
from metrics import ndcg_at_k_from_ranks, recall_at_k_from_ranks, target_ranks
from retrieval.als import COLLAB_SETTINGS, fit_als, fold_in
from retrieval.memory import reuse_freed_memory
from retrieval.sequential import Matrix, SequentialConfig, SequentialTower
from retrieval.sequential_net import SeqNet
from retrieval.towers import MeanItemsTower, UserState, UserTower
from retrieval.training import EarlyStopping
from retrieval.vectors import ItemVectors, normalize

log = logging.getLogger(__name__)


def _sequences(
    histories: Mapping[str, Sequence[HistoryEvent]], pos: Mapping[str, int], max_len: int
) -> list[list[int]]:
    """Each user's item positions in time order, cut from the end into windows of
    ``max_len + 1`` (so long histories train on all their events, not just the last ones)."""
    out = []
    for events in histories.values():
        seq = [
            pos[e.item_id] for e in sorted(events, key=lambda e: e.timestamp) if e.item_id in pos
        ]
        end = len(seq)
        while end >= 2:
            out.append(seq[max(0, end - max_len - 1) : end])
            end -= max_len
    return out


def _batch(seqs: Sequence[list[int]]) -> tuple[Any, Any]:
    """Inputs (every position but the last) and next-item targets (-100 where padded)."""
    import torch

    width = max(len(s) for s in seqs) - 1
    inputs = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), -100, dtype=torch.long)
    for b, seq in enumerate(seqs):
        n = len(seq) - 1
        inputs[b, :n] = torch.tensor(seq[:-1])
        targets[b, :n] = torch.tensor(seq[1:])
    return inputs, targets


def _epoch(
    net: SeqNet,
    optimizer: Any,
    seqs: Sequence[list[int]],
    order: npt.NDArray[np.int64],
    text: Any,
    id_index: Any,
    cfg: SequentialConfig,
) -> float:
    """One pass over the sequences in ``order``: full softmax over the catalog; mean loss."""
    import torch

    net.train()
    losses = []
    for start in range(0, len(order), cfg.batch_size):
        inputs, targets = _batch([seqs[i] for i in order[start : start + cfg.batch_size]])
        items = net.items(text, id_index, drop=cfg.id_dropout)  # all catalog items
        users = net.users(items[inputs])
        logits = users @ items.T / cfg.temperature
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _fit(
    net: SeqNet,
    seqs: Sequence[list[int]],
    text_vectors: ItemVectors,
    item_rows: dict[str, int],
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    val_users: list[str],
    cfg: SequentialConfig,
    progress: bool,
) -> tuple[list[dict[str, float]], EarlyStopping[Any]]:
    """The epochs, early stopped on validation Recall@10 (without validation users: all
    ``cfg.epochs``, the last kept); ``net`` ends with the kept epoch's weights."""
    import torch

    rng = np.random.default_rng(cfg.seed)
    id_index = torch.tensor([item_rows.get(i, 0) for i in text_vectors.ids], dtype=torch.long)
    text = torch.from_numpy(np.ascontiguousarray(text_vectors.matrix))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stopper = EarlyStopping(cfg.patience, -1.0, copy.deepcopy(net.state_dict()))
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    with reuse_freed_memory():  # the logits of every step: see its docstring
        for epoch in range(cfg.epochs):
            loss = _epoch(net, optimizer, seqs, rng.permutation(len(seqs)), text, id_index, cfg)
            if not val_users:  # no validation: a fixed number of epochs, keep the last
                history.append({"epoch": epoch + 1, "loss": loss})
                stopper.best, stopper.snapshot = float("nan"), copy.deepcopy(net.state_dict())
                continue
            tower = SequentialTower(net, replace(cfg, cold_blend=0.0), item_rows, text_vectors.dim)
            tower.bind_text(text_vectors)
            assert tower.item_vectors is not None
            recall = _val_metrics(tower, tower.item_vectors, train, validation, val_users, {})[
                "recall@10"
            ]
            net.train()
            history.append({"epoch": epoch + 1, "loss": loss, "recall@10": recall})
            if progress:
                per_epoch = (time.perf_counter() - started) / (epoch + 1)
                log.info(
                    "sequential tower epoch %d/%d: loss %.4f, validation Recall@10 %.4f "
                    "(%s an epoch; at most %s left, early stopping may end it sooner)",
                    epoch + 1,
                    cfg.epochs,
                    loss,
                    recall,
                    duration(per_epoch),
                    duration(per_epoch * (cfg.epochs - epoch - 1)),
                )
            if stopper.update(recall, epoch + 1, lambda: copy.deepcopy(net.state_dict())):
                break
    assert stopper.snapshot is not None
    net.load_state_dict(stopper.snapshot)
    net.eval()
    return history, stopper


def _chosen_blend(
    tower: SequentialTower,
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    val_users: list[str],
    progress: bool,
) -> tuple[SequentialTower, list[dict[str, float]], dict[str, float]]:
    """The blend weights, on validation: the best NDCG@10 among the (cold, collaborative)
    pairs that keep the zero-shot text tower's Recall@100 on cold targets (else the best cold
    recall), ties to the smaller weights. Returns the blended tower, every pair's figures and
    the zero-shot tower's."""
    text_unit = ItemVectors(text_vectors.ids, normalize(text_vectors.matrix))
    text_tower = MeanItemsTower(text_unit, n_recent=tower.cfg.blend_recent)
    zero_shot = _val_metrics(text_tower, text_unit, train, validation, val_users, tower.item_counts)
    blends = _blend_search(tower, text_vectors, train, validation, val_users)
    floor = zero_shot["cold_recall@100"]
    keeping = [r for r in blends if r["cold_recall@100"] >= floor or math.isnan(floor)]
    chosen = (
        max(keeping, key=lambda r: (r["ndcg@10"], -r["collab_weight"], -r["cold_blend"]))
        if keeping
        else max(
            blends, key=lambda r: (r["cold_recall@100"], -r["collab_weight"], -r["cold_blend"])
        )
    )
    tower = tower.with_blend(chosen["cold_blend"], chosen["collab_weight"])
    if progress:
        log.info(
            "blend chosen on validation: cold %.2f, collaborative %.2f (NDCG@10 %.4f; "
            "the zero-shot text tower's: %.4f)",
            tower.cfg.cold_blend,
            tower.cfg.collab_weight,
            chosen["ndcg@10"],
            zero_shot.get("ndcg@10", float("nan")),
        )
    return tower, blends, zero_shot


def train_sequential(
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    cfg: SequentialConfig | None = None,
    *,
    train_items: set[str] | None = None,
    progress: bool = True,
) -> tuple[SequentialTower, dict[str, Any]]:
    """Trains on next-item prediction over the training histories.

    Args:
        text_vectors: frozen text vectors of every catalog item.
        train: user -> training events.
        validation: user -> held-out validation item (early stopping on Recall@10, seen
            training items excluded); empty: train ``cfg.epochs`` epochs and keep the last
            (the refit on train + validation).
        cfg: hyperparameters.
        train_items: items that get an ID vector (default: those in ``train``).
        progress: log each epoch.

    Returns:
        The tower (bound to its catalog item vectors) and a training card.
    """
    import torch

    cfg = cfg or SequentialConfig()
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    pos = {i: n for n, i in enumerate(text_vectors.ids)}
    seen_items = (
        train_items
        if train_items is not None
        else {e.item_id for events in train.values() for e in events}
    )
    item_rows = {i: n + 1 for n, i in enumerate(sorted(seen_items & set(pos)))}
    item_counts = dict(
        Counter(e.item_id for events in train.values() for e in events if e.item_id in pos)
    )
    net = SeqNet(text_vectors.dim, len(item_rows), cfg.dim, cfg.use_ids)
    seqs = _sequences(train, pos, cfg.max_len)
    if not seqs:
        raise ValueError("no training sequences: users need at least two training items")
    val_users = [u for u in validation if u in train and validation[u] in pos]
    history, stopper = _fit(
        net, seqs, text_vectors, item_rows, train, validation, val_users, cfg, progress
    )
    text_unit = ItemVectors(text_vectors.ids, normalize(text_vectors.matrix))
    pooled = MeanItemsTower(text_unit, n_recent=cfg.blend_recent).embed(
        [UserState(u, {}, events) for u, events in train.items()]
    )
    pooled = pooled[np.any(pooled, axis=1)]
    center = pooled.mean(axis=0) if len(pooled) else None
    collab: Matrix | None = None
    als_search: list[dict[str, float]] = []
    searching = bool(val_users) and bool(cfg.blend_grid or cfg.collab_grid)
    if searching and any(w > 0 for w in cfg.collab_grid):
        collab, cfg, als_search = _choose_als(
            text_vectors, train, validation, val_users, item_rows, item_counts, cfg
        )
    elif cfg.collab_weight > 0:
        collab = _fit_als(train, item_rows, cfg)
    tower = SequentialTower(net, cfg, item_rows, text_vectors.dim, item_counts, center, collab)
    blends: list[dict[str, float]] = []
    zero_shot: dict[str, float] = {}
    if searching:
        tower, blends, zero_shot = _chosen_blend(
            tower, text_vectors, train, validation, val_users, progress
        )
        cfg = tower.cfg
    tower.bind_text(text_vectors)
    card = {
        "config": asdict(cfg),
        "epochs": history,
        "best_recall@10": stopper.best,
        "best_epoch": (stopper.epoch or cfg.epochs) if val_users else len(history),
        "train_seconds": time.perf_counter() - started,
        "blend": blends,
        "blend_zero_shot": zero_shot,
        "collab_als": als_search,
        "sequences": len(seqs),
        "id_items": len(item_rows),
    }
    return tower, card


def _val_metrics(
    tower: UserTower,
    items: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_counts: Mapping[str, int],
    cold_threshold: int = COLD_ITEM_THRESHOLD,
) -> dict[str, float]:
    """Recall@10/100, NDCG@10 of the held-out item over the full catalog (training items
    excluded), and Recall@100 on targets with fewer than ``cold_threshold`` training
    interactions."""
    vectors = tower.embed([UserState(u, {}, train[u]) for u in users])
    return _score_metrics(
        vectors @ items.matrix.T, items, train, validation, users, item_counts, cold_threshold
    )


def _score_metrics(
    scores: npt.NDArray[np.floating[Any]],
    items: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_counts: Mapping[str, int],
    cold_threshold: int = COLD_ITEM_THRESHOLD,
) -> dict[str, float]:
    """:func:`_val_metrics` from a (users, catalog items) score matrix (modified in place)."""
    targets = np.zeros(len(users), dtype=np.int64)
    cold = np.zeros(len(users), dtype=bool)
    for n, u in enumerate(users):
        seen = items.rows([e.item_id for e in train[u]])
        scores[n, seen[seen >= 0]] = -np.inf
        targets[n] = items.rows([validation[u]])[0]
        cold[n] = item_counts.get(validation[u], 0) < cold_threshold
    if not len(users):
        nothing = {"recall@10": 0.0, "ndcg@10": 0.0, "recall@100": 0.0}
        return {**nothing, "cold_recall@100": float("nan"), "cold_users": 0}
    ranks = target_ranks(scores, targets)
    return {
        "recall@10": recall_at_k_from_ranks(ranks, 10),
        "ndcg@10": ndcg_at_k_from_ranks(ranks, 10),
        "recall@100": recall_at_k_from_ranks(ranks, 100),
        "cold_recall@100": recall_at_k_from_ranks(ranks[cold], 100) if cold.any() else math.nan,
        "cold_users": int(cold.sum()),
    }


def _choose_als(
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_rows: Mapping[str, int],
    item_counts: Mapping[str, int],
    cfg: SequentialConfig,
) -> tuple[Matrix, SequentialConfig, list[dict[str, float]]]:
    """The ALS fit of :data:`COLLAB_SETTINGS` whose own score (users folded in) ranks the
    validation items best: the collaborative block is as strong as the tuned ALS baseline."""
    ids = text_vectors.ids
    catalog_rows = np.array([item_rows.get(i, 0) for i in ids])
    user_rows = [[item_rows.get(e.item_id, 0) for e in train[u]] for u in users]
    items = ItemVectors(ids, np.zeros((len(ids), 1), dtype=np.float32))  # ids for the ranks
    best: tuple[float, Matrix, SequentialConfig] | None = None
    rows = []
    for factors, reg, alpha in COLLAB_SETTINGS:
        trial = replace(cfg, collab_factors=factors, collab_reg=reg, collab_alpha=alpha)
        collab = _fit_als(train, item_rows, trial)
        x = fold_in(collab, user_rows, reg, alpha)
        metrics = _score_metrics(
            x @ collab[catalog_rows].T, items, train, validation, users, item_counts
        )
        rows.append({"factors": factors, "regularization": reg, "alpha": alpha, **metrics})
        if best is None or metrics["ndcg@10"] > best[0]:
            best = (metrics["ndcg@10"], collab, trial)
    assert best is not None
    return best[1], best[2], rows


def _blend_search(
    tower: SequentialTower,
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
) -> list[dict[str, float]]:
    """Validation metrics of every (cold blend, collaborative weight) pair of the grids.

    Each block's scores are computed once and combined per pair exactly as the bound tower's
    inner product combines them (the per-user spread of each block over the catalog)."""
    cfg = tower.cfg
    ids = text_vectors.ids
    states = [UserState(u, {}, train[u]) for u in users]
    full = tower.with_blend(1.0, 0.0)  # learned + text blocks; the ALS block comes below
    indexed = full.item_transform(ids, text_vectors.matrix)
    full.bind(ItemVectors(ids, indexed))
    users_full = full.embed(states)
    d = cfg.dim
    learned = users_full[:, :d] @ indexed[:, :d].T
    text = users_full[:, d:] @ normalize(text_vectors.matrix).T  # (z_u - z_mean) . x_i
    unit = full.blend_weights(ids)  # w_i at cold_blend 1
    collab = None
    if tower.collab is not None:
        rows = [[tower.item_rows.get(e.item_id, 0) for e in s.history] for s in states]
        x = fold_in(tower.collab, rows, cfg.collab_reg, cfg.collab_alpha)
        collab = x @ tower.collab[[tower.item_rows.get(i, 0) for i in ids]].T
    items = ItemVectors(ids, np.zeros((len(ids), 1), dtype=np.float32))
    out = []
    for weight in cfg.collab_grid or (cfg.collab_weight,):
        for blend in cfg.blend_grid or (cfg.cold_blend,):
            main = learned + blend * unit[None, :] * text
            scores = main
            if weight > 0 and collab is not None:
                spread = collab.std(axis=1, keepdims=True)
                scale = np.where(spread > 0, main.std(axis=1, keepdims=True) / spread, 0.0)
                scores = main + weight * scale * collab
            metrics = _score_metrics(
                scores, items, train, validation, users, dict(tower.item_counts)
            )
            out.append({"cold_blend": blend, "collab_weight": weight, **metrics})
    return out


def _fit_als(
    train: Mapping[str, Sequence[HistoryEvent]], item_rows: Mapping[str, int], cfg: SequentialConfig
) -> Matrix:
    return fit_als(
        train,
        item_rows,
        factors=cfg.collab_factors,
        reg=cfg.collab_reg,
        alpha=cfg.collab_alpha,
        iterations=cfg.collab_iterations,
        seed=cfg.seed,
    )
