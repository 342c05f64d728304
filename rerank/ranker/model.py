"""The features ranker: LightGBM ``lambdarank`` learning the correction to the first stage.

The score of a pair is point-wise, ``s(u, i) = scale * retrieval_score + trees(features)``: every
candidate is scored on its own and the final order is the sort of the scores. ``scale`` is the
first stage's own order fitted alone (softmax cross-entropy of the target over each training
list); the trees start from it (LightGBM's ``init_score``) and learn only what moves a target up,
so a ranker with no trees is exactly the first stage. The number of trees is chosen by early
stopping on five user folds grown in step (every list held out once), and the served model is
the mean of the five fold models (:mod:`rerank.ranker.bagging`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.fsutil import RANKER, atomic_dir, write_json
from catalog.progress import Progress
from rerank.ranker.bagging import averaged, grow_in_step, user_folds
from rerank.ranker.candidates import Lists
from rerank.ranker.cold import with_cold_copies
from rerank.ranker.forest import Forest, compile_forest

CARD = "ranker.json"
MODEL = "ranker.txt"
LIKE_MODEL = "like.txt"


SERIAL_ROWS = 4096
"""Predictions over fewer rows (one request's candidates) run on the calling thread: they are
faster alone, and LightGBM's OpenMP threads would otherwise spin after each call on the cores
the next request's torch user embedding needs (the p95 tail of a served call)."""


def _predict(booster: Any, x: npt.NDArray[np.floating], **kwargs: Any) -> Any:
    rows = np.asarray(x, dtype=np.float32)
    threads = {"num_threads": 1} if len(rows) < SERIAL_ROWS else {}
    return booster.predict(rows, **threads, **kwargs)


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM's settings (its names) and the protocol around them."""

    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    max_rounds: int = 1000
    early_stopping: int = 50
    truncation_level: int = 30
    folds: int = 5
    """User folds that choose the number of trees (:mod:`rerank.ranker.bagging`: each fold's
    lists held out once, the folds' mean curve); 1: one held-out share of ``holdout`` users."""
    bag: bool = True
    """Serve the mean of the fold models (False: one refit on every list for that many
    trees)."""
    holdout: float = 0.2
    """The held-out share of users with one fold (and of the P(like) head)."""
    residual: bool = True
    seed: int = 0
    threads: int = 0
    cold_dropout: float = 0.5
    """Share of rows read as an item with no events in each training list's cold copy
    (:mod:`rerank.ranker.cold`; 0: no copies); the early-stopping lists stay as they are."""

    def params(self) -> dict[str, Any]:
        """The LightGBM parameter dict."""
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "ndcg_eval_at": [10],
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "lambdarank_truncation_level": self.truncation_level,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.threads,
            "verbosity": -1,
        }


def list_loss(scores: npt.NDArray[np.floating], lists: Lists) -> float:
    """Mean softmax cross-entropy of the target over each list that holds one."""
    off = lists.offsets
    losses = []
    for n in range(len(lists.sizes)):
        s = np.asarray(scores[off[n] : off[n + 1]], dtype=np.float64)
        y = lists.labels[off[n] : off[n + 1]]
        if not y.any():
            continue
        top = s.max()
        losses.append(np.log(np.exp(s - top).sum()) + top - s[y > 0].max())
    return float(np.mean(losses)) if losses else float("nan")


def fit_scale(base: npt.NDArray[np.floating], lists: Lists) -> float:
    """The non-negative scale of the first stage's score that best predicts the targets."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda s: list_loss(s * base, lists), bounds=(0.0, 500.0), method="bounded"
    )
    return float(result.x)


def with_targets(lists: Lists) -> Lists:
    """The lists that hold their target (the others carry no ranking signal)."""
    off = lists.offsets
    keep = [n for n in range(len(lists.sizes)) if lists.labels[off[n] : off[n + 1]].any()]
    return lists.select(np.array(keep, dtype=np.int64))


OLDER_CARDS = {"cold_dropout": 0.0, "folds": 1, "bag": False}
"""What a card written before these settings existed was trained with."""


def _folds(users: Sequence[str], cfg: RankerConfig) -> npt.NDArray[np.int64]:
    """Per list, the fold that holds it out (-1: none; with one fold, the ``holdout`` share of
    users is fold 0)."""
    distinct = sorted(set(users))
    if cfg.folds > 1 and len(distinct) >= cfg.folds:
        return user_folds(users, cfg.folds, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    held = set(rng.choice(distinct, max(1, int(len(distinct) * cfg.holdout)), replace=False))
    return np.array([0 if u in held else -1 for u in users], dtype=np.int64)


def _folds_of(
    users: Sequence[str], known: Sequence[str], folds: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The folds of extra lists' users: their user's fold (-1: a user with no list there)."""
    fold_of = dict(zip(known, folds.tolist(), strict=True))
    return np.array([fold_of.get(u, -1) for u in users], dtype=np.int64)


def _held_out_losses(
    boosters: Sequence[Any], held: Sequence[Lists], rounds: int, scale: float, base: int
) -> dict[str, float]:
    """The list loss of every held-out list under its own fold's model (out of fold), and
    under the first stage alone, weighted by the folds' lists."""
    weights = [len(h.sizes) for h in held]
    trees = [
        scale * h.x[:, base] + booster.predict(h.x, num_iteration=rounds)
        for booster, h in zip(boosters, held, strict=True)
    ]
    return {
        "held_out_list_loss": float(
            np.average([list_loss(t, h) for t, h in zip(trees, held, strict=True)], weights=weights)
        ),
        "held_out_list_loss_first_stage": float(
            np.average([list_loss(scale * h.x[:, base], h) for h in held], weights=weights)
        ),
    }


def read_card(folder: str | Path) -> dict[str, Any]:
    """A ranker folder's ``ranker.json``.

    Raises:
        FileNotFoundError: the folder holds no ranker (names it).
        ValueError: the card is not a ranker's card (names the file).
    """
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent}: not a ranker folder (no {CARD}; train one with `duorank train ranker`)"
        )
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("kind") != "gbdt" or "names" not in card:
        raise ValueError(f"{path}: not a ranker card (kind 'gbdt' with feature names)")
    return card


@dataclass(frozen=True)
class ServedChoice:
    """What a trained ranker's card says about serving: which order won on validation and the
    figures behind it (read once, here, for serving and the CLI)."""

    served: str  # "ranker" or "first_stage"
    ndcg10: float | None = None
    first_stage_ndcg10: float | None = None

    @property
    def serves(self) -> bool:
        return self.served == "ranker"

    def figures(self) -> str:
        """The validation figures in words."""
        if self.ndcg10 is None or self.first_stage_ndcg10 is None:
            return "its card records no validation figures"
        return (
            f"validation NDCG@10 {self.ndcg10:.4f} against the first stage's "
            f"{self.first_stage_ndcg10:.4f}"
        )

    @classmethod
    def of(cls, record: dict[str, Any]) -> ServedChoice:
        """From a card's ``record`` (a card without a choice predates it: the ranker serves)."""
        choice = record.get("choice") or {}
        return cls(
            str(choice.get("served", "ranker")),
            choice.get("ndcg@10"),
            choice.get("first_stage_ndcg@10"),
        )


class GBDTRanker:
    """A fitted features ranker (see the module docstring)."""

    def __init__(
        self,
        booster: Any,
        names: Sequence[str],
        scale: float,
        config: RankerConfig,
        record: dict[str, Any],
        base: str = "retrieval_score",
        like: LikeModel | None = None,
    ) -> None:
        self.like = like
        self.booster = booster
        self.names = tuple(names)
        self.scale = scale
        self.config = config
        self.record = record
        self.base = base
        self._forest: Forest | bool | None = False  # False: not compiled yet

    @property
    def choice(self) -> ServedChoice:
        """What the card says about serving (read from :attr:`record` each time)."""
        return ServedChoice.of(self.record)

    @classmethod
    def fit(
        cls,
        lists: Lists,
        config: RankerConfig | None = None,
        *,
        base: str = "retrieval_score",
        extra: Lists | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GBDTRanker:
        """Fits on training lists (labels mark each list's target); with
        ``config.cold_dropout``, on each list and its cold copy (read with ``lists.depths``).
        ``extra`` lists (the short copies of :func:`rerank.ranker.stacking.short_copies`) are
        learned too but never pick the number of trees: early stopping reads ``lists`` only,
        and a held-out user's extra lists sit out that fold's fit.

        Raises:
            ValueError: no list holds its target, ``base`` is not a feature, or a source of
                the lists has no depth for the cold copies.
        """
        import lightgbm as lgb

        cfg = config or RankerConfig()

        def cold(part: Lists) -> Lists:
            return with_cold_copies(part, cfg.cold_dropout, part.depths, cfg.seed + 1)

        if base not in lists.names:
            raise ValueError(f"base feature {base!r} is not among {list(lists.names)}")
        train = with_targets(lists)
        if not len(train.sizes):
            raise ValueError(
                f"none of the {len(lists.sizes)} training lists holds its target: no source "
                "proposed any target; deepen the sources or use more history"
            )
        b = list(lists.names).index(base)
        scale = fit_scale(train.x[:, b], train) if cfg.residual else 0.0
        folds = _folds(train.users, cfg)
        k = int(folds.max()) + 1

        def dataset(part: Lists, reference: Any = None) -> Any:
            return lgb.Dataset(
                part.x,
                part.labels,
                group=part.sizes,
                init_score=scale * part.x[:, b],
                feature_name=list(part.names),
                reference=reference,
                free_raw_data=False,
            )

        more = with_targets(extra) if extra is not None else None
        more_folds = _folds_of(more.users, train.users, folds) if more is not None else None
        parts, held_parts = [], []
        for f in range(k):
            fit_part = train.select(np.flatnonzero(folds != f))
            if more is not None and more_folds is not None and len(more.sizes):
                fit_part = fit_part.extended(more.select(np.flatnonzero(more_folds != f)))
            held = train.select(np.flatnonzero(folds == f))
            d_fit = dataset(cold(fit_part))
            parts.append((d_fit, dataset(held, d_fit)))
            held_parts.append(held)
        bar = Progress("ranker: boosting", cfg.max_rounds, "trees", enabled=progress is not None)
        with bar:  # the ceiling; early stopping usually ends it sooner
            grown = grow_in_step(
                parts, cfg.params(), cfg.max_rounds, cfg.early_stopping, on_round=bar.update
            )
        rounds = grown.rounds
        held_lists = sum(len(h.sizes) for h in held_parts)
        if progress:
            progress(f"ranker: {rounds} trees chosen on {held_lists} held-out lists ({k} folds)")
        record = {
            "lists": len(lists.sizes),
            "lists_with_target": len(train.sizes),
            "extra_lists_with_target": len(more.sizes) if more is not None else 0,
            "folds": k,
            "held_out_lists": held_lists,
            "rounds": rounds,
            "scale": scale,
            "held_out_ndcg@10": grown.best,
            **_held_out_losses(grown.boosters, held_parts, rounds, scale, b),
        }
        if cfg.bag and k > 1:  # the mean of the fold models: every list was held out once
            final = averaged(grown.boosters, rounds)
        else:  # one refit on every list for the chosen number of trees
            every = train.extended(more) if more is not None and len(more.sizes) else train
            final = lgb.train(cfg.params(), dataset(cold(every)), num_boost_round=rounds)
        record.update(bagged=bool(cfg.bag and k > 1), trees=final.num_trees())
        return cls(final, lists.names, scale, cfg, record, base)

    def score(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """``scale * base + trees(x)`` for rows of :attr:`names` features."""
        b = self.names.index(self.base)
        trees = self.trees(x)
        out: npt.NDArray[np.float64] = self.scale * np.asarray(x[:, b], np.float64) + trees
        return out

    def trees(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The trees' output for rows of :attr:`names` features: one request's rows through the
        compiled trees (:mod:`rerank.ranker.forest`, LightGBM's scores to the bit; compiled by
        :meth:`compile` or on first use), larger batches through LightGBM's threads."""
        if len(x) < SERIAL_ROWS and self.compile():
            assert isinstance(self._forest, Forest)
            return self._forest.predict(x)
        return np.asarray(_predict(self.booster, x), dtype=np.float64)

    def compile(self) -> bool:
        """Compiles the trees for one request's rows now rather than on the first call (a
        serving process does it at load, so no call's timing carries numba's start-up); True
        when they serve compiled, False when LightGBM's ``predict`` serves
        (:func:`rerank.ranker.forest.compile_forest` says why)."""
        if self._forest is False:
            self._forest = compile_forest(self.booster)
        return isinstance(self._forest, Forest)

    def contributions(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Per row, each feature's part of the trees' output (TreeSHAP, LightGBM's
        ``pred_contrib``): how the features moved the row against ``scale * base``."""
        out = _predict(self.booster, x, pred_contrib=True)
        return np.asarray(out, dtype=np.float64)[:, :-1]

    def importance(self) -> dict[str, float]:
        """Each feature's share of the trees' total gain."""
        gain = self.booster.feature_importance(importance_type="gain")
        total = float(gain.sum()) or 1.0
        return {n: float(g) / total for n, g in zip(self.names, gain, strict=True)}

    def save(self, folder: str | Path) -> Path:
        """Writes ``ranker.txt`` (LightGBM's model), ``like.txt`` (the P(like) head, when
        there is one) and ``ranker.json`` (the card); the folder is replaced whole or not at
        all."""
        card = {
            "kind": "gbdt",
            "names": list(self.names),
            "base": self.base,
            "scale": self.scale,
            "config": asdict(self.config),
            "record": self.record,
        }
        if self.like is not None:
            card["like"] = {"names": list(self.like.names), "record": self.like.record}
        with atomic_dir(Path(folder), RANKER) as staging:
            (staging / MODEL).write_text(self.booster.model_to_string())
            if self.like is not None:
                (staging / LIKE_MODEL).write_text(self.like.booster.model_to_string())
            write_json(staging / CARD, card)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> GBDTRanker:
        """Reads what :meth:`save` wrote."""
        import lightgbm as lgb

        path = Path(folder)
        card = read_card(path)
        model = path / MODEL
        if not model.is_file():
            raise FileNotFoundError(f"{model}: missing (the ranker folder is incomplete)")
        booster = lgb.Booster(model_str=model.read_text())
        like = None
        if "like" in card:
            like = LikeModel(
                lgb.Booster(model_str=(path / LIKE_MODEL).read_text()),
                card["like"]["names"],
                card["like"]["record"],
            )
        return cls(
            booster,
            card["names"],
            float(card["scale"]),
            RankerConfig(**{**OLDER_CARDS, **card["config"]}),
            card["record"],
            card["base"],
            like,
        )


LIKE_PARAMS: dict[str, Any] = {"num_leaves": 7, "min_data_in_leaf": 100, "learning_rate": 0.03}
"""The P(like) head's own tree settings over the ranker's: it learns one row per stacked target
(a few thousand), where the ranker's 31 leaves overfit (chosen by user-grouped cross-validation
on the stacked rows and the validation AUC, ``benchmarks/results/like-head.json``)."""


class LikeModel:
    """P(like) of a pair, a separate head: LightGBM's binary log loss on the like/dislike of
    held-out events, over the features that do not depend on which source proposed the item
    (the user's and the item's ratings, the neighbours' ratings, popularity, similarity). It
    never reorders the ranking; a binary log loss makes its output a probability."""

    def __init__(self, booster: Any, names: Sequence[str], record: dict[str, Any]) -> None:
        self.booster = booster
        self.names = tuple(names)
        self.record = record

    @classmethod
    def fit(
        cls,
        x: npt.NDArray[np.floating],
        labels: npt.NDArray[np.floating],
        names: Sequence[str],
        users: Sequence[str],
        config: RankerConfig | None = None,
    ) -> LikeModel:
        """Fits on rows of ``names`` features with like (1) / dislike (0) labels; the number
        of trees by early stopping on held-out users' rows.

        Raises:
            ValueError: the labels are all one class.
        """
        import lightgbm as lgb

        cfg = config or RankerConfig()
        y = np.asarray(labels, dtype=np.float32)
        if len(set(y.tolist())) < 2:
            raise ValueError(f"P(like) needs likes and dislikes; {len(y)} rows of one class")
        rng = np.random.default_rng(cfg.seed)
        distinct = sorted(set(users))
        held = set(rng.choice(distinct, max(1, int(len(distinct) * cfg.holdout)), replace=False))
        mask = np.array([u in held for u in users])
        params = {
            **cfg.params(),
            **LIKE_PARAMS,
            "objective": "binary",
            "metric": "binary_logloss",
        }
        for key in ("ndcg_eval_at", "lambdarank_truncation_level"):
            params.pop(key)
        fit = lgb.Dataset(x[~mask], y[~mask], feature_name=list(names), free_raw_data=False)
        val = lgb.Dataset(x[mask], y[mask], reference=fit, free_raw_data=False)
        booster = lgb.train(
            params,
            fit,
            num_boost_round=cfg.max_rounds,
            valid_sets=[val],
            valid_names=["held_out"],
            callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)],
        )
        rounds = max(1, int(booster.best_iteration or cfg.max_rounds))
        final = lgb.train(
            params, lgb.Dataset(x, y, feature_name=list(names)), num_boost_round=rounds
        )
        record = {"rows": len(y), "likes": float(y.mean()), "rounds": rounds, **LIKE_PARAMS}
        return cls(final, names, record)

    def probability(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """P(like) for rows of :attr:`names` features."""
        out: npt.NDArray[np.float64] = np.asarray(_predict(self.booster, x), dtype=np.float64)
        return out
