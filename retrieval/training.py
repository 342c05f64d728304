"""What every training loop shares: seeding, the learning-rate schedule, the step budget and
early stopping on a validation figure. The text model's fine-tuning, the sequential tower, the
cross-encoder and the SASRec baseline all train through these, so a rule changes in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_then_decay(total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then linear decay to
    zero at ``total``."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return schedule


def step_budget(examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """The optimiser steps of a run: every batch of every epoch, capped by ``max_steps``."""
    total = math.ceil(examples / batch_size) * epochs
    return total if max_steps is None else min(total, max_steps)


@dataclass
class EarlyStopping(Generic[T]):
    """The best epoch by a validation figure (higher is better; a tie is no improvement) and
    a snapshot of it; training stops after ``patience`` epochs without improvement.

    Start from a baseline (``best`` and its ``snapshot``: the model before training) or from
    nothing (``snapshot`` None: the first epoch is kept whatever its figure).
    """

    patience: int
    best: float = -math.inf
    snapshot: T | None = None
    epoch: int | None = None  # the kept epoch (1-based), None while the baseline is kept
    stale: int = 0

    def update(self, value: float, epoch: int, snapshot: Callable[[], T]) -> bool:
        """Records an epoch's figure (taking the snapshot only when it improves); True when
        training should stop."""
        if self.snapshot is None or value > self.best:
            self.best, self.epoch, self.snapshot, self.stale = value, epoch, snapshot(), 0
            return False
        self.stale += 1
        return self.stale >= self.patience
