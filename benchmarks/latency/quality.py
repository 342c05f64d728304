"""Quality on the ranker's own validation lists (the training split's histories, each user's
validation event, as ``train ranker`` validates): the depth curve and the cascade (the
cross-encoder over the ranker's top N)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext
from benchmarks.latency.agreement import order_agreement
from benchmarks.latency.configs import CASCADE_DEPTHS, DEPTHS, REFERENCE_DEPTH

if TYPE_CHECKING:
    from rerank.ranker.candidates import CandidateStage, Lists
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import RankerValidation


def validation_stage(
    home: Path, redis_url: str | None, ranker: GBDTRanker
) -> tuple[CandidateStage, RankerValidation]:
    """The ranking stage and the :class:`rerank.ranker.train.RankerValidation` that
    ``train ranker`` validates on: the served tower and the stage's tables fitted on the
    training split (text vectors from the build's cache)."""
    from catalog.store import load_catalog
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.tables import ALSParams
    from rerank.ranker.train import ranker_validation
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder, encode_catalog
    from retrieval.redis_client import open_redis

    card = ranker.record
    catalog = load_catalog(home / "datasets" / "ml-latest-small")
    client, server = open_redis(redis_url, home / "redis")  # the build's cache
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        text = encode_catalog(encoder, catalog.items_as_of(card.get("text_as_of")))
    finally:
        client.close()
        if server is not None:
            server.close()
    setup = ranker_validation(catalog, text, home / "models" / "tower")
    stage_args = card.get("stage", {})
    stage = CandidateStage.build(
        setup.catalog.items,
        setup.histories,
        setup.tower,
        setup.index,
        setup.text_vectors,
        als=ALSParams(**stage_args["als"]) if "als" in stage_args else ALSParams(),
        depths=stage_args.get("depths"),
    )
    return stage, setup


def ranked_lists(
    stage: CandidateStage, setup: RankerValidation, ranker: GBDTRanker, quick: bool
) -> tuple[Lists, npt.NDArray[np.float64]]:
    """The validation lists at the trained depth (the first 150 users with ``quick``) and the
    ranker's score of every row."""
    val = setup.validation
    n = 150 if quick else len(val.requests)
    lists = stage.lists(
        val.requests[:n], val.excludes[:n], val.targets[:n], depths={"tower": REFERENCE_DEPTH}
    )
    cols = np.array([lists.names.index(c) for c in ranker.names], dtype=np.int64)
    return lists, np.asarray(ranker.score(lists.x[:, cols]), dtype=np.float64)


def depth_quality(stage: Any, setup: Any, ranker: Any, quick: bool) -> list[dict[str, Any]]:
    """NDCG@10 and agreement with the reference depth on the validation lists
    (:func:`validation_stage`'s)."""
    from rerank.ranker.train import list_ndcg10

    val = setup.validation
    n = 150 if quick else len(val.requests)
    requests, excludes, targets = val.requests[:n], val.excludes[:n], list(val.targets[:n])
    per_depth = {}
    for depth in DEPTHS:
        lists = stage.lists(requests, excludes, targets, depths={"tower": depth})
        cols = np.array([lists.names.index(c) for c in ranker.names], dtype=np.int64)
        scores = ranker.score(lists.x[:, cols])
        per_depth[depth] = (lists, scores, list_ndcg10(scores, lists))
    ref_lists, ref_scores, ref_ndcg = per_depth[REFERENCE_DEPTH]
    rows = []
    for depth, (lists, scores, ndcg) in per_depth.items():
        rhos, overlaps = [], []
        for i in range(len(lists.sizes)):
            a = slice(lists.offsets[i], lists.offsets[i + 1])
            b = slice(ref_lists.offsets[i], ref_lists.offsets[i + 1])
            rho, overlap = order_agreement(
                scores[a], ref_scores[b], lists.cols[a].tolist(), ref_lists.cols[b].tolist()
            )
            rhos.append(rho)
            overlaps.append(overlap)
        rows.append(
            {
                "depth": depth,
                "lists": len(lists.sizes),
                "mean_candidates": float(np.mean(lists.sizes)),
                "ndcg@10": float(ndcg.mean()),
                "ndcg_vs_reference": float(ndcg.mean() / ref_ndcg.mean()),
                "spearman_top10_vs_reference": float(np.mean(rhos)),
                "top10_overlap_vs_reference": float(np.mean(overlaps)),
            }
        )
    return rows


def cascade(
    ranked: npt.NDArray[np.float64], top: npt.NDArray[np.int64], p_like: Any, depth: int
) -> npt.NDArray[np.float64]:
    """One list's scores after the cascade: ``top`` (row positions in the ranker's order, as
    many as ``p_like`` has values) cut to ``depth`` and reordered by P(like) above every
    other row; the rest keep the ranker's scores and order."""
    out = np.array(ranked, dtype=np.float64)
    keep = top[:depth]
    ceiling = out.max() + 1.0 if len(out) else 0.0
    out[keep] = ceiling + np.asarray(p_like, dtype=np.float64)[: len(keep)]
    return out


def cascade_quality(
    ctx: BenchContext,
    stage: CandidateStage,
    setup: RankerValidation,
    ranker: GBDTRanker,
    backend: str,
    quick: bool,
) -> list[dict[str, Any]]:
    """Lever 2 on the validation lists at the trained depth: the ranker orders every
    candidate, the cross-encoder's P(like) (its text and its own features, as it serves)
    reorders the ranker's top N. Per N: NDCG@10, its ratio to the ranker's order, and the
    two orders' agreement (on :func:`validation_stage`'s lists)."""
    from catalog import ItemTextTemplate, UserTextTemplate, leave_one_out
    from catalog.model import User
    from rerank import Reranker
    from rerank.cross_encoder.pairs import FeatureMaker, RatingStats
    from rerank.ranker.train import list_ndcg10

    reranker = Reranker(ctx.home / "models" / "reranker", backend=backend)
    train = leave_one_out(setup.catalog.interactions, seed=0).train  # ranker_validation's split
    counts: dict[str, int] = {}
    for history in setup.histories.values():
        for event in history:
            counts[event.item_id] = counts.get(event.item_id, 0) + 1
    features = FeatureMaker(
        setup.tower, setup.index, counts, reranker.config.features, RatingStats.of(train)
    )
    users = UserTextTemplate.from_dict(reranker.config.user_template)
    items = ItemTextTemplate()
    val = setup.validation
    lists, ranked = ranked_lists(stage, setup, ranker, quick)
    n = len(lists.sizes)
    deepest = max(CASCADE_DEPTHS)
    cascaded = {depth: ranked.copy() for depth in CASCADE_DEPTHS}
    started = time.perf_counter()
    pairs = 0
    for i, request in enumerate(val.requests[:n]):
        rows = np.arange(lists.offsets[i], lists.offsets[i + 1])
        top = rows[np.argsort(-ranked[rows], kind="stable")[:deepest]]
        if not len(top):
            continue
        ids = [stage.item_ids[c] for c in lists.cols[top]]
        history = request.history
        text = users.render(
            setup.catalog.users.get(request.user_id, User(request.user_id)),
            history,
            setup.catalog.items,
        )
        feats = features.features(features.user_vector(history), ids, history)
        p_like = reranker.score(text, [items.render(setup.catalog.items[j]) for j in ids], feats)
        pairs += len(ids)
        for depth, scores in cascaded.items():
            scores[rows] = cascade(ranked[rows], top - rows[0], p_like, depth)
    seconds = time.perf_counter() - started
    reference = list_ndcg10(ranked, lists)
    rows_out: list[dict[str, Any]] = [
        {"cross_encoder_depth": 0, "ndcg@10": float(reference.mean()), "ndcg_vs_ranker": 1.0}
    ]
    for depth, scores in cascaded.items():
        ndcg = list_ndcg10(scores, lists)
        agreement = [
            order_agreement(
                scores[lists.offsets[i] : lists.offsets[i + 1]],
                ranked[lists.offsets[i] : lists.offsets[i + 1]],
                lists.cols[lists.offsets[i] : lists.offsets[i + 1]].tolist(),
                lists.cols[lists.offsets[i] : lists.offsets[i + 1]].tolist(),
            )
            for i in range(len(lists.sizes))
        ]
        diff = ndcg - reference
        rows_out.append(
            {
                "cross_encoder_depth": depth,
                "ndcg@10": float(ndcg.mean()),
                "ndcg_vs_ranker": float(ndcg.mean() / reference.mean()),
                "minus_ranker_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                "spearman_top10_vs_ranker": float(np.mean([a[0] for a in agreement])),
                "top10_overlap_vs_ranker": float(np.mean([a[1] for a in agreement])),
            }
        )
    rows_out[0].update(lists=len(lists.sizes), pairs=pairs, ms_per_pair=1000 * seconds / pairs)
    return rows_out
