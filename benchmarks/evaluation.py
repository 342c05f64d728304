"""`duorank eval`: offline evaluation with full ranking, honest baselines and a report.

Protocol (per-user temporal leave-one-out, see :func:`catalog.splits.leave_one_out`): each
user's last interaction is the test item, the second-to-last the validation item; ties in time
are broken by a seeded random order. Hyperparameters are chosen on validation (models fitted on
train); the chosen models are refitted on train + validation and evaluated once on test. Every
method ranks the full catalog minus the user's known items (train, and validation when testing).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from benchmarks.baselines import ImplicitScorer, ItemKNNScorer, PopularityScorer, Scorer
from catalog.history import group_histories
from catalog.model import Catalog, Interactions, User
from catalog.splits import Split, leave_one_out
from catalog.text import ItemTextTemplate, UserTextTemplate
from catalog.thresholds import COLD_ITEM_THRESHOLD, LIKE_THRESHOLD
from metrics import (
    auc,
    coverage_at_k,
    expected_calibration_error,
    hit_rate_at_k,
    logloss,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    top_k,
)
from rerank.data import FeatureMaker, RatingStats
from retrieval.index import FlatIndex, VectorIndex
from retrieval.sequential import SequentialConfig
from retrieval.sequential_train import train_sequential
from retrieval.towers import HistoryTextTower, MeanItemsTower, UserState, UserTower
from retrieval.vectors import ItemVectors

log = logging.getLogger(__name__)

KS = (10, 20, 50, 100)
RERANK_DEPTH = 100
"""Candidates reranked per user: the serving default (and what every @100 column needs)."""
SEEDS_PROTOCOL = (
    "the first seed chooses epochs and cold-item blend on validation; every seed refits on "
    "train + validation with them (its own initialisation and batch order) and is tested once"
)
"""Test items with fewer training interactions than this count as cold."""


@dataclass
class Fold:
    """One evaluation fold: what the model may see, and the held-out item per user."""

    name: str
    train: Interactions
    target: Interactions
    users: list[str]
    user_row: dict[str, int]
    item_ids: list[str]
    item_col: dict[str, int]
    matrix: sp.csr_matrix
    seen: list[set[int]] = field(default_factory=list)
    relevant: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    like: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))


def make_fold(
    name: str,
    catalog: Catalog,
    train: Interactions,
    target: Interactions,
    max_users: int | None,
    seed: int,
) -> Fold:
    """Matrix of ``train``, and for each target user the held-out item and its like label."""
    item_ids = list(catalog.items)
    item_col = {i: n for n, i in enumerate(item_ids)}
    all_users = sorted(set(train.user_ids.tolist()) | set(target.user_ids.tolist()))
    user_row = {u: n for n, u in enumerate(all_users)}
    rows = np.array([user_row[u] for u in train.user_ids.tolist()], dtype=np.int64)
    cols = np.array([item_col[i] for i in train.item_ids.tolist()], dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(all_users), len(item_ids))
    )
    matrix.data[:] = 1.0  # repeated events count once
    targets = {
        u: (i, r)
        for u, i, r in zip(
            target.user_ids.tolist(), target.item_ids.tolist(), target.ratings.tolist(), strict=True
        )
    }
    users = sorted(targets)
    if max_users is not None and len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False))
    seen = [set(matrix[user_row[u]].indices.tolist()) for u in users]
    relevant = np.array([item_col[targets[u][0]] for u in users], dtype=np.int64)
    like = np.array(
        [
            1.0 if (math.isnan(targets[u][1]) or targets[u][1] >= LIKE_THRESHOLD) else 0.0
            for u in users
        ]
    )
    return Fold(
        name, train, target, users, user_row, item_ids, item_col, matrix, seen, relevant, like
    )


@dataclass
class Ranked:
    """A method's output on a fold: top-100 item columns per user and the target's score."""

    top: npt.NDArray[np.int64]
    target_score: npt.NDArray[np.float64]
    probabilities: bool = False


def rank_with(scorer: Scorer, fold: Fold, depth: int = max(KS)) -> Ranked:
    """Full ranking with a scorer, seen items excluded."""
    rows = np.array([fold.user_row[u] for u in fold.users], dtype=np.int64)
    tops, target = [], []
    for start in range(0, len(rows), 256):
        block = scorer.scores(rows[start : start + 256]).astype(np.float64)
        for n, seen in enumerate(fold.seen[start : start + 256]):
            block[n, list(seen)] = -np.inf
        target.append(block[np.arange(len(block)), fold.relevant[start : start + 256]])
        tops.append(top_k(block, depth))
    return Ranked(np.concatenate(tops), np.concatenate(target))


def rank_two_tower(
    tower: UserTower,
    index: VectorIndex,
    fold: Fold,
    histories: Mapping[str, Sequence[Any]],
    depth: int = max(KS),
    *,
    item_vectors: ItemVectors | None = None,
    profiles: Mapping[str, Mapping[str, str]] | None = None,
) -> Ranked:
    """The user path of the Recommender: tower vector -> index search, seen items excluded.

    A user the tower cannot embed gets popularity order (the Recommender's cold-start
    fallback). ``item_vectors`` (default: the mean-items tower's own) scores the target.
    """
    if item_vectors is None:
        if not isinstance(tower, MeanItemsTower):
            raise ValueError("item_vectors is required for towers other than mean_items")
        item_vectors = tower.item_vectors
    states = [UserState(u, (profiles or {}).get(u, {}), histories.get(u, [])) for u in fold.users]
    vectors = tower.embed(states)
    pop = np.asarray(fold.matrix.sum(axis=0)).ravel()
    pop_order = np.argsort(-pop, kind="stable")
    exclude = [{fold.item_ids[c] for c in s} for s in fold.seen]
    result = index.search(vectors, depth, exclude=exclude)
    top = np.array(
        [[fold.item_col[i] for i in row] + [-1] * (depth - len(row)) for row in result.ids],
        dtype=np.int64,
    )
    target_vecs = item_vectors.matrix[item_vectors.rows([fold.item_ids[c] for c in fold.relevant])]
    target = np.einsum("ij,ij->i", vectors, target_vecs).astype(np.float64)
    for n, v in enumerate(vectors):
        if not np.any(v):
            top[n] = [c for c in pop_order if c not in fold.seen[n]][:depth]
            target[n] = 0.0
    return Ranked(top, target)


def metrics_of(
    ranked: Ranked, fold: Fold, cold: npt.NDArray[np.bool_] | None = None
) -> dict[str, Any]:
    """Recall/HR, NDCG, MRR at every K; coverage; like/dislike AUC (and log loss)."""
    rel = fold.relevant[:, None]
    out: dict[str, Any] = {}
    for k in KS:
        out[f"recall@{k}"] = float(recall_at_k(ranked.top, rel, k))
        out[f"hr@{k}"] = float(hit_rate_at_k(ranked.top, rel, k))
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranked.top, rel, k))
        out[f"mrr@{k}"] = float(mrr_at_k(ranked.top, rel, k))
    out["coverage@10"] = coverage_at_k(ranked.top, 10, len(fold.item_ids))
    finite = np.isfinite(ranked.target_score)
    if finite.all() and len(set(fold.like.tolist())) == 2:
        out["auc"] = auc(ranked.target_score, fold.like)
        if ranked.probabilities:
            out["logloss"] = logloss(ranked.target_score, fold.like)
    if cold is not None and cold.any():
        out["cold_items"] = int(cold.sum())
        out["cold_recall@100"] = float(recall_at_k(ranked.top[cold], rel[cold], 100))
    return out


def per_user_ndcg10(ranked: Ranked, fold: Fold) -> npt.NDArray[np.float64]:
    """NDCG@10 per user (for bootstrap intervals)."""
    values = ndcg_at_k(ranked.top, fold.relevant[:, None], 10, per_user=True)
    return np.asarray(values, dtype=np.float64)


def bootstrap_ci(
    values: npt.NDArray[np.float64], *, samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling users with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def tune(
    candidates: Sequence[Scorer], fold: Fold, metric: str = "ndcg@10"
) -> tuple[Scorer, list[dict[str, Any]]]:
    """Fits each candidate on the validation fold; returns the best and the grid's results."""
    grid = []
    best: tuple[float, Scorer] | None = None
    for scorer in candidates:
        started = time.perf_counter()
        scorer.fit(fold.matrix)
        value = metrics_of(rank_with(scorer, fold), fold)[metric]
        grid.append(
            {"params": dict(scorer.params), metric: value, "seconds": time.perf_counter() - started}
        )
        if best is None or value > best[0]:
            best = (value, scorer)
    assert best is not None
    return best[1], grid


def rerank_top(
    ranked: Ranked,
    fold: Fold,
    catalog: Catalog,
    reranker: Any,
    features: FeatureMaker,
    histories: Mapping[str, Sequence[Any]],
    template: UserTextTemplate,
    depth: int = RERANK_DEPTH,
) -> Ranked:
    """Reranks each user's top ``depth`` with the point-wise reranker (the Recommender's path:
    same user text, same features), and scores the held-out item for AUC."""
    item_template = ItemTextTemplate()
    top = np.full_like(ranked.top, -1)
    target = np.zeros(len(fold.users))
    for n, user in enumerate(fold.users):
        history = histories.get(user, [])
        text = template.render(catalog.users.get(user, User(user)), history, catalog.items)
        vector = features.user_vector(history)
        cols = [c for c in ranked.top[n, :depth].tolist() if c >= 0]
        ids = [fold.item_ids[c] for c in [*cols, int(fold.relevant[n])]]
        feats = features.features(vector, ids, history)
        probs = reranker.score(text, [item_template.render(catalog.items[i]) for i in ids], feats)
        order = np.argsort(-probs[:-1], kind="stable")
        top[n, : len(cols)] = np.array(cols)[order]
        target[n] = probs[-1]
    return Ranked(top, target, probabilities=True)


def _seed_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-seed runs of one method with the mean and spread of their NDCG@10."""
    values = np.array([r["ndcg@10"] for r in runs])
    return {
        "protocol": SEEDS_PROTOCOL,
        "runs": list(runs),
        "ndcg@10_mean": float(values.mean()),
        "ndcg@10_std": float(values.std(ddof=1)),
    }


def _seed_mean_vs(
    rankings: Sequence[Ranked], reference: Ranked, fold: Fold, seed: int
) -> dict[str, Any]:
    """The seeds' mean NDCG@10 against the reference's: the ratio, and the paired bootstrap
    interval of the difference, each user's NDCG@10 averaged over the seeds' models first.

    The headline is the mean over seeds, so its interval resamples users once with every
    seed's ranking of them: the spread left is the test users', not the initialisations'."""
    per_user = np.mean([per_user_ndcg10(r, fold) for r in rankings], axis=0)
    ref = per_user_ndcg10(reference, fold)
    return {
        "ndcg@10_mean_vs_reference": float(per_user.mean() / ref.mean()) if ref.mean() else None,
        "ndcg@10_mean_minus_reference_ci95": list(bootstrap_ci(per_user - ref, seed=seed)),
        "reference": "als",
    }


def _headline(m: Mapping[str, Any]) -> dict[str, float]:
    keys = ("ndcg@10", "recall@10", "recall@100", "cold_recall@100")
    return {k: float(m.get(k, float("nan"))) for k in keys}


def run_eval(
    catalog: Catalog,
    *,
    item_vectors: ItemVectors,
    reranker: Any | None = None,
    retriever: Any | None = None,
    sequential: SequentialConfig | None = None,
    quick: bool = False,
    seed: int = 0,
    seeds: int = 1,
    rerank_als: bool = True,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Evaluates every method; returns the report (see the README for its layout).

    ``seeds`` > 1 repeats the trained tower with seeds ``seed + 1, ...`` and reports each
    run's headline metrics beside the first (and of the pipeline, reranked per seed).
    ``rerank_als`` also reranks ALS's candidates (what the reranker adds on its own).
    """
    split: Split = leave_one_out(catalog.interactions, seed=seed)
    max_users = 100 if quick else None
    val = make_fold("validation", catalog, split.train, split.validation, max_users, seed)
    test = make_fold(
        "test",
        catalog,
        Interactions.concat([split.train, split.validation]),
        split.test,
        max_users,
        seed,
    )
    counts = np.asarray(test.matrix.sum(axis=0)).ravel()
    cold = counts[test.relevant] < COLD_ITEM_THRESHOLD
    methods: dict[str, dict[str, Any]] = {}
    rankings: dict[str, Ranked] = {}

    def record(name: str, ranked: Ranked, params: Mapping[str, Any], seconds: float) -> None:
        rankings[name] = ranked
        methods[name] = {
            **metrics_of(ranked, test, cold),
            "train_seconds": seconds,
            "params": dict(params),
        }
        lo, hi = bootstrap_ci(per_user_ndcg10(ranked, test), seed=seed)
        methods[name]["ndcg@10_ci95"] = [lo, hi]
        progress(f"{name}: NDCG@10 {methods[name]['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}]")

    started = time.perf_counter()
    pop = PopularityScorer().fit(test.matrix)
    record("popularity", rank_with(pop, test), {}, time.perf_counter() - started)

    grids: dict[str, Any] = {}
    als_grid = [
        ImplicitScorer("als", factors=f, regularization=r, alpha=a, seed=seed)
        for f in ((32, 64) if quick else (32, 64, 128))
        for r in (0.01, 0.1)
        for a in ((1.0,) if quick else (1.0, 10.0))
    ]
    bpr_grid = [
        ImplicitScorer("bpr", factors=f, learning_rate=lr, iterations=100, seed=seed)
        for f in ((32,) if quick else (32, 64, 128))
        for lr in (0.01, 0.05)
    ]
    knn_grid = [ItemKNNScorer(neighbours=n) for n in ((50,) if quick else (20, 50, 100, 200))]
    for name, grid in (("als", als_grid), ("bpr", bpr_grid), ("itemknn", knn_grid)):
        best, results = tune(grid, val)
        grids[name] = results
        started = time.perf_counter()
        best.fit(test.matrix)  # refit on train + validation
        record(name, rank_with(best, test), best.params, time.perf_counter() - started)

    index = FlatIndex(item_vectors.dim).build(item_vectors.ids, item_vectors.matrix)
    hist_val = group_histories(split.train, seed=seed)
    hist_test = group_histories(Interactions.concat([split.train, split.validation]), seed=seed)
    best_n, best_v = 5, -1.0
    for n_recent in (1, 5, 10, 20):
        value = metrics_of(
            rank_two_tower(MeanItemsTower(item_vectors, n_recent=n_recent), index, val, hist_val),
            val,
        )["ndcg@10"]
        grids.setdefault("two_tower_zero_shot", []).append(
            {"params": {"n_recent": n_recent}, "ndcg@10": value}
        )
        if value > best_v:
            best_n, best_v = n_recent, value
    tower = MeanItemsTower(item_vectors, n_recent=best_n)
    record(
        "two_tower_zero_shot",
        rank_two_tower(tower, index, test, hist_test),
        {"n_recent": best_n, "model": "all-MiniLM-L6-v2 (bundled)"},
        0.0,
    )
    methods["two_tower_zero_shot"]["candidate_recall@100"] = methods["two_tower_zero_shot"][
        "recall@100"
    ]

    first_stage: tuple[Any, Any] = (
        MeanItemsTower(item_vectors, n_recent=5),
        index,
    )  # the reranker's retrieval_score comes from the tower it trained with
    targets_val = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )

    def trained_tower(
        cfg: SequentialConfig, chosen: SequentialConfig | None = None
    ) -> tuple[Ranked, Any, Any, dict[str, Any]]:
        """Train on train (early stopping and blend weight on validation), refit on train +
        validation for as many epochs, rank test: the protocol of every tuned method. With
        ``chosen`` (the refit settings another seed validated) only the refit runs."""
        validation: dict[str, Any] = {}
        if chosen is None:
            val_tower, card = train_sequential(
                item_vectors, hist_val, targets_val, cfg, progress=False
            )
            refit_cfg = replace(  # the epochs, blends and ALS fit chosen on validation
                val_tower.cfg,
                seed=cfg.seed,
                epochs=max(1, int(card["best_epoch"])),
                blend_grid=(),
                collab_grid=(),
            )
            validation = {
                "validation_recall@10": card["best_recall@10"],
                "validation_blend": card["blend"],
                "validation_blend_zero_shot": card["blend_zero_shot"],
                "validation_collab_als": card["collab_als"],
            }
        else:
            refit_cfg = replace(chosen, seed=cfg.seed)
        tower, _ = train_sequential(item_vectors, hist_test, {}, refit_cfg, progress=False)
        assert tower.item_vectors is not None
        tower_index = FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)
        ranked = rank_two_tower(
            tower, tower_index, test, hist_test, item_vectors=tower.item_vectors
        )
        return ranked, tower, tower_index, {**asdict(refit_cfg), **validation}

    other_seeds: list[tuple[int, Ranked, Any, Any]] = []  # (seed, ranking, tower, index)
    pipeline_seeds: list[tuple[int, Ranked]] = []
    if sequential is not None:
        started = time.perf_counter()
        ranked, seq_tower, seq_index, params = trained_tower(sequential)
        record("two_tower_trained", ranked, params, time.perf_counter() - started)
        methods["two_tower_trained"]["candidate_recall@100"] = methods["two_tower_trained"][
            "recall@100"
        ]
        if reranker is not None and reranker.config.retrieval == seq_tower.name:
            first_stage = (seq_tower, seq_index)
        runs = [{"seed": sequential.seed, **_headline(methods["two_tower_trained"])}]
        chosen = seq_tower.cfg  # the refit settings (blend grids already empty)
        for extra in range(1, seeds):
            # Other seeds refit with the settings validated above: how much of the figure is
            # the seed (initialisation and batch order), not the choice of epochs and blend.
            seed_cfg = replace(sequential, seed=sequential.seed + extra)
            progress(f"two_tower_trained: seed {seed_cfg.seed}")
            ranked_s, tower_s, index_s, _ = trained_tower(seed_cfg, chosen)
            runs.append({"seed": seed_cfg.seed, **_headline(metrics_of(ranked_s, test, cold))})
            other_seeds.append((seed_cfg.seed, ranked_s, tower_s, index_s))
        if seeds > 1:
            methods["two_tower_trained"]["seeds"] = _seed_summary(runs)

    if retriever is not None:
        # The fine-tuned tower, used as it was trained: user history text -> item text.
        started = time.perf_counter()
        item_template = ItemTextTemplate()
        ft_ids = [i for i in catalog.items if item_template.render(catalog.items[i])]
        ft_vectors = ItemVectors(
            ft_ids, retriever.encode([item_template.render(catalog.items[i]) for i in ft_ids])
        )
        ft_index = FlatIndex(ft_vectors.dim).build(ft_vectors.ids, ft_vectors.matrix)
        card_path = Path(retriever.model_name) / "duorank-card.json"
        trained_template = (
            UserTextTemplate.from_dict(json.loads(card_path.read_text())["user_template"])
            if card_path.is_file()
            else None
        )  # the user text the tower was trained on
        ft_tower = HistoryTextTower(retriever, catalog.items, trained_template)
        profiles = {u: dict(catalog.users[u].attributes) for u in test.users if u in catalog.users}
        record(
            "two_tower_finetuned",
            rank_two_tower(
                ft_tower, ft_index, test, hist_test, item_vectors=ft_vectors, profiles=profiles
            ),
            {"model": retriever.model_name, "tower": "history_text"},
            time.perf_counter() - started,
        )
        methods["two_tower_finetuned"]["candidate_recall@100"] = methods["two_tower_finetuned"][
            "recall@100"
        ]

    if reranker is not None:
        template = UserTextTemplate.from_dict(reranker.config.user_template)
        item_counts = np.asarray(test.matrix.sum(axis=0)).ravel()
        if reranker.config.retrieval != first_stage[0].name:
            raise ValueError(
                f"the reranker learned from a {reranker.config.retrieval} first stage; "
                "evaluate it with that tower (--trained-tower)"
            )
        test_counts = {i: int(c) for i, c in zip(test.item_ids, item_counts, strict=True) if c}
        test_ratings = RatingStats.of(Interactions.concat([split.train, split.validation]))

        def features_of(tower: Any, index: Any) -> FeatureMaker:
            """The features the reranker trained and serves with, from this first stage."""
            return FeatureMaker(tower, index, test_counts, reranker.config.features, test_ratings)

        pipeline_features = features_of(*first_stage)
        # The default pipeline's first stage (the trained tower, else the zero-shot one) and
        # ALS (what the reranker adds on its own); 610 x 50 pairs each is most of the run.
        first = "two_tower_trained" if "two_tower_trained" in rankings else "two_tower_zero_shot"
        bases = [first, "als"] if rerank_als else [first]
        for base, name in ((b, f"{b}+reranker") for b in bases if b in rankings):
            started = time.perf_counter()
            ranked = rerank_top(
                rankings[base], test, catalog, reranker, pipeline_features, hist_test, template
            )
            record(
                name,
                ranked,
                {"base": base, "depth": RERANK_DEPTH, "backend": reranker.backend},
                time.perf_counter() - started,
            )
            methods[name]["candidate_recall@100"] = methods[base]["recall@100"]
            methods[name]["calibration"] = calibration_curve(ranked.target_score, test.like)
            methods[name]["ece"] = expected_calibration_error(ranked.target_score, test.like)
        if first == "two_tower_trained" and other_seeds and first_stage[0] is seq_tower:
            # The headline over seeds: each seed's tower, its candidates and its features.
            pipeline_seeds.append(
                (int(methods[first]["params"]["seed"]), rankings[f"{first}+reranker"])
            )
            for seed_s, ranked_s, tower_s, index_s in other_seeds:
                progress(f"{first}+reranker: seed {seed_s}")
                features_s = features_of(tower_s, index_s)
                pipeline_seeds.append(
                    (
                        seed_s,
                        rerank_top(
                            ranked_s, test, catalog, reranker, features_s, hist_test, template
                        ),
                    )
                )
    if "als" in rankings:  # the collaborative reference every method is compared with
        reference = per_user_ndcg10(rankings["als"], test)
        for name, ranked in rankings.items():
            if name != "als":
                diff = per_user_ndcg10(ranked, test) - reference
                lo, hi = bootstrap_ci(diff, seed=seed)
                methods[name]["ndcg@10_minus_als_ci95"] = [lo, hi]
                methods[name]["ndcg@10_vs_als"] = (
                    methods[name]["ndcg@10"] / methods["als"]["ndcg@10"]
                    if methods["als"]["ndcg@10"]
                    else None
                )
        if other_seeds and "seeds" in methods.get("two_tower_trained", {}):
            tower_rankings = [rankings["two_tower_trained"], *(r for _, r, _, _ in other_seeds)]
            methods["two_tower_trained"]["seeds"].update(
                _seed_mean_vs(tower_rankings, rankings["als"], test, seed)
            )
    if pipeline_seeds:
        runs = []
        for seed_s, ranked_s in pipeline_seeds:
            run: dict[str, Any] = {"seed": seed_s, **_headline(metrics_of(ranked_s, test, cold))}
            if "als" in rankings:
                diff = per_user_ndcg10(ranked_s, test) - per_user_ndcg10(rankings["als"], test)
                run["ndcg@10_vs_als"] = run["ndcg@10"] / methods["als"]["ndcg@10"]
                run["ndcg@10_minus_als_ci95"] = list(bootstrap_ci(diff, seed=seed))
            runs.append(run)
        summary = _seed_summary(runs)
        if "als" in rankings:
            summary.update(
                _seed_mean_vs([r for _, r in pipeline_seeds], rankings["als"], test, seed)
            )
        methods["two_tower_trained+reranker"]["seeds"] = summary
    return {
        "dataset": catalog.source,
        "protocol": {
            "split": "per-user temporal leave-one-out; ties in time broken by a seeded random "
            "order",
            "seed": seed,
            "ks": list(KS),
            "full_ranking": True,
            "exclude": "train items (validation) / train+validation items (test)",
            "tuning": "validation NDCG@10; refit on train+validation for test",
            "users": {"validation": len(val.users), "test": len(test.users)},
            "like_threshold": LIKE_THRESHOLD,
            "cold_item_threshold": COLD_ITEM_THRESHOLD,
            "quick": quick,
        },
        "methods": methods,
        "grids": grids,
    }


def write_report(report: dict[str, Any], output: Path) -> list[Path]:
    """Writes report.json, a Markdown table and PNG plots beside it."""
    from catalog.fsutil import write_json

    write_json(output, report)
    written = [output]
    rows = [
        "| method | NDCG@10 (95% CI) | Recall@10 | MRR@10 | Recall@100 | AUC | cold Recall@100 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lo, hi = m["ndcg@10_ci95"]
        rows.append(
            f"| {name} | {m['ndcg@10']:.4f} ({lo:.4f}-{hi:.4f}) | {m['recall@10']:.4f} "
            f"| {m['mrr@10']:.4f} | {m['recall@100']:.4f} | "
            f"{m.get('auc', float('nan')):.3f} | {m.get('cold_recall@100', float('nan')):.3f} |"
        )
    seeded = {n: m["seeds"] for n, m in report["methods"].items() if "seeds" in m}
    if seeded:  # the headline over seeds, with the interval of the seeds' mean
        rows += [
            "",
            "| method | seeds | NDCG@10 mean +- sd | mean / ALS | paired 95% CI, mean - ALS |",
            "|---|---|---|---|---|",
        ]
        for name, sm in seeded.items():
            lo, hi = sm.get("ndcg@10_mean_minus_reference_ci95", (float("nan"),) * 2)
            ratio = sm.get("ndcg@10_mean_vs_reference") or float("nan")
            rows.append(
                f"| {name} | {len(sm['runs'])} | {sm['ndcg@10_mean']:.4f} +- "
                f"{sm['ndcg@10_std']:.4f} | {ratio:.2f}x | {lo:+.4f} to {hi:+.4f} |"
            )
    table = output.with_suffix(".md")
    table.write_text("\n".join(rows) + "\n")
    written.append(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in report["methods"].items():
        ax.plot(KS, [m[f"recall@{k}"] for k in KS], marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (test)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = output.with_name(output.stem + "-recall.png")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    written.append(png)
    curves = {n: m["calibration"] for n, m in report["methods"].items() if "calibration" in m}
    if curves:
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        for name, curve in curves.items():
            ax.plot(
                [c["predicted"] for c in curve],
                [c["observed"] for c in curve],
                marker="o",
                label=name,
            )
        ax.set_xlabel("predicted P(like) of the held-out interaction")
        ax.set_ylabel("observed like rate (rating >= 4)")
        ax.legend(fontsize=7)
        png = output.with_name(output.stem + "-calibration.png")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    return written


def calibration_curve(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], bins: int = 10
) -> list[dict[str, float]]:
    """Equal-width bins of predicted P(like): mean prediction, observed like rate, count."""
    idx = np.minimum((probabilities * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append(
                {
                    "predicted": float(probabilities[mask].mean()),
                    "observed": float(labels[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return out


def dumps(report: Mapping[str, Any]) -> str:
    """Compact JSON (for logs)."""
    return json.dumps(report, default=str)
