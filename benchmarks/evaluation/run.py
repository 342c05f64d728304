"""`duorank eval`: every method, one step each, on the same folds; the report's protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from benchmarks.evaluation import methods as steps
from benchmarks.evaluation.arrivals import run_arrivals
from benchmarks.evaluation.candidates import candidate_sources
from benchmarks.evaluation.protocol import KS, Fold, Ranked, make_fold
from benchmarks.evaluation.ranking import quick_stage_args, ranking_stage
from catalog.history import group_histories
from catalog.model import Catalog, Interactions, Item
from catalog.splits import Split, leave_one_out
from catalog.thresholds import COLD_ITEM_THRESHOLD, LIKE_THRESHOLD
from rerank.ranker.train import RankingStageArgs
from retrieval.index import FlatIndex, VectorIndex
from retrieval.sequential import SequentialConfig
from retrieval.towers import MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker
    from rerank.cross_encoder.training_args import RerankerTrainArgs
    from retrieval.encoder import Encoder

log = logging.getLogger(__name__)


def run_eval(
    catalog: Catalog,
    *,
    item_vectors: ItemVectors,
    text_as_of: int | None = None,
    encode: Callable[[Mapping[str, Item]], ItemVectors] | None = None,
    reranker: Reranker | None = None,
    retriever: Encoder | None = None,
    sequential: SequentialConfig | None = None,
    quick: bool = False,
    seed: int = 0,
    seeds: int = 1,
    rerank_als: bool = True,
    protocol: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Evaluates every method; returns the report (see docs/evaluation.md for its layout).

    ``seeds`` > 1 repeats the trained tower with seeds ``seed + 1, ...`` and reports each
    run's headline metrics beside the first (and of the pipeline, reranked per seed).
    ``rerank_als`` also reranks ALS's candidates (what the reranker adds on its own).
    ``item_vectors`` are the items' text as of ``text_as_of`` (the report records it);
    ``encode`` turns items into text vectors for the new-arrivals protocol
    (:mod:`benchmarks.evaluation.arrivals`), which runs with the trained tower.
    ``protocol``: what :func:`benchmarks.evaluation.literature.prepare` did to ``catalog``
    (duorank's own protocol when None).
    """
    ev = _evaluation(catalog, item_vectors, quick=quick, seed=seed, progress=progress)
    steps.popularity(ev)
    steps.tuned_baselines(ev, seeds)
    steps.zero_shot(ev)
    towers = steps.trained_tower(ev, sequential, seeds) if sequential is not None else None
    if retriever is not None:
        steps.finetuned(ev, retriever)
    pipeline_seeds: list[tuple[int, Ranked]] = []
    if reranker is not None:
        # The reranker's retrieval_score comes from the tower it trained with.
        first_stage: tuple[UserTower, VectorIndex] = (
            MeanItemsTower(item_vectors, n_recent=5),
            ev.index,
        )
        if towers is not None and reranker.config.retrieval == towers.tower.name:
            first_stage = (towers.tower, towers.index)
        pipeline_seeds = steps.reranked(ev, reranker, first_stage, towers, rerank_als)
    ranking: dict[str, Any] | None = None
    if towers is not None and towers.val_tower is not None:
        # The ranking stage over every source's candidates, stacked on the trained tower.
        ranking = ranking_stage(ev, towers, quick_stage_args() if quick else None, reranker)
    steps.against_references(ev, towers)
    # The room the ranking stage has: each candidate source's recall on validation.
    if towers is not None and towers.val_tower is not None:
        val_tower = towers.val_tower
        assert val_tower is not None and val_tower.item_vectors is not None  # bound at training
        vectors = val_tower.item_vectors
        val_index = FlatIndex(val_tower.dim).build(vectors.ids, vectors.matrix)
        sources = candidate_sources(ev, val_tower, val_index)
    else:
        sources = candidate_sources(ev, MeanItemsTower(item_vectors, n_recent=5), ev.index)
    if pipeline_seeds:
        steps.pipeline_over_seeds(ev, pipeline_seeds)
    arrivals = None
    if encode is not None and sequential is not None:
        arrivals = run_arrivals(
            catalog,
            encode,
            sequential=sequential,
            stage_args=quick_stage_args() if quick else RankingStageArgs(),
            quick=quick,
            seed=seed,
            progress=progress,
            reranker_args=_training_args(reranker, quick),
        )
    return {
        "dataset": catalog.source,
        "protocol": _protocol_record(catalog, ev, protocol, text_as_of, seed, quick),
        "best_baseline": ev.best_baseline(),
        "candidate_sources": sources,
        "ranking_stage": ranking,
        "new_arrivals": arrivals,
        "methods": ev.methods,
        "grids": ev.grids,
    }


def _protocol_record(
    catalog: Catalog,
    ev: steps.Evaluation,
    protocol: Mapping[str, Any] | None,
    text_as_of: int | None,
    seed: int,
    quick: bool,
) -> dict[str, Any]:
    """The report's ``protocol``: the split (duorank's, or the published one the catalog was
    prepared for, with what preparing it did), the ranking, the tuning and the text's date."""
    return {
        "name": "duorank",
        "split": "per-user temporal leave-one-out; ties in time broken by a seeded random order",
        **(
            {**protocol, "split": protocol["description"]}
            if protocol is not None and protocol.get("name") != "duorank"
            else {}
        ),
        "seed": seed,
        "ks": list(KS),
        "full_ranking": True,
        "exclude": "train items (validation) / train+validation items (test)",
        "tuning": "validation NDCG@10; refit on train+validation for test",
        "users": {"validation": len(ev.val.users), "test": len(ev.test.users)},
        "like_threshold": LIKE_THRESHOLD,
        "cold_item_threshold": COLD_ITEM_THRESHOLD,
        "item_text_as_of": text_as_of,
        "dated_tags_before_text_as_of": (
            catalog.tag_events.before(text_as_of) if catalog.tag_events is not None else 0
        ),
        "dated_tags": len(catalog.tag_events) if catalog.tag_events is not None else 0,
        "quick": quick,
    }


@dataclass(frozen=True)
class Folds:
    """The split and both folds every method is measured on."""

    split: Split
    val: Fold
    test: Fold
    cold: npt.NDArray[np.bool_]


def make_folds(catalog: Catalog, *, quick: bool, seed: int) -> Folds:
    """The leave-one-out split, validation and test folds (100 users each with ``quick``) and
    which test targets are cold items."""
    split = leave_one_out(catalog.interactions, seed=seed)
    max_users = 100 if quick else None
    train_val = Interactions.concat([split.train, split.validation])
    val = make_fold("validation", catalog, split.train, split.validation, max_users, seed)
    test = make_fold("test", catalog, train_val, split.test, max_users, seed)
    counts = np.asarray(test.matrix.sum(axis=0)).ravel()
    return Folds(split, val, test, counts[test.relevant] < COLD_ITEM_THRESHOLD)


def _evaluation(
    catalog: Catalog,
    item_vectors: ItemVectors,
    *,
    quick: bool,
    seed: int,
    progress: Callable[[str], None],
) -> steps.Evaluation:
    """The folds, histories and the text index."""
    folds = make_folds(catalog, quick=quick, seed=seed)
    split = folds.split
    train_val = Interactions.concat([split.train, split.validation])
    return steps.Evaluation(
        catalog=catalog,
        split=split,
        val=folds.val,
        test=folds.test,
        cold=folds.cold,
        hist_val=group_histories(split.train, seed=seed),
        hist_test=group_histories(train_val, seed=seed),
        item_vectors=item_vectors,
        index=FlatIndex(item_vectors.dim).build(item_vectors.ids, item_vectors.matrix),
        seed=seed,
        quick=quick,
        progress=progress,
    )


def _training_args(reranker: Reranker | None, quick: bool) -> RerankerTrainArgs | None:
    """The evaluated reranker's training arguments (its card's), for the new-arrivals
    protocol's own cross-encoder (None without a reranker)."""
    if reranker is None:
        return None
    import json

    from rerank.cross_encoder.training_args import RerankerTrainArgs

    card = json.loads((reranker.folder / "duorank-card.json").read_text())
    args = RerankerTrainArgs.of_card(card)
    return args.reduced() if quick else args
