"""The validation fusion: ranking order from the lists, probability from the likes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rerank.cross_encoder import fusion

COLUMNS = ("text", "retrieval_score", "log_popularity", "user_rating_deviation")


def _lists(
    rng: np.random.Generator, n: int, size: int, key: int | None
) -> tuple[list[npt.NDArray[np.float64]], list[int]]:
    """Candidate lists; the target is the best by column ``key`` (None: random)."""
    lists, targets = [], []
    for _ in range(n):
        rows = rng.normal(size=(size, len(COLUMNS)))
        rows[:, 3] = rng.normal()  # a user-level column: constant within the list
        lists.append(rows)
        targets.append(int(rng.integers(size)) if key is None else int(np.argmax(rows[:, key])))
    return lists, targets


def _labelled(
    rng: np.random.Generator, n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Held-out pairs whose like depends on the user-level column only."""
    rows = rng.normal(size=(n, len(COLUMNS)))
    labels = (rows[:, 3] + 0.3 * rng.normal(size=n) > 0).astype(float)
    return rows, labels


def test_the_lists_choose_the_order_and_the_likes_the_probability() -> None:
    rng = np.random.default_rng(0)
    lists, targets = _lists(rng, 200, 20, key=2)  # popularity decides what is chosen
    rows, labels = _labelled(rng, 300)
    fit = fusion.fit(COLUMNS, rows, labels, lists, targets, user_level=["user_rating_deviation"])
    w = dict(zip(COLUMNS, fit.weights, strict=True))
    assert w["log_popularity"] > 5 * abs(w["retrieval_score"])
    assert w["user_rating_deviation"] > 1.0  # the likes' signal
    assert fit.record["lists_with_target"] == 200 and set(fit.record["cv_list_loss"])
    # Fused order within every list is the ranking part's order: calibration cannot reorder.
    hits = [int(np.argmax(fit.logits(lst)) == t) for lst, t in zip(lists, targets, strict=True)]
    assert np.mean(hits) > 0.9
    # The probability separates likes from dislikes.
    p = 1 / (1 + np.exp(-fit.logits(rows)))
    assert p[labels == 1].mean() > p[labels == 0].mean() + 0.3


def test_noise_features_leave_the_first_stage_order() -> None:
    rng = np.random.default_rng(1)
    lists, targets = _lists(rng, 30, 20, key=1)  # the retrieval score decides; the rest is noise
    rows, labels = _labelled(rng, 100)
    fit = fusion.fit(COLUMNS, rows, labels, lists, targets, user_level=["user_rating_deviation"])
    assert fit.record["prior"] == "retrieval_score" and fit.record["prior_scale"] > 1.0
    same_top = [int(np.argmax(fit.logits(lst)) == np.argmax(lst[:, 1])) for lst in lists]
    assert np.mean(same_top) >= 0.9
    # No lists at all: the retrieval score alone orders, scaled by a positive alpha.
    fit0 = fusion.fit(COLUMNS, rows, labels, [], [], user_level=["user_rating_deviation"])
    w0 = dict(zip(COLUMNS, fit0.weights, strict=True))
    assert w0["retrieval_score"] > 0 and w0["text"] == 0 and w0["log_popularity"] == 0
    assert fit0.record["lists_with_target"] == 0


def test_gains_the_lists_cannot_measure_keep_the_first_stage_order_exactly() -> None:
    rng = np.random.default_rng(2)
    lists, targets = [], []
    for _ in range(60):  # the target follows the retrieval score loosely; the rest is noise
        rows = rng.normal(size=(20, len(COLUMNS)))
        rows[:, 3] = rng.normal()
        p = np.exp(rows[:, 1]) / np.exp(rows[:, 1]).sum()
        lists.append(rows)
        targets.append(int(rng.choice(20, p=p)))
    rows, labels = _labelled(rng, 100)
    fit = fusion.fit(COLUMNS, rows, labels, lists, targets, user_level=["user_rating_deviation"])
    cv, se = fit.record["cv_list_loss"], fit.record["cv_list_loss_se"]
    best = min(cv, key=lambda k: cv[k])
    assert fit.record["chosen"] == "prior" and cv["prior"] <= cv[best] + se[best]
    w = dict(zip(COLUMNS, fit.weights, strict=True))
    assert w["text"] == 0 and w["log_popularity"] == 0 and w["retrieval_score"] > 0
    for lst in lists:  # the served order is the retrieval order, item for item
        np.testing.assert_array_equal(
            np.argsort(-fit.logits(lst), kind="stable"), np.argsort(-lst[:, 1], kind="stable")
        )
