"""The ranker's user folds and the average of their models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerank.ranker.bagging import averaged, grow_in_step, user_folds
from rerank.ranker.model import GBDTRanker, RankerConfig
from tests.rerank.ranker.test_ranking_stage import _synthetic


def _boosters(n: int, rounds: int) -> tuple[list[object], np.ndarray]:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=600) > 0).astype(int)
    params = {
        "objective": "lambdarank",
        "verbosity": -1,
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "num_threads": 1,
    }
    boosters = [
        lgb.train({**params, "seed": s}, lgb.Dataset(x, y, group=[30] * 20), rounds)
        for s in range(n)
    ]
    return boosters, x


def test_the_average_is_one_model_whose_output_and_shap_values_are_the_mean() -> None:
    import lightgbm as lgb

    boosters, x = _boosters(3, 12)
    mean = averaged(boosters, 10)
    assert mean.num_trees() == 30  # the first 10 trees of each
    members = [b.predict(x, num_iteration=10) for b in boosters]  # type: ignore[attr-defined]
    np.testing.assert_allclose(mean.predict(x), np.mean(members, axis=0), atol=1e-12)
    contrib = [b.predict(x, num_iteration=10, pred_contrib=True) for b in boosters]  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        mean.predict(x, pred_contrib=True), np.mean(contrib, axis=0), atol=1e-12
    )
    again = lgb.Booster(model_str=mean.model_to_string())  # saved and read back: the same
    np.testing.assert_array_equal(again.predict(x), mean.predict(x))
    assert not np.allclose(members[0], members[1])  # the members differ: the mean is news


def test_only_boosters_of_the_same_features_average() -> None:
    import lightgbm as lgb

    boosters, x = _boosters(1, 3)
    other = lgb.train(
        {"objective": "regression", "verbosity": -1, "min_data_in_leaf": 5},
        lgb.Dataset(x[:, :4], x[:, 4]),
        3,
    )
    with pytest.raises(ValueError, match="different features"):
        averaged([boosters[0], other], 3)
    with pytest.raises(ValueError, match="no booster"):
        averaged([], 3)


def test_user_folds_keep_a_users_lists_together_and_balance_the_users() -> None:
    users = [f"u{n % 23}" for n in range(200)]
    folds = user_folds(users, 5, seed=0)
    by_user: dict[str, set[int]] = {}
    for u, f in zip(users, folds.tolist(), strict=True):
        by_user.setdefault(u, set()).add(f)
    assert all(len(f) == 1 for f in by_user.values())
    per_fold = np.bincount([next(iter(f)) for f in by_user.values()], minlength=5)
    assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == 23
    assert not np.array_equal(folds, user_folds(users, 5, seed=1))  # seeded
    with pytest.raises(ValueError, match="folds"):
        user_folds(users[:3], 5, seed=0)


def test_boosters_grow_in_step_and_stop_where_their_mean_peaks() -> None:
    import lightgbm as lgb

    lists = _synthetic(200, 0)
    params = {**RankerConfig(min_data_in_leaf=20, threads=1).params()}
    parts = []
    for held in (np.arange(100), np.arange(100, 200)):
        half, other = lists.select(held), lists.select(np.setdiff1d(np.arange(200), held))
        fit = lgb.Dataset(other.x, other.labels, group=other.sizes, free_raw_data=False)
        parts.append((fit, lgb.Dataset(half.x, half.labels, group=half.sizes, reference=fit)))
    rounds = []
    grown = grow_in_step(parts, params, 200, 10, on_round=lambda: rounds.append(1))
    assert len(grown.curve) == len(rounds) < 200  # stopped early
    assert grown.rounds == int(np.argmax(grown.curve)) + 1
    assert len(grown.curve) - grown.rounds == 10  # patience trees past the peak
    assert all(b.current_iteration() == len(grown.curve) for b in grown.boosters)


def test_the_ranker_holds_every_list_out_once_and_serves_the_folds_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train = _synthetic(300, 0)
    config = RankerConfig(max_rounds=60, min_data_in_leaf=20, threads=1, cold_dropout=0.0)
    bagged = GBDTRanker.fit(train, config)
    record = bagged.record
    assert record["folds"] == 5 and record["held_out_lists"] == record["lists_with_target"]
    assert bagged.booster.num_trees() == 5 * record["rounds"]
    assert np.isfinite(record["held_out_list_loss"])
    single = GBDTRanker.fit(train, RankerConfig(**{**config.__dict__, "folds": 1, "bag": False}))
    assert single.record["folds"] == 1 and single.record["held_out_lists"] == 60  # 20% of users
    assert single.booster.num_trees() == single.record["rounds"]  # one refit
    bagged.save(tmp_path / "ranker")
    card_path = tmp_path / "ranker" / "ranker.json"
    assert GBDTRanker.load(tmp_path / "ranker").config == config
    card = json.loads(card_path.read_text())
    for key in ("folds", "bag"):
        del card["config"][key]  # a card written before the folds
    card_path.write_text(json.dumps(card))
    older = GBDTRanker.load(tmp_path / "ranker").config
    assert (older.folds, older.bag) == (1, False)  # what it was trained with
