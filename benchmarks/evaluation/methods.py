"""Each evaluated method as one step: it ranks the test fold and records the result.

Every step takes the shared :class:`Evaluation` (folds, histories, the report so far) and adds
its methods with :meth:`Evaluation.record`; the order of the steps is the report's order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from benchmarks.baselines import ItemKNNScorer, PopularityScorer
from benchmarks.baselines.grids import BASELINES, baseline_grids
from benchmarks.evaluation.protocol import (
    RERANK_DEPTH,
    Fold,
    Ranked,
    bootstrap_ci,
    calibration_curve,
    metrics_of,
    per_user_ndcg10,
    rank_two_tower,
    rank_with,
    rerank_top,
    tune_staged,
)
from benchmarks.evaluation.seeds import headline, seed_mean_vs, seed_summary
from catalog.model import Catalog, Interactions
from catalog.splits import Split
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate
from metrics import expected_calibration_error
from rerank.cross_encoder.pairs import FeatureMaker, RatingStats
from retrieval.index import FlatIndex, VectorIndex
from retrieval.sequential import SequentialConfig, SequentialTower
from retrieval.sequential_train import train_sequential
from retrieval.towers import HistoryTextTower, MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker
    from retrieval.encoder import Encoder


@dataclass
class Evaluation:
    """What every step shares, and the report it fills."""

    catalog: Catalog
    split: Split
    val: Fold
    test: Fold
    cold: npt.NDArray[np.bool_]
    hist_val: Mapping[str, list[HistoryEvent]]
    hist_test: Mapping[str, list[HistoryEvent]]
    item_vectors: ItemVectors
    index: VectorIndex
    seed: int
    quick: bool
    progress: Callable[[str], None]
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    rankings: dict[str, Ranked] = field(default_factory=dict)
    extra_rankings: dict[str, list[Ranked]] = field(default_factory=dict)
    """The other seeds' rankings of a method run with several (the first is in rankings)."""
    grids: dict[str, Any] = field(default_factory=dict)

    def seed_rankings(self, name: str) -> list[Ranked]:
        """Every seed's ranking of ``name``, the reported one first."""
        return [self.rankings[name], *self.extra_rankings.get(name, [])]

    def best_baseline(self) -> str | None:
        """The baseline with the highest test NDCG@10 (its seeds' mean where it has
        several): every claim is made against the strongest one of the run."""
        scored = {
            n: self.methods[n].get("seeds", {}).get("ndcg@10_mean", self.methods[n]["ndcg@10"])
            for n in BASELINES
            if n in self.methods
        }
        return max(scored, key=lambda n: scored[n]) if scored else None

    def references(self) -> list[tuple[str, str]]:
        """(label, method) of what every method is compared with: the best baseline, and ALS
        (the reference of earlier reports) under its own name."""
        best = self.best_baseline()
        refs = [("best_baseline", best)] if best else []
        return refs + ([("als", "als")] if "als" in self.rankings else [])

    def record(
        self, name: str, ranked: Ranked, params: Mapping[str, Any], seconds: float
    ) -> dict[str, Any]:
        """Adds a method's test metrics, its interval and parameters to the report."""
        self.rankings[name] = ranked
        self.methods[name] = {
            **metrics_of(ranked, self.test, self.cold),
            "train_seconds": seconds,
            "params": dict(params),
        }
        lo, hi = bootstrap_ci(per_user_ndcg10(ranked, self.test), seed=self.seed)
        self.methods[name]["ndcg@10_ci95"] = [lo, hi]
        self.progress(f"{name}: NDCG@10 {self.methods[name]['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}]")
        return self.methods[name]


@dataclass
class TowerRuns:
    """The trained tower of the first seed (its ranking is in the report) and the other
    seeds' (seed, ranking, tower, index)."""

    tower: SequentialTower
    index: VectorIndex
    others: list[tuple[int, Ranked, SequentialTower, VectorIndex]]
    val_tower: SequentialTower | None = None
    """The first seed's tower trained on train only (what validation-time figures use)."""


def popularity(ev: Evaluation) -> None:
    """Most interacted items first."""
    started = time.perf_counter()
    pop = PopularityScorer().fit(ev.test.data)
    ev.record("popularity", rank_with(pop, ev.test), {}, time.perf_counter() - started)


def tuned_baselines(ev: Evaluation, seeds: int = 1) -> None:
    """ALS, BPR, item-kNN, EASE and SASRec, each tuned on validation (its grid in
    :mod:`benchmarks.baselines.grids`) and refitted on train + validation. SASRec trains
    stochastically, so it refits with every seed as the trained tower does."""
    for name, grid in baseline_grids(ev.quick, ev.seed).items():
        ev.progress(f"{name}: tuning on validation")
        best, results = tune_staged(
            grid.make, grid.start, grid.stages, ev.val, progress=ev.progress, name=name
        )
        ev.grids[name] = results
        started = time.perf_counter()
        final = best.refitted()
        final.fit(ev.test.data)  # refit on train + validation
        m = ev.record(name, rank_with(final, ev.test), final.params, time.perf_counter() - started)
        ItemKNNScorer.release_cache()
        m["tune_seconds"] = float(sum(r["seconds"] for r in results))
        m["grid_size"] = len(results)
        if grid.seeded and seeds > 1:
            runs = [{"seed": ev.seed, **headline(m)}]
            for extra in range(1, seeds):
                params = {**final.params, "seed": ev.seed + extra}
                ev.progress(f"{name}: seed {params['seed']}")
                ranked_s = rank_with(grid.make(**params).fit(ev.test.data), ev.test)
                ev.extra_rankings.setdefault(name, []).append(ranked_s)
                runs.append(
                    {"seed": params["seed"], **headline(metrics_of(ranked_s, ev.test, ev.cold))}
                )
            m["seeds"] = seed_summary(runs)


def zero_shot(ev: Evaluation) -> None:
    """The bundled text model's vectors, users pooled from their recent likes (n on
    validation)."""
    best_n, best_v = 5, -1.0
    for n_recent in (1, 5, 10, 20):
        tower = MeanItemsTower(ev.item_vectors, n_recent=n_recent)
        value = metrics_of(rank_two_tower(tower, ev.index, ev.val, ev.hist_val), ev.val)["ndcg@10"]
        ev.grids.setdefault("two_tower_zero_shot", []).append(
            {"params": {"n_recent": n_recent}, "ndcg@10": value}
        )
        if value > best_v:
            best_n, best_v = n_recent, value
    tower = MeanItemsTower(ev.item_vectors, n_recent=best_n)
    m = ev.record(
        "two_tower_zero_shot",
        rank_two_tower(tower, ev.index, ev.test, ev.hist_test),
        {"n_recent": best_n, "model": "all-MiniLM-L6-v2 (bundled)"},
        0.0,
    )
    m["candidate_recall@100"] = m["recall@100"]


def _train_tower(
    ev: Evaluation, cfg: SequentialConfig, chosen: SequentialConfig | None = None
) -> tuple[Ranked, Any, Any, dict[str, Any], Any]:
    """Train on train (early stopping and blend weight on validation), refit on train +
    validation for as many epochs, rank test: the protocol of every tuned method. With
    ``chosen`` (the refit settings another seed validated) only the refit runs. Returns the
    ranking, the refitted tower, its index, its settings and the train-only tower (None with
    ``chosen``)."""
    validation: dict[str, Any] = {}
    val_tower = None
    if chosen is None:
        targets_val = dict(
            zip(
                ev.split.validation.user_ids.tolist(),
                ev.split.validation.item_ids.tolist(),
                strict=True,
            )
        )
        val_tower, card = train_sequential(
            ev.item_vectors, ev.hist_val, targets_val, cfg, progress=False
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
    tower, _ = train_sequential(ev.item_vectors, ev.hist_test, {}, refit_cfg, progress=False)
    assert tower.item_vectors is not None
    tower_index = FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)
    ranked = rank_two_tower(
        tower, tower_index, ev.test, ev.hist_test, item_vectors=tower.item_vectors
    )
    return ranked, tower, tower_index, {**asdict(refit_cfg), **validation}, val_tower


def trained_tower(ev: Evaluation, sequential: SequentialConfig, seeds: int) -> TowerRuns:
    """The sequential tower over cached vectors, with ``seeds`` seeds: the first chooses the
    settings on validation, every other refits with them (see :data:`SEEDS_PROTOCOL`)."""
    started = time.perf_counter()
    ranked, tower, index, params, val_tower = _train_tower(ev, sequential)
    m = ev.record("two_tower_trained", ranked, params, time.perf_counter() - started)
    m["candidate_recall@100"] = m["recall@100"]
    runs = [{"seed": sequential.seed, **headline(m)}]
    chosen = tower.cfg  # the refit settings (blend grids already empty)
    others: list[tuple[int, Ranked, SequentialTower, VectorIndex]] = []
    for extra in range(1, seeds):
        # Other seeds refit with the settings validated above: how much of the figure is
        # the seed (initialisation and batch order), not the choice of epochs and blend.
        seed_cfg = replace(sequential, seed=sequential.seed + extra)
        ev.progress(f"two_tower_trained: seed {seed_cfg.seed}")
        ranked_s, tower_s, index_s, _, _ = _train_tower(ev, seed_cfg, chosen)
        runs.append({"seed": seed_cfg.seed, **headline(metrics_of(ranked_s, ev.test, ev.cold))})
        others.append((seed_cfg.seed, ranked_s, tower_s, index_s))
    if seeds > 1:
        m["seeds"] = seed_summary(runs)
    return TowerRuns(tower, index, others, val_tower)


def finetuned(ev: Evaluation, retriever: Encoder) -> None:
    """The fine-tuned text model, used as it was trained: user history text -> item text."""
    catalog = ev.catalog
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
    profiles = {u: dict(catalog.users[u].attributes) for u in ev.test.users if u in catalog.users}
    m = ev.record(
        "two_tower_finetuned",
        rank_two_tower(
            ft_tower, ft_index, ev.test, ev.hist_test, item_vectors=ft_vectors, profiles=profiles
        ),
        {"model": retriever.model_name, "tower": "history_text"},
        time.perf_counter() - started,
    )
    m["candidate_recall@100"] = m["recall@100"]


def reranked(
    ev: Evaluation,
    reranker: Reranker,
    first_stage: tuple[UserTower, VectorIndex],
    towers: TowerRuns | None,
    rerank_als: bool,
) -> list[tuple[int, Ranked]]:
    """The reranker over the default first stage's candidates (and ALS's: what it adds on its
    own); with several seeds, over each seed's tower too. Returns the pipeline's (seed,
    ranking) per seed when there are several, else nothing."""
    catalog, test = ev.catalog, ev.test
    template = UserTextTemplate.from_dict(reranker.config.user_template)
    item_counts = np.asarray(test.matrix.sum(axis=0)).ravel()
    if reranker.config.retrieval != first_stage[0].name:
        raise ValueError(
            f"the reranker learned from a {reranker.config.retrieval} first stage; "
            "evaluate it with that tower (--trained-tower)"
        )
    test_counts = {i: int(c) for i, c in zip(test.item_ids, item_counts, strict=True) if c}
    test_ratings = RatingStats.of(Interactions.concat([ev.split.train, ev.split.validation]))

    def features_of(tower: UserTower, index: VectorIndex) -> FeatureMaker:
        """The features the reranker trained and serves with, from this first stage."""
        return FeatureMaker(tower, index, test_counts, reranker.config.features, test_ratings)

    pipeline_features = features_of(*first_stage)
    # The default pipeline's first stage (the trained tower, else the zero-shot one) and
    # ALS (what the reranker adds on its own); 610 x 50 pairs each is most of the run.
    first = "two_tower_trained" if "two_tower_trained" in ev.rankings else "two_tower_zero_shot"
    bases = [first, "als"] if rerank_als else [first]
    for base, name in ((b, f"{b}+reranker") for b in bases if b in ev.rankings):
        started = time.perf_counter()
        ranked = rerank_top(
            ev.rankings[base], test, catalog, reranker, pipeline_features, ev.hist_test, template
        )
        m = ev.record(
            name,
            ranked,
            {"base": base, "depth": RERANK_DEPTH, "backend": reranker.backend},
            time.perf_counter() - started,
        )
        m["candidate_recall@100"] = ev.methods[base]["recall@100"]
        if ranked.probabilities:  # the binary head's P(like); a rating head's is not one
            m["calibration"] = calibration_curve(ranked.target_score, test.like)
            m["ece"] = expected_calibration_error(ranked.target_score, test.like)
    pipeline_seeds: list[tuple[int, Ranked]] = []
    if first == "two_tower_trained" and towers and towers.others and first_stage[0] is towers.tower:
        # The headline over seeds: each seed's tower, its candidates and its features.
        pipeline_seeds.append(
            (int(ev.methods[first]["params"]["seed"]), ev.rankings[f"{first}+reranker"])
        )
        for seed_s, ranked_s, tower_s, index_s in towers.others:
            ev.progress(f"{first}+reranker: seed {seed_s}")
            features_s = features_of(tower_s, index_s)
            pipeline_seeds.append(
                (
                    seed_s,
                    rerank_top(
                        ranked_s, test, catalog, reranker, features_s, ev.hist_test, template
                    ),
                )
            )
    return pipeline_seeds


def against_references(ev: Evaluation, towers: TowerRuns | None) -> None:
    """Every method against the best baseline of the run and against ALS (the reference of
    earlier reports): the ratio of NDCG@10 and the paired bootstrap interval of the
    difference; for methods with seeds, of the seeds' mean."""
    for label, ref in ev.references():
        ref_m = ev.methods[ref]
        ref_value = ref_m.get("seeds", {}).get("ndcg@10_mean", ref_m["ndcg@10"])
        reference = np.mean([per_user_ndcg10(r, ev.test) for r in ev.seed_rankings(ref)], axis=0)
        for name, ranked in ev.rankings.items():
            if name == ref:
                continue
            m = ev.methods[name]
            diff = per_user_ndcg10(ranked, ev.test) - reference
            m[f"ndcg@10_minus_{label}_ci95"] = list(bootstrap_ci(diff, seed=ev.seed))
            m[f"ndcg@10_vs_{label}"] = m["ndcg@10"] / ref_value if ref_value else None
    for name in ev.extra_rankings:  # the seeded baselines' means
        ev.methods[name]["seeds"].update(seeds_against(ev, ev.seed_rankings(name), name))
    if towers and towers.others and "seeds" in ev.methods.get("two_tower_trained", {}):
        tower_rankings = [ev.rankings["two_tower_trained"], *(r for _, r, _, _ in towers.others)]
        ev.methods["two_tower_trained"]["seeds"].update(seeds_against(ev, tower_rankings))


def seeds_against(
    ev: Evaluation, rankings: Sequence[Ranked], name: str | None = None
) -> dict[str, Any]:
    """A seeded method's mean against the best baseline (and ALS), each user's NDCG@10
    averaged over the method's seeds and over the reference's (``name``: the method itself,
    which is not compared with itself)."""
    out: dict[str, Any] = {}
    for label, ref in ev.references():
        if ref == name:
            continue
        out[f"vs_{label}"] = seed_mean_vs(rankings, ev.seed_rankings(ref), ev.test, ev.seed, ref)
    return out


def pipeline_over_seeds(ev: Evaluation, pipeline_seeds: list[tuple[int, Ranked]]) -> None:
    """The pipeline's figures per seed, their mean and spread, and against the best baseline
    and ALS."""
    runs = []
    for seed_s, ranked_s in pipeline_seeds:
        run: dict[str, Any] = {"seed": seed_s, **headline(metrics_of(ranked_s, ev.test, ev.cold))}
        for label, ref in ev.references():
            reference = np.mean(
                [per_user_ndcg10(r, ev.test) for r in ev.seed_rankings(ref)], axis=0
            )
            diff = per_user_ndcg10(ranked_s, ev.test) - reference
            run[f"ndcg@10_vs_{label}"] = run["ndcg@10"] / float(reference.mean())
            run[f"ndcg@10_minus_{label}_ci95"] = list(bootstrap_ci(diff, seed=ev.seed))
        runs.append(run)
    summary = seed_summary(runs)
    summary.update(seeds_against(ev, [r for _, r in pipeline_seeds]))
    ev.methods["two_tower_trained+reranker"]["seeds"] = summary
