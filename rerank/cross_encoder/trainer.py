"""The training loop of `duorank train reranker`: the point-wise cross-encoder fine-tuned on
the training split.

Each epoch ends with validation: like/dislike AUC, log loss and expected calibration error of the
held-out validation interactions, and NDCG@10 of reranking the retrieval stage's top candidates
(next to the retrieval order's own NDCG@10 on the same lists). The best epoch by validation AUC
is kept; then a fusion of its text logit and the scalar features (binary head,
:func:`rerank.cross_encoder.calibration.fit_fusion`) or a temperature (rating head), fitted on
validation, calibrates the probabilities. Checkpoints at the end of each epoch let ``--resume``
continue an interrupted run.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.fsutil import MODEL, atomic_dir
from catalog.history import group_histories
from catalog.model import Catalog
from catalog.splits import Split
from rerank.cross_encoder.calibration import fit_temperature, fuse
from rerank.cross_encoder.collator import collate, to_device
from rerank.cross_encoder.context import Stage, prepare_stage
from rerank.cross_encoder.evaluation import (
    ValidationSet,
    auc_rank,
    evaluate,
    predict_logits,
    validation_logits,
    validation_metrics,
    validation_set,
)
from rerank.cross_encoder.listwise import example_lists, list_batches, listwise_loss
from rerank.cross_encoder.model import RerankerConfig, RerankerNet, new_net, save_net
from rerank.cross_encoder.pairs import Example, build_examples
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.towers import UserTower
from retrieval.training import EarlyStopping
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:  # torch and transformers load when training starts
    import torch
    from transformers import PreTrainedTokenizerBase

Logits = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
"""A validation pass: the labelled pairs' logits and the candidate lists'."""

log = logging.getLogger(__name__)


def freeze_bottom(net: RerankerNet, layers: int) -> list[torch.nn.Parameter]:
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


def _save_checkpoint(
    folder: Path,
    net: RerankerNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
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
    folder: Path,
    net: RerankerNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
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
    cfg: RerankerTrainArgs | None = None,
    *,
    base_model: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    count_tokens: Callable[[str], int] | None = None,
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
    from retrieval.encoder import bundled_model_path
    from retrieval.training import seed_everything

    cfg = cfg or RerankerTrainArgs()
    dev = _device(device)  # first: a bad one fails before minutes of pair building, not after
    seed_everything(cfg.seed)
    base = str(base_model or bundled_model_path())
    started = time.perf_counter()
    stage = prepare_stage(catalog, split, item_vectors, cfg, tower=tower)
    # The network before the pairs: a backbone that cannot be frozen as asked fails fast.
    config = _model_config(cfg, stage, base)
    net, tokenizer = new_net(base, config, cfg.layers)
    trainable = freeze_bottom(net, cfg.freeze_layers)
    if cfg.teacher:  # a teacher that cannot teach this student fails before the pairs, too
        _check_teacher(Path(cfg.teacher), cfg)
    examples = _training_pairs(catalog, split, stage, cfg, count_tokens)
    kinds = Counter(e.kind for e in examples)
    log.info("training pairs: %s", dict(kinds))
    soft = (
        teacher_targets(Path(cfg.teacher), examples, stage, cfg, progress) if cfg.teacher else None
    )
    net.to(dev)
    fit = _Fit(net, tokenizer, stage, cfg, config, validation_set(catalog, split, stage, cfg), dev)
    optimizer, scheduler, total = _optimiser(net, trainable, cfg, len(examples))
    checkpoint = Path(str(out) + ".checkpoint")
    state = _load_checkpoint(checkpoint, net, optimizer, scheduler) if resume else None
    initial = None
    if cfg.eval_before and state is None:
        initial = evaluate(net, tokenizer, stage, cfg, fit.val, config)
        log.info("before training: %s", initial)
    history, step, best_logits = _train_epochs(
        fit, examples, optimizer, scheduler, total, checkpoint, state, progress, soft
    )
    calibration, config = _calibrate(fit, best_logits)
    card = {
        "kind": "duorank.reranker/1",
        "base_model": base,
        "config": asdict(cfg),
        "data": {
            "source": catalog.source,
            "pairs": dict(kinds),
            "train": len(split.train),
            "validation_pairs": len(fit.val.labelled),
            "validation_lists": len(fit.val.lists),
        },
        "steps": step,
        "distillation": _distillation(cfg, soft),
        "device": str(dev),
        "train_seconds": time.perf_counter() - started,
        "before_training": initial,
        "epochs": history,
        "calibration": calibration,
        "retrieval": {"tower": stage.features.tower.name, **stage.features.tower.config()},
        "note": "calibration/fusion fitted on the same validation data it is reported on",
    }
    net.to("cpu")
    with atomic_dir(Path(out), MODEL) as staging:
        save_net(net, tokenizer, staging, config, card)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return card


@dataclass
class _Fit:
    """What the loop and the calibration share."""

    net: RerankerNet
    tokenizer: PreTrainedTokenizerBase
    stage: Stage
    cfg: RerankerTrainArgs
    config: RerankerConfig
    val: ValidationSet
    device: torch.device


def _device(device: str | None) -> torch.device:
    """The torch device to train on (default: CUDA when present).

    Raises:
        ValueError: CUDA asked for where torch sees none.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here (use cpu)")
    return dev


def _training_pairs(
    catalog: Catalog,
    split: Split,
    stage: Stage,
    cfg: RerankerTrainArgs,
    count_tokens: Callable[[str], int] | None,
) -> list[Example]:
    """Positives, random and hard negatives from the training histories.

    Raises:
        ValueError: no pair could be built.
    """
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
    return examples


def teacher_targets(
    teacher: Path,
    examples: Sequence[Example],
    stage: Stage,
    cfg: RerankerTrainArgs,
    progress: bool = True,
) -> npt.NDArray[np.float32]:
    """The teacher's served P(like) of every training pair (its own calibration applied),
    scored one user text at a time so a ``user_prefix`` teacher encodes each user side once.

    Raises:
        ValueError: the teacher reads other scalar features than the student.
    """
    from tqdm.auto import tqdm

    from rerank.cross_encoder.inference import Reranker

    _check_teacher(teacher, cfg)
    model = Reranker(teacher)
    groups: dict[str, list[int]] = {}
    for n, example in enumerate(examples):
        groups.setdefault(example.user_text, []).append(n)
    out = np.zeros(len(examples), dtype=np.float32)
    bar = tqdm(groups.items(), desc="teacher scores", unit="user", disable=not progress)
    for text, rows in bar:
        feats = np.array([examples[n].features for n in rows], dtype=np.float32).reshape(
            len(rows), len(cfg.features)
        )
        items = [stage.item_text[examples[n].item_id] for n in rows]
        out[rows] = model.score(text, items, feats if cfg.features else None)
    return out


def _check_teacher(teacher: Path, cfg: RerankerTrainArgs) -> None:
    """Raises ValueError (FileNotFoundError: not a reranker folder) unless ``teacher`` reads
    the scalar features the student is trained with."""
    from rerank.cross_encoder.model import read_config

    features = read_config(teacher).features
    if tuple(features) != tuple(cfg.features):
        raise ValueError(
            f"teacher {teacher} reads features {list(features)}, the student "
            f"{list(cfg.features)}: train the student with the teacher's features"
        )


def _optimiser(
    net: RerankerNet, trainable: list[torch.nn.Parameter], cfg: RerankerTrainArgs, n_examples: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, int]:
    """AdamW with two learning rates, the warm-up-then-decay schedule, and the step budget.

    The backbone fine-tunes gently; the heads start from scratch (the scalar features'
    weights would barely move in a few hundred steps at the backbone's rate).
    """
    import torch

    from retrieval.training import step_budget, warmup_then_decay

    heads = [p for m in (net.head, net.feature_head) if m is not None for p in m.parameters()]
    head_ids = {id(p) for p in heads}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if id(p) not in head_ids], "lr": cfg.lr},
            {"params": heads, "lr": cfg.head_lr},
        ],
        weight_decay=0.01,
    )
    total = step_budget(n_examples, cfg.batch_size, cfg.epochs, cfg.max_steps)
    warmup = max(1, int(total * cfg.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(total, warmup))
    return optimizer, scheduler, total


def _train_epochs(
    fit: _Fit,
    examples: list[Example],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    total: int,
    checkpoint: Path,
    state: dict[str, Any] | None,
    progress: bool,
    soft: npt.NDArray[np.float32] | None = None,
) -> tuple[list[dict[str, Any]], int, Logits | None]:
    """The epochs (from a checkpoint's when resuming), each validated and checkpointed; the
    best epoch by validation AUC is loaded back into the net. ``soft``: a teacher's P(like)
    per example, the binary head's targets in place of the labels.

    Returns:
        The per-epoch records, the steps taken, and the kept epoch's validation logits (None
        when a resumed run kept an epoch before it).
    """
    import torch
    from tqdm.auto import tqdm

    net, cfg, dev = fit.net, fit.cfg, fit.device
    history: list[dict[str, Any]] = state["history"] if state else []
    step = int(state["step"]) if state else 0
    first_epoch = int(state["epoch"]) if state else 0
    # The kept epoch's weights and validation pass (for the fusion; None when a resumed run
    # keeps an epoch from before it).
    best: tuple[dict[str, Any], Logits | None] = (copy.deepcopy(net.state_dict()), None)
    stopper = EarlyStopping(
        cfg.patience, max([auc_rank(h["auc"]) for h in history], default=-1.0), best
    )
    loss_fn = torch.nn.BCEWithLogitsLoss() if cfg.head == "binary" else torch.nn.CrossEntropyLoss()
    lists = example_lists(examples) if cfg.loss == "listwise" else []
    if cfg.loss == "listwise" and not lists:
        raise ValueError("no liked target has a sampled negative: no list to learn from")
    for epoch in range(first_epoch, cfg.epochs):
        net.train()
        losses: list[float] = []
        grouped = list_batches(lists, cfg.batch_size, cfg.seed + epoch) if lists else []
        if cfg.loss == "listwise":
            batches = [[i for lst in batch for i in lst] for batch in grouped]
        else:
            order = list(range(len(examples)))
            random.Random(cfg.seed + epoch).shuffle(order)
            batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for b, idx in enumerate(bar):
            if step >= total:
                break
            chunk = [examples[i] for i in idx]
            batch = collate(fit.tokenizer, chunk, fit.stage, cfg, torch, fit.config.attention)
            logits = net(**to_device(batch, dev))
            if cfg.loss == "listwise":
                loss = listwise_loss(logits[:, 0], [len(lst) for lst in grouped[b]])
            elif cfg.head == "binary":
                labels = [e.label for e in chunk] if soft is None else soft[idx]
                target = torch.tensor(labels, dtype=torch.float32, device=dev)
                loss = loss_fn(logits[:, 0], target)
            else:
                loss = loss_fn(logits, torch.tensor([e.level for e in chunk], device=dev))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            step += 1
        val_logits = validation_logits(net, fit.tokenizer, fit.stage, cfg, fit.val)
        metrics = validation_metrics(*val_logits, fit.val, fit.config)
        record = {
            "epoch": epoch + 1,
            "steps": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            **metrics,
        }
        history.append(record)
        log.info("epoch %d validation: %s", epoch + 1, metrics)
        stop = stopper.update(
            auc_rank(metrics["auc"]), epoch + 1, functools.partial(_snapshot, net, val_logits)
        )
        _save_checkpoint(
            checkpoint,
            net,
            optimizer,
            scheduler,
            {"epoch": epoch + 1, "step": step, "history": history},
        )
        if stop or step >= total:
            break
    assert stopper.snapshot is not None
    best_state, best_logits = stopper.snapshot
    net.load_state_dict(best_state)
    return history, step, best_logits


def _model_config(cfg: RerankerTrainArgs, stage: Stage, base: str) -> RerankerConfig:
    """What the saved model will be: its head, features, text budget and attention, and the
    first stage it learned from."""
    return RerankerConfig(
        head=cfg.head,
        levels=stage.levels,
        threshold=cfg.threshold,
        features=cfg.features,
        max_length=cfg.max_length,
        user_template=asdict(stage.template),
        base_model=base,
        retrieval=stage.features.tower.name,
        attention=cfg.attention,
        item_layers=cfg.item_layers,
    )


def _distillation(
    cfg: RerankerTrainArgs, soft: npt.NDArray[np.float32] | None
) -> dict[str, Any] | None:
    """The card's record of a teacher's targets, or None without a teacher."""
    if soft is None:
        return None
    return {"teacher": cfg.teacher, "mean_target": float(soft.mean()), "pairs": len(soft)}


def _snapshot(net: RerankerNet, logits: Logits) -> tuple[dict[str, Any], Logits]:
    """An epoch worth keeping: a copy of its weights, with its validation pass."""
    return copy.deepcopy(net.state_dict()), logits


def _calibrate(fit: _Fit, best_logits: Logits | None) -> tuple[dict[str, Any], RerankerConfig]:
    """The card's calibration record (the fusion for a binary head with features, else a
    temperature), and the config to save (the temperature changes it)."""
    net, cfg, config, val = fit.net, fit.cfg, fit.config, fit.val
    calibration: dict[str, Any] = {"temperature": 1.0}
    if cfg.calibrate and val.labelled and cfg.head == "binary" and net.feature_head is not None:
        if best_logits is None:  # resumed past the best epoch: one more pass
            best_logits = validation_logits(net, fit.tokenizer, fit.stage, cfg, val)
        before = validation_metrics(best_logits[0], best_logits[1], val, config)
        calibration = fuse(net, best_logits, cfg, val, config, before)
    elif cfg.calibrate and val.labelled:
        logits = predict_logits(net, fit.tokenizer, val.labelled, fit.stage, cfg)
        labels = np.array([e.label for e in val.labelled])
        temperature = fit_temperature(logits, labels, config)
        none = np.zeros((0, logits.shape[1]), dtype=np.float32)
        pairs_only = ValidationSet(val.labelled, [], [])
        before = validation_metrics(logits, none, pairs_only, config)
        config = replace(config, temperature=temperature)
        after = validation_metrics(logits, none, pairs_only, config)
        calibration = {
            "method": "temperature",
            "temperature": temperature,
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "logloss_before": before["logloss"],
            "logloss_after": after["logloss"],
        }
    return calibration, config
