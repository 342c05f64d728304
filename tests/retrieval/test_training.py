"""The pieces every training loop shares: the step budget, the schedule, early stopping."""

from __future__ import annotations

import math

from retrieval.training import EarlyStopping, step_budget, warmup_then_decay


def test_step_budget_counts_every_batch_and_caps() -> None:
    assert step_budget(101, 10, 3, None) == 33
    assert step_budget(101, 10, 3, 20) == 20


def test_warmup_then_decay() -> None:
    schedule = warmup_then_decay(10, 2)
    assert [schedule(s) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    taken: list[int] = []
    stopper: EarlyStopping[int] = EarlyStopping(patience=2)
    figures = [0.1, 0.3, 0.3, 0.2, 0.5]  # a tie is no improvement
    stops = []
    for epoch, value in enumerate(figures, start=1):
        stops.append(stopper.update(value, epoch, lambda e=epoch: taken.append(e) or e))
        if stops[-1]:
            break
    assert stops == [False, False, False, True]  # two epochs without improvement after 2
    assert (stopper.best, stopper.epoch, stopper.snapshot) == (0.3, 2, 2)
    assert taken == [1, 2]  # a snapshot only when the figure improves


def test_a_baseline_must_be_beaten_and_the_first_epoch_kept_without_one() -> None:
    stopper = EarlyStopping(patience=1, best=0.4, snapshot="before training")
    assert stopper.update(0.3, 1, lambda: "epoch 1") is True
    assert stopper.snapshot == "before training" and stopper.epoch is None
    fresh: EarlyStopping[str] = EarlyStopping(patience=1)
    assert fresh.update(math.nan, 1, lambda: "epoch 1") is False
    assert fresh.snapshot == "epoch 1"
