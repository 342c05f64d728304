"""The ranker's trees compiled for one request's rows: LightGBM's scores to the bit, or LightGBM
itself where they cannot be."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rerank.ranker import forest as forest_module
from rerank.ranker.forest import Forest, compile_forest, parse_forest
from rerank.ranker.model import SERIAL_ROWS, GBDTRanker, RankerConfig


def _rows(n: int, seed: int) -> np.ndarray:
    """Rows with NaNs, exact zeros, values below LightGBM's zero threshold and a constant
    column (a feature no tree splits on)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.03] = 1e-36
    x[:, 5] = 1.0
    return x


def _booster(objective: str = "lambdarank", **params: Any) -> Any:
    import lightgbm as lgb

    x = _rows(900, 0)
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])
    y = (signal + np.random.default_rng(1).normal(size=900) > 0).astype(int)
    settings = {
        "objective": objective,
        "verbosity": -1,
        "num_leaves": 15,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        **params,
    }
    group = [30] * 30 if objective == "lambdarank" else None
    return lgb.train(settings, lgb.Dataset(x, y, group=group), 40)


@pytest.mark.parametrize(
    "params",
    [
        {},  # NaN is its own way (LightGBM's default)
        {"zero_as_missing": True},  # zero is the missing value
        {"use_missing": False},  # NaN reads as zero
        {"min_data_in_leaf": 2000},  # one-leaf trees only
    ],
    ids=["nan-missing", "zero-missing", "no-missing", "one-leaf"],
)
def test_compiled_trees_score_exactly_as_lightgbm(params: dict[str, Any]) -> None:
    booster = _booster(**params)
    forest = compile_forest(booster)
    assert isinstance(forest, Forest)
    x = _rows(300, 7)
    np.testing.assert_array_equal(forest.predict(x), booster.predict(x, num_threads=1))
    if "min_data_in_leaf" not in params:  # the trees split: rows get different scores
        assert len(set(forest.predict(x).tolist())) > 10


def test_the_split_kinds_under_test_are_the_ones_named() -> None:
    kinds = {
        name: {int(d) >> 2 & 3 for d in parse_forest(_booster(**p).model_to_string()).decision}
        for name, p in {"nan": {}, "zero": {"zero_as_missing": True}}.items()
    }
    assert 2 in kinds["nan"] and 1 in kinds["zero"]  # NaN-missing and zero-missing splits


def test_a_model_with_an_output_transform_or_a_categorical_split_keeps_lightgbm() -> None:
    import lightgbm as lgb

    assert compile_forest(_booster("binary")) is None  # predict is a sigmoid of the sum
    x = np.random.default_rng(0).integers(0, 5, size=(400, 2)).astype(np.float64)
    y = (x[:, 0] == 3).astype(int)
    data = lgb.Dataset(x, y, categorical_feature=[0])
    categorical = lgb.train(
        {
            "objective": "regression",
            "verbosity": -1,
            "min_data_in_leaf": 5,
            "min_data_per_group": 5,
        },
        data,
        5,
    )
    assert "num_cat=0" not in categorical.model_to_string()
    assert compile_forest(categorical) is None


def test_a_difference_from_lightgbm_keeps_lightgbm(monkeypatch: pytest.MonkeyPatch) -> None:
    booster = _booster()
    real = forest_module.parse_forest

    def off_by_a_leaf(text: str) -> Forest:
        f = real(text)
        f.leaf[0] += 1e-9
        return f

    monkeypatch.setattr(forest_module, "parse_forest", off_by_a_leaf)
    assert compile_forest(booster) is None


def test_without_numba_the_ranker_keeps_lightgbm(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(forest_module, "_kernel", missing)
    assert compile_forest(_booster()) is None


def test_the_ranker_scores_a_request_through_the_compiled_trees() -> None:
    booster = _booster()
    names = [f"f{i}" for i in range(6)]
    ranker = GBDTRanker(booster, names, 0.5, RankerConfig(), {}, base="f0")
    x = _rows(200, 3)
    expected = 0.5 * x[:, 0].astype(np.float64) + booster.predict(x, num_threads=1)
    np.testing.assert_array_equal(ranker.score(x), expected)
    assert isinstance(ranker._forest, Forest)  # a request's rows took the compiled path
    big = _rows(SERIAL_ROWS + 1, 4)  # a batch goes through LightGBM's threads: the same
    np.testing.assert_array_equal(ranker.trees(big), ranker._forest.predict(big))


def test_rows_of_the_wrong_width_are_refused() -> None:
    forest = compile_forest(_booster())
    assert forest is not None
    with pytest.raises(ValueError, match="rows of 6 features expected"):
        forest.predict(np.zeros((3, 5), dtype=np.float32))


def test_a_ranker_whose_trees_cannot_be_compiled_scores_with_lightgbm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rerank.ranker import model as model_module

    monkeypatch.setattr(model_module, "compile_forest", lambda booster: None)
    booster = _booster()
    ranker = GBDTRanker(booster, [f"f{i}" for i in range(6)], 0.5, RankerConfig(), {}, base="f0")
    x = _rows(50, 9)
    expected = 0.5 * x[:, 0].astype(np.float64) + booster.predict(x, num_threads=1)
    np.testing.assert_array_equal(ranker.score(x), expected)
    assert ranker._forest is None  # tried once, LightGBM kept
    assert ranker.compile() is False
    compiled = GBDTRanker(booster, [f"f{i}" for i in range(6)], 0.5, RankerConfig(), {}, base="f0")
    monkeypatch.undo()
    assert compiled.compile() is True and isinstance(compiled._forest, Forest)
