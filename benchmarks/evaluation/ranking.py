"""The ranking stage in the evaluation: stacked training, the validation ablation table, test.

1. **Stacked training lists** (:mod:`rerank.ranker.stacking`): per user, the last
   :data:`STACK_PER_USER` training events are targets; a tower (the trained tower's validated
   settings), co-visitation, ALS and recent popularity are fitted on the events before each
   user's first target and build the lists (every source's candidates, merged).
2. **Validation lists** come from the full first stage fitted on train, as served; the ranker's
   NDCG@10 on them is compared with the first stage's order of the same candidates.
3. **Ablations** on validation: the ranker without each feature group, without each source
   (its candidates and columns), learning from scratch instead of the correction, and the first
   stage alone. Each is refitted on the same stacked lists.
4. **The served choice**: the ranker serves when its validation NDCG@10 beats the first stage's
   by more than one standard error of the paired difference (else the first stage's order: the
   one-standard-error rule keeps the simpler model).
5. **Test**: the ranker, unchanged, over the candidates of the first stage refitted on train +
   validation (each seed's tower in turn).
6. **Text**, when a cross-encoder is given: its text logit alone, and added to the ranker's
   score, on validation (:mod:`benchmarks.evaluation.text`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from benchmarks.evaluation.protocol import KS, Fold, Ranked, calibration_curve, metrics_of
from benchmarks.evaluation.seeds import headline, seed_mean_vs, seed_summary
from benchmarks.evaluation.text import text_side_by_side
from catalog.text import HistoryEvent
from metrics import expected_calibration_error
from rerank.ranker.candidates import CandidateStage, Lists
from rerank.ranker.features import FEATURE_GROUPS, Request, source_features
from rerank.ranker.model import GBDTRanker, RankerConfig
from rerank.ranker.stacking import request_time
from rerank.ranker.train import (
    RankingStageArgs,
    TrainedStage,
    Validation,
    list_ndcg10,
    train_ranking_stage,
)
from retrieval.index import FlatIndex

if TYPE_CHECKING:
    from benchmarks.evaluation.methods import Evaluation, TowerRuns
    from catalog.model import Interactions
    from rerank.cross_encoder import Reranker


def ranked_from(scores: npt.NDArray[np.floating], lists: Lists, fold: Fold) -> Ranked:
    """The fold's top-``max(KS)`` item columns per user from scored lists (one per user)."""
    depth = max(KS)
    off = lists.offsets
    top = np.full((len(fold.users), depth), -1, dtype=np.int64)
    target = np.zeros(len(fold.users))
    for n in range(len(fold.users)):
        s = np.asarray(scores[off[n] : off[n + 1]], dtype=np.float64)
        cols = lists.cols[off[n] : off[n + 1]]
        order = np.argsort(-s, kind="stable")[:depth]
        top[n, : len(order)] = cols[order]
        hit = np.flatnonzero(cols == fold.relevant[n])
        target[n] = float(s[hit[0]]) if len(hit) else float(s.min() - 1.0) if len(s) else 0.0
    return Ranked(top, target)


def _requests(
    fold: Fold,
    histories: Mapping[str, Sequence[HistoryEvent]],
    split: Interactions,
    at: int | None = None,
) -> list[Request]:
    """Each fold user's request at their held-out event (online), or all at ``at`` (batch)."""
    when = dict(zip(split.user_ids.tolist(), split.timestamps.tolist(), strict=True))
    return [
        Request(
            u,
            histories.get(u, []),
            at if at is not None else request_time(HistoryEvent("", int(when[u]))),
        )
        for u in fold.users
    ]


def log_end(histories: Mapping[str, Sequence[HistoryEvent]]) -> int:
    """One second after the newest event of ``histories``: when a nightly batch serves."""
    return max((e.timestamp for h in histories.values() for e in h), default=0) + 1


def quick_stage_args() -> RankingStageArgs:
    """CI size: two targets per user from short histories, at most 20 trees."""
    return RankingStageArgs(
        per_user=2,
        min_history=2,
        ranker=RankerConfig(max_rounds=20, min_data_in_leaf=5, early_stopping=5),
    )


def _trained(ev: Evaluation, towers: TowerRuns, args: RankingStageArgs) -> TrainedStage:
    """Steps 1-2 (see the module docstring): the stacked training and the validation lists,
    as ``train ranker`` builds them, on the validation fold's tower."""
    val_tower = towers.val_tower
    assert val_tower is not None and val_tower.item_vectors is not None  # bound at training
    vectors = val_tower.item_vectors
    val_index = FlatIndex(val_tower.dim).build(vectors.ids, vectors.matrix)
    fold = ev.val
    validation = Validation(
        _requests(fold, ev.hist_val, ev.split.validation),
        [{fold.item_ids[c] for c in seen} for seen in fold.seen],
        [fold.item_ids[c] for c in fold.relevant],
        fold.like.tolist(),
    )
    return train_ranking_stage(
        ev.catalog.items,
        ev.hist_val,
        validation,
        val_tower,
        val_index,
        ev.item_vectors,
        replace(towers.tower.cfg, seed=ev.seed),  # the refit's settings: validated epochs
        args,
        progress=ev.progress,
    )


@dataclass(frozen=True)
class _Variant:
    """One ablation: its training lists (and short copies), validation lists and settings."""

    train: Lists
    val: Lists
    config: RankerConfig
    short: Lists | None


def _variants(trained: TrainedStage, cfg: RankerConfig) -> dict[str, _Variant]:
    """The ranker and its ablations: from scratch, without cold dropout, without short copies,
    without each feature group, without the sources' own scores, without each source but the
    first. A variant changes the short copies as it changes the training lists."""
    short = trained.short_lists
    sources = [s.name for s in trained.stage_val.sources]

    def variant(edit: Callable[[Lists], Lists], config: RankerConfig = cfg) -> _Variant:
        return _Variant(
            edit(trained.train_lists),
            edit(trained.val_lists),
            config,
            edit(short) if short is not None else None,
        )

    def same(lists: Lists) -> Lists:
        return lists

    variants = {
        "ranker": variant(same),
        "from scratch (no first-stage correction)": variant(same, replace(cfg, residual=False)),
    }
    if cfg.cold_dropout:  # what the new arrivals' gain costs the warm lists
        variants["without cold dropout"] = variant(same, replace(cfg, cold_dropout=0.0))
    if short is not None:  # what the new users' gain costs the warm lists
        variants["without short copies"] = replace(variant(same), short=None)
    for group, names in FEATURE_GROUPS.items():
        if group != "first_stage":
            variants[f"without {group}"] = variant(partial(Lists.without_columns, names=names))
    variants["without sources' scores and ranks"] = variant(
        partial(Lists.without_columns, names=source_features(sources))
    )
    for source in sources[1:]:
        variants[f"without source {source}"] = variant(
            partial(_without_source, source=source, sources=sources)
        )
    return variants


def _ablation(ev: Any, trained: Any, cfg: RankerConfig) -> dict[str, Any]:
    """Each variant's validation NDCG@10 against the first stage's (paired, with its SE)."""
    val_lists = trained.val_lists
    first = list_ndcg10(val_lists.column("retrieval_score"), val_lists)
    out: dict[str, Any] = {}
    for name, v in _variants(trained, cfg).items():
        t0 = time.perf_counter()
        model = (
            trained.ranker if name == "ranker" else GBDTRanker.fit(v.train, v.config, extra=v.short)
        )
        per_list = list_ndcg10(model.score(v.val.x), v.val)
        diff = per_list - first
        out[name] = {
            "ndcg@10": float(per_list.mean()),
            "vs_first_stage": float(per_list.mean() / first.mean()) if first.mean() else None,
            "minus_first_stage": float(diff.mean()),
            "minus_first_stage_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "rounds": model.record["rounds"],
            "seconds": time.perf_counter() - t0,
        }
        ev.progress(
            f"ranking stage ({name}): validation NDCG@10 {per_list.mean():.4f} "
            f"(first stage {first.mean():.4f})"
        )
    return out


def _validation_report(
    ev: Evaluation, trained: TrainedStage, args: RankingStageArgs, reranker: Reranker | None
) -> dict[str, Any]:
    """Step 3: the validation report (the choice, the ablations, the text beside the ranker
    when a cross-encoder is given, the importances and the models' records)."""
    val_lists, ranker = trained.val_lists, trained.ranker
    first = list_ndcg10(val_lists.column("retrieval_score"), val_lists)
    report: dict[str, Any] = {
        "fold": "validation",
        "stacked_lists": len(trained.stacked.lists),
        "settings": args.as_dict(),
        "seconds": trained.seconds,
        "choice": trained.choice,
        "candidates_per_list": float(np.mean(val_lists.sizes)),
        "candidate_recall": float(
            np.mean([lbl.any() for lbl in np.split(val_lists.labels, val_lists.offsets[1:-1])])
        ),
        "first_stage_ndcg@10": float(first.mean()),
        "ablation": _ablation(ev, trained, args.ranker),
    }
    if reranker is not None:
        ev.progress("ranking stage: the cross-encoder's text on validation")
        report["text"] = text_side_by_side(
            reranker,
            ranker,
            val_lists,
            trained.stage_val.features.item_ids,
            ev.catalog,
            ev.hist_val,
            ev.seed,
            ev.progress,
        )
    report["served"] = trained.choice["served"]
    report["importance"] = dict(sorted(ranker.importance().items(), key=lambda kv: -kv[1]))
    report["ranker"] = ranker.record
    report["like"] = ranker.like.record if ranker.like is not None else ranker.record.get("like")
    return report


def _test(
    ev: Evaluation,
    towers: TowerRuns,
    args: RankingStageArgs,
    ranker: GBDTRanker,
    served: str,
    started: float,
) -> None:
    """Step 5: test, the first stage refitted on train + validation, each seed's tower;
    records the ``ranking_stage`` method (the first seed) and the other seeds' rankings."""
    stage_test = CandidateStage.build(
        ev.catalog.items,
        ev.hist_test,
        towers.tower,
        towers.index,
        ev.item_vectors,
        als=args.als,
        depths=args.depths,
    )
    runs: list[dict[str, Any]] = []
    rankings: list[Ranked] = []
    for seed_s, tower_s, index_s in [
        (ev.seed, towers.tower, towers.index),
        *((s, t, i) for s, _r, t, i in towers.others),
    ]:
        stage_s = stage_test if tower_s is towers.tower else stage_test.with_tower(tower_s, index_s)
        ranked, recall = _test_ranking(ev, stage_s, ranker, served == "ranker")
        if not rankings:  # the first seed is the reported method
            m = ev.record(
                "ranking_stage",
                ranked,
                {"served": served, **args.as_dict(), **ranker.record},
                time.perf_counter() - started,
            )
            m["candidate_recall@all"] = recall
            m["batch"] = _batch(ev, stage_s, ranker, served == "ranker", ranked)
            if ranked.probabilities:  # a P(like) head: every like was a like, or there is none
                m["calibration"] = calibration_curve(ranked.target_score, ev.test.like)
                m["ece"] = expected_calibration_error(ranked.target_score, ev.test.like)
        else:
            ev.extra_rankings.setdefault("ranking_stage", []).append(ranked)
        rankings.append(ranked)
        runs.append({"seed": seed_s, **headline(metrics_of(ranked, ev.test, ev.cold))})
    if len(runs) > 1:
        m["seeds"] = seed_summary(runs)
    tower_rankings = [ev.rankings["two_tower_trained"], *(r for _s, r, _t, _i in towers.others)]
    if len(tower_rankings) == len(rankings):  # the pipeline against its own first stage
        vs_first = seed_mean_vs(rankings, tower_rankings, ev.test, ev.seed, "two_tower_trained")
        if "seeds" in m:
            m["seeds"]["vs_first_stage"] = vs_first
        else:  # one seed: no seeds' summary to hold it
            m["vs_first_stage"] = vs_first


def _batch(
    ev: Evaluation, stage: CandidateStage, ranker: GBDTRanker, serve: bool, online: Ranked
) -> dict[str, Any]:
    """The nightly batch protocol (``recommend-all``): every test user served at the
    training log's end instead of at their held-out event, so the windowed features are as
    old as a list read later; its headline next to the online one, paired per user."""
    at = log_end(ev.hist_test)
    ranked, _ = _test_ranking(ev, stage, ranker, serve, at)
    batch = metrics_of(ranked, ev.test, ev.cold)
    ev.progress(f"ranking stage, served at the log's end (batch): NDCG@10 {batch['ndcg@10']:.4f}")
    return {
        "request_time": at,
        **headline(batch),
        "vs_online": seed_mean_vs([ranked], [online], ev.test, ev.seed, "online"),
    }


def ranking_stage(
    ev: Evaluation,
    towers: TowerRuns,
    args: RankingStageArgs | None = None,
    reranker: Reranker | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the ranking stage (see the module docstring); records the
    ``ranking_stage`` method on test and returns the validation report. With a cross-encoder
    ``reranker``, the report's ``text`` entry says whether its text earns weight
    (:mod:`benchmarks.evaluation.text`)."""
    base = args or RankingStageArgs()
    args = replace(  # the settings `train ranker` uses, seeded as the run
        base, als=replace(base.als, seed=ev.seed), ranker=replace(base.ranker, seed=ev.seed)
    )
    started = time.perf_counter()
    trained = _trained(ev, towers, args)
    report = _validation_report(ev, trained, args, reranker)
    _test(ev, towers, args, trained.ranker, report["served"], started)
    return report


def _test_ranking(
    ev: Evaluation, stage: CandidateStage, ranker: GBDTRanker, serve: bool, at: int | None = None
) -> tuple[Ranked, float]:
    """Test users' top 100 by the served order, P(like) of their held-out item, and the
    share of test targets among the candidates; requested at each held-out event, or all at
    ``at`` (the batch protocol)."""
    fold = ev.test
    requests = _requests(fold, ev.hist_test, ev.split.test, at)
    excludes = [{fold.item_ids[c] for c in seen} for seen in fold.seen]
    targets = [fold.item_ids[c] for c in fold.relevant]
    lists = stage.lists(requests, excludes, list(targets))
    scores = ranker.score(lists.x) if serve else lists.column("retrieval_score")
    ranked = ranked_from(scores, lists, fold)
    if ranker.like is not None:
        rows = stage.item_rows(requests, targets)
        cols = [lists.names.index(n) for n in ranker.like.names]
        ranked = Ranked(ranked.top, ranker.like.probability(rows[:, cols]), probabilities=True)
    recall = float(np.mean([y.any() for y in np.split(lists.labels, lists.offsets[1:-1])]))
    return ranked, recall


def _without_source(lists: Lists, source: str, sources: list[str]) -> Lists:
    """The lists without the candidates only ``source`` proposed, and its columns."""
    present = np.stack([lists.column(f"{s}_present") for s in sources], axis=1) > 0
    s = sources.index(source)
    only = present[:, s] & ~np.delete(present, s, axis=1).any(axis=1)
    return lists.without_rows(only).without_columns(source_features([source]))
