"""`duorank bench latency`: where one recommend call's time goes, lever by lever, and what each
lever does to quality.

Each configuration runs in a fresh interpreter (its own thread pools and heap, and its own
``OMP_WAIT_POLICY``, which OpenMP reads when it loads) that builds the
:class:`serving.recommender.Recommender` and calls it in process (no HTTP: ``bench serving``
measures the server), one call at a time, for the same random users (300 calls for a
cross-encoder's row, 1,200 for the ranking stage's), after a few warm-up calls. Per
configuration: end-to-end and per-stage p50/p95/p99.

1. **Levers**, in the order they were applied to the first default (the cross-encoder over
   the tower's top 100, torch fp32): the backend ``auto`` picks for this CPU; ONNX int8 with
   ONNX Runtime's threads spinning between runs (its default), then sleeping; every OpenMP
   pool sleeping when idle; no transformer pass where the fitted head gives the text no
   weight; beside the ``auto`` row, a student distilled to 2 layers (``reranker-distilled``)
   and a model whose item side's first layers are cached in Redis (``reranker-split``, every
   item's states written before the timed calls); the ranking stage instead of the
   cross-encoder, first with LightGBM's thread pool for a request's rows, then on the calling
   thread; the default. The cross-encoder rows need a reranker under the home (``train
   reranker``, ``rerank export``); the student and the split model are timed when present.
2. **Candidate depth**: the tower's depth from 10 to 200 (the other sources at their
   defaults). Quality on the ranker's own validation lists (the training split's histories,
   each user's validation event, the served tower and tables fitted on the training split, as
   ``train ranker`` validates): NDCG@10 of the ranker's order, its ratio to depth 100's (the
   trained depth, the unoptimised reference), and agreement with depth 100's order: mean
   Spearman correlation of the two rankings over the union of their top 10s (an item outside
   a top 10 ranks 11th) and mean top-10 overlap. The fast path's depth is the smallest that
   keeps NDCG@10 within 1% and Spearman >= 0.99. Latency from the default's process at each
   depth.
3. **Cascade** (lever 2): the cross-encoder reorders the ranker's top 10, 20 or 50, timed with
   its text pass and scored on the same validation lists (NDCG@10 against the ranker's order).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target, percentile
from catalog.progress import Progress

DEPTHS = (10, 20, 50, 100, 200)
REFERENCE_DEPTH = 100
CASCADE_DEPTHS = (10, 20, 50)
"""Lever 2: how many of the ranker's top candidates the cross-encoder reorders."""
BEFORE = "cross-encoder, tower top 100, torch fp32 (first default)"
DEFAULT = "ranking stage: features, trees, P(like) head; threads sleep when idle (default)"
CASCADE = "ranking stage, then the cross-encoder (auto backend) over its top N"
TEXT_SKIPPED = "cross-encoder whose head gives the text no weight: no transformer pass"
SPLIT = "reranker-split"
"""Lever 1's model under the home's models/ (``train reranker --item-layers 3``)."""
DISTILLED = "reranker-distilled"
"""Lever 3's student under the home's models/ (``train reranker --layers 2 --teacher``)."""


def _time_calls(call: Callable[[str], Any], users: Sequence[str], warmup: int) -> dict[str, Any]:
    """p50/p95/p99 (ms) of every call and of each stage the calls report."""
    for user in users[:warmup]:
        call(user)
    total: list[float] = []
    stages: dict[str, list[float]] = {}
    for user in users:
        started = time.perf_counter()
        out = call(user)
        total.append((time.perf_counter() - started) * 1000)
        for name, ms in out.timings_ms.items():
            stages.setdefault(name, []).append(ms)
    row: dict[str, Any] = {
        "calls": len(total),
        "p50_ms": percentile(total, 50),
        "p95_ms": percentile(total, 95),
        "p99_ms": percentile(total, 99),
    }
    for name, values in stages.items():
        for p in (50, 95, 99):
            row[f"{name}_p{p}_ms"] = percentile(values, p)
    return row


def _order_agreement(
    a: np.ndarray, b: np.ndarray, ids_a: Sequence[int], ids_b: Sequence[int]
) -> tuple[float, float]:
    """Spearman correlation of two rankings over the union of their top 10s (items outside a
    top 10 rank 11th) and the overlap of the two top 10s."""
    top_a = [ids_a[i] for i in np.argsort(-a, kind="stable")[:10]]
    top_b = [ids_b[i] for i in np.argsort(-b, kind="stable")[:10]]
    union = list(dict.fromkeys(top_a + top_b))
    rank_a = np.array([top_a.index(i) + 1 if i in top_a else 11 for i in union], np.float64)
    rank_b = np.array([top_b.index(i) + 1 if i in top_b else 11 for i in union], np.float64)
    if np.array_equal(rank_a, rank_b):
        rho = 1.0
    elif rank_a.std() == 0 or rank_b.std() == 0:
        rho = 0.0
    else:
        rho = float(np.corrcoef(rank_a, rank_b)[0, 1])  # ranks already: Pearson = Spearman
    return rho, len(set(top_a) & set(top_b)) / 10


def _validation_stage(home: Path, redis_url: str | None, ranker: Any) -> tuple[Any, Any]:
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
        text = encode_catalog(encoder, catalog.items)
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


def _depth_quality(stage: Any, setup: Any, ranker: Any, quick: bool) -> list[dict[str, Any]]:
    """NDCG@10 and agreement with the reference depth on the validation lists
    (:func:`_validation_stage`'s)."""
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
            rho, overlap = _order_agreement(
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


def _cascade_quality(
    ctx: BenchContext, stage: Any, setup: Any, ranker: Any, backend: str, quick: bool
) -> list[Any]:
    """Lever 2 on the validation lists at the trained depth: the ranker orders every
    candidate, the cross-encoder's P(like) (its text and its own features, as it serves)
    reorders the ranker's top N. Per N: NDCG@10, its ratio to the ranker's order, and the
    two orders' agreement (on :func:`_validation_stage`'s lists)."""
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
    n = 150 if quick else len(val.requests)
    lists = stage.lists(
        val.requests[:n], val.excludes[:n], val.targets[:n], depths={"tower": REFERENCE_DEPTH}
    )
    cols = np.array([lists.names.index(c) for c in ranker.names], dtype=np.int64)
    ranked = np.asarray(ranker.score(lists.x[:, cols]), dtype=np.float64)
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
            _order_agreement(
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


@dataclass(frozen=True)
class Config:
    """One row of the levers table: what serves, and how the child process is set up."""

    name: str
    reranker: str | None = None  # a backend for the cross-encoder, or None: the ranking stage
    spin: bool = False  # ONNX Runtime's threads busy-wait between runs
    threaded_trees: bool = False  # LightGBM's OpenMP pool for a request's rows
    wait_policy: str | None = "PASSIVE"
    """OMP_WAIT_POLICY of the process (OpenMP reads it when it loads); None leaves it unset:
    OpenMP's default, idle threads spin a while before they sleep."""
    depths: tuple[int, ...] = (REFERENCE_DEPTH,)
    cascade: bool = False
    """The ranking stage with the cross-encoder over its top N (lever 2), timed per N in
    :data:`CASCADE_DEPTHS` instead of per depth."""
    folder: str = "reranker"  # the cross-encoder's folder under the home's models/
    text_pass: bool = False
    """Run the cross-encoder's transformer even where its head gives the text no weight
    (``Reranker(skip_unweighted_text=False)``): the rows before that lever."""
    item_cache: bool = False
    """Keep an item-layers model's item states in Redis, every catalog item's computed before
    the timed calls (the nightly step)."""


def _layers(folder: Path) -> int:
    """Transformer layers of a saved reranker's backbone."""
    config = json.loads((folder / "backbone" / "config.json").read_text())
    return int(config["num_hidden_layers"])


def _card_quality(folder: Path) -> dict[str, Any]:
    """A reranker's own validation figures from its card: before and after the fusion."""
    card = json.loads((folder / "duorank-card.json").read_text())
    calibration = card.get("calibration", {})
    before = calibration.get("before") or (card.get("epochs") or [{}])[-1]
    after = calibration.get("after", before)
    keys = ("auc", "logloss", "ndcg@10_rerank", "ndcg@10_retrieval")
    return {
        "layers": _layers(folder),
        "train_seconds": card.get("train_seconds"),
        "text_scale": calibration.get("text_scale"),
        **{f"{k}_before_fusion": before.get(k) for k in keys},
        **{f"{k}_after_fusion": after.get(k) for k in keys},
    }


def _child() -> None:
    """Times one configuration in this (fresh) process: reads its spec from stdin, prints
    one JSON object, per depth a timing row."""
    spec = json.loads(sys.stdin.read())
    home = Path(spec["home"])
    import rerank.ranker.model
    from catalog import ItemTextTemplate
    from catalog.store import load_catalog
    from rerank import Reranker
    from rerank.ranker.model import GBDTRanker
    from serving.recommender import Recommender

    if spec["threaded_trees"]:
        rerank.ranker.model.SERIAL_ROWS = 0
    catalog = load_catalog(home / "datasets" / "ml-latest-small")
    reranker = None
    state_bytes = None
    if spec["reranker"]:
        cache = None
        if spec["item_cache"]:
            from retrieval.cache import EmbeddingCache
            from retrieval.redis_client import open_redis

            client, _server = open_redis(spec["redis_url"], home / "redis")
            cache = EmbeddingCache(client, namespace="duorank:bench-items", dtype="float16")
        reranker = Reranker(
            home / "models" / spec["folder"],
            backend=spec["reranker"],
            spin=spec["spin"],
            skip_unweighted_text=not spec["text_pass"],
            item_cache=cache,
        )
        if cache is not None:  # the nightly step: every item's states in Redis
            texts = [t for t in map(ItemTextTemplate().render, catalog.items.values()) if t]
            states = reranker.item_states(texts)
            state_bytes = 2 * sum(x.size for x in states) / len(states)
    ranker = None
    if spec["cascade"] or not spec["reranker"]:
        ranker = GBDTRanker.load(home / "models" / "ranker")
        if spec["cascade"]:  # without its own P(like) head the cross-encoder scores the top k
            ranker.like = None
    recommender = Recommender(home / "index", catalog, reranker, ranker=ranker)
    if ranker is not None and recommender.ranker is None:
        raise RuntimeError("the ranker under the home did not beat the tower on validation")
    calls: dict[str, Callable[[str], Any]] = {}
    if spec["cascade"]:  # the ranker's top N through the cross-encoder: k = N
        for n in CASCADE_DEPTHS:
            calls[str(n)] = partial(recommender.recommend, k=n, candidates=REFERENCE_DEPTH)
    else:
        for depth in spec["depths"]:
            calls[str(depth)] = partial(recommender.recommend, k=10, candidates=depth)
    out = {key: _time_calls(call, spec["users"], spec["warmup"]) for key, call in calls.items()}
    if state_bytes is not None:
        for row in out.values():
            row["float16_state_bytes_per_item"] = state_bytes
    print(json.dumps(out))


def _run_child(entry: str, spec: dict[str, Any], wait_policy: str | None, name: str) -> Any:
    """``entry`` (a function of this module) in a fresh interpreter whose OMP_WAIT_POLICY is
    ``wait_policy`` (None: unset), ``spec`` on its stdin; returns its last line of JSON."""
    code = f"from benchmarks.bench_latency import {entry}; {entry}()"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode:
        raise RuntimeError(f"{name}: the child process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_child(
    config: Config,
    home: Path,
    users: Sequence[str],
    warmup: int,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """:func:`_child` in a fresh interpreter with ``config``'s thread-wait policy."""
    spec = {
        **asdict(config),
        "home": str(home.resolve()),
        "users": list(users),
        "warmup": warmup,
        "redis_url": redis_url,
    }
    rows: dict[str, Any] = _run_child("_child", spec, config.wait_policy, config.name)
    return rows


def _quality_child() -> None:
    """Scores the validation lists one request at a time, as a served call does (the stage's
    candidates and features for one request, then the ranker on its rows), in this (fresh)
    process; prints each list's item columns, scores and NDCG@10."""
    spec = json.loads(sys.stdin.read())
    import rerank.ranker.model
    from rerank.ranker.model import GBDTRanker
    from rerank.ranker.train import list_ndcg10

    if spec["threaded_trees"]:
        rerank.ranker.model.SERIAL_ROWS = 0
    home = Path(spec["home"])
    ranker = GBDTRanker.load(home / "models" / "ranker")
    stage, setup = _validation_stage(home, spec["redis_url"], ranker)
    val = setup.validation
    cols = np.array([stage.names.index(c) for c in ranker.names], dtype=np.int64)
    out: dict[str, list[Any]] = {"items": [], "scores": [], "ndcg": []}
    for i in range(min(spec["lists"], len(val.requests))):
        one = stage.lists(
            val.requests[i : i + 1],
            val.excludes[i : i + 1],
            val.targets[i : i + 1],
            batch=1,
            depths={"tower": REFERENCE_DEPTH},
        )
        scores = ranker.score(one.x[:, cols])
        out["items"].append(one.cols.tolist())
        out["scores"].append(scores.tolist())
        out["ndcg"].append(float(list_ndcg10(scores, one)[0]))
    print(json.dumps(out))


UNOPTIMISED = Config(
    "ranking stage: features, trees (LightGBM's thread pool), P(like) head",
    threaded_trees=True,
    wait_policy=None,
)
"""The ranking stage before the latency levers: the quality reference of the fast path."""


def fast_path_quality(ctx: BenchContext, quick: bool) -> dict[str, Any]:
    """The served fast path against the unoptimised ranking stage on the validation lists,
    each side in its own process with its own thread settings: NDCG@10 of each, their ratio,
    and the mean Spearman correlation and top-10 overlap of the two orders (the same
    measures as the depth curve)."""
    spec = {
        "home": str(ctx.home.resolve()),
        "redis_url": ctx.redis_url,
        "lists": 150 if quick else 1_000_000,
    }
    fast_config = Config(DEFAULT)
    sides = {
        config.name: _run_child(
            "_quality_child",
            {**spec, "threaded_trees": config.threaded_trees},
            config.wait_policy,
            config.name,
        )
        for config in (UNOPTIMISED, fast_config)
    }
    return {
        "unoptimised": UNOPTIMISED.name,
        "fast_path": fast_config.name,
        **compare_orders(sides[UNOPTIMISED.name], sides[fast_config.name]),
    }


def compare_orders(before: dict[str, Any], fast: dict[str, Any]) -> dict[str, Any]:
    """Two scorings of the same lists (``items``, ``scores`` and ``ndcg`` per list, as
    :func:`_quality_child` prints them): mean NDCG@10 of each and their ratio, mean Spearman
    and top-10 overlap of the two orders, and the largest score difference."""
    if fast["items"] != before["items"]:
        raise ValueError("the two sides scored different candidate lists")
    agreement = [
        _order_agreement(np.asarray(a), np.asarray(b), items, items)
        for a, b, items in zip(fast["scores"], before["scores"], fast["items"], strict=True)
    ]
    ndcg_before, ndcg_fast = float(np.mean(before["ndcg"])), float(np.mean(fast["ndcg"]))
    return {
        "lists": len(fast["ndcg"]),
        "ndcg@10_unoptimised": ndcg_before,
        "ndcg@10_fast_path": ndcg_fast,
        "ndcg_ratio": ndcg_fast / ndcg_before if ndcg_before else float("nan"),
        "spearman_top10": float(np.mean([rho for rho, _ in agreement])),
        "top10_overlap": float(np.mean([overlap for _, overlap in agreement])),
        "max_abs_score_difference": max(
            (
                float(np.max(np.abs(np.subtract(a, b)), initial=0.0))
                for a, b in zip(fast["scores"], before["scores"], strict=True)
            ),
            default=0.0,
        ),
    }


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs the quickstart's home (dataset, tower, ranker, an index built with them); the
    cross-encoder rows need ``train reranker`` (and ``rerank export`` for ONNX)."""
    from catalog.store import load_catalog
    from rerank.cross_encoder.backends import exported, resolve_backend
    from rerank.cross_encoder.inference import unweighted_text_head
    from rerank.ranker.model import GBDTRanker

    ctx = ctx or BenchContext()
    models = ctx.home / "models"
    catalog = load_catalog(ctx.home / "datasets" / "ml-latest-small")
    ranker = GBDTRanker.load(models / "ranker")
    reranker_dir = models / "reranker"
    users = sorted(catalog.users) or sorted(set(catalog.interactions.user_ids.tolist()))
    calls = 60 if quick else 300
    # The ranking stage's rows take 1,200 calls: a p99 of 300 is their third-worst call, and
    # at ~10 ms a call they are cheap (the cross-encoder rows keep 300).
    stage_calls = 60 if quick else 1200
    long_sample = random.Random(0).choices(users, k=stage_calls)
    sample = long_sample[:calls]
    warmup = 5 if quick else 20

    configs: list[Config] = []
    auto = "none"
    if (reranker_dir / "reranker.json").is_file():
        auto = resolve_backend(reranker_dir, "auto")
        configs.append(Config(BEFORE, reranker="torch", wait_policy=None, text_pass=True))
        if auto != "torch":
            configs.append(
                Config(f"+ backend auto ({auto})", reranker=auto, wait_policy=None, text_pass=True)
            )
        if exported(reranker_dir, "onnx-int8"):
            configs += [
                Config(
                    "cross-encoder, ONNX int8, ONNX Runtime threads spinning (its default)",
                    reranker="onnx-int8",
                    spin=True,
                    wait_policy=None,
                    text_pass=True,
                ),
                Config(
                    "+ ONNX Runtime threads sleep between runs",
                    reranker="onnx-int8",
                    wait_policy=None,
                    text_pass=True,
                ),
                Config(
                    "+ OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)",
                    reranker="onnx-int8",
                    text_pass=True,
                ),
            ]
        if unweighted_text_head(reranker_dir) is not None:
            configs.append(Config(TEXT_SKIPPED, reranker=auto))
        student = models / DISTILLED
        if (student / "reranker.json").is_file():  # lever 3, beside the teacher's auto row
            layers = _layers(student)
            configs.append(
                Config(
                    f"cross-encoder distilled to {layers} layers, backend auto ({auto})",
                    reranker=auto,
                    wait_policy=None,
                    folder=DISTILLED,
                    text_pass=True,
                )
            )
    split = models / SPLIT
    if auto != "none" and (split / "reranker.json").is_file():  # lever 1, beside the auto row
        split_backend = auto if auto.startswith("torch") else "torch"
        layers = json.loads((split / "reranker.json").read_text())["item_layers"]
        configs.append(
            Config(
                f"cross-encoder, item side's first {layers} layers cached in Redis, "
                f"backend {split_backend}",
                reranker=split_backend,
                wait_policy=None,
                folder=SPLIT,
                text_pass=True,
                item_cache=True,
            )
        )
    configs += [
        UNOPTIMISED,
        Config("+ a request's trees on the calling thread", wait_policy=None),
        Config(DEFAULT, depths=DEPTHS),
    ]
    levers: list[dict[str, Any]] = []
    by_depth: dict[str, Any] = {}
    # Counted in this process, between the children's timed calls (never during them).
    with Progress("latency configurations", len(configs), "configurations") as bar:
        for config in configs:
            users_of = sample if config.reranker else long_sample
            rows = _in_child(config, ctx.home, users_of, warmup, ctx.redis_url)
            levers.append({"configuration": config.name, **rows[str(REFERENCE_DEPTH)]})
            if config.name == DEFAULT:
                by_depth = rows
            bar.update()

    # One validation setup (text vectors, tower index, the stage's tables) for both curves.
    stage, setup = _validation_stage(ctx.home, ctx.redis_url, ranker)
    quality = _depth_quality(stage, setup, ranker, quick)
    for row in quality:
        row.update(by_depth[str(row["depth"])])
    reference = next(r for r in quality if r["depth"] == REFERENCE_DEPTH)
    # The fast path's depth: the smallest that keeps both quality bars against the trained
    # depth (NDCG@10 within 1%, the orders' Spearman >= 0.99).
    kept = [
        r["depth"]
        for r in quality
        if r["ndcg_vs_reference"] >= 0.99 and r["spearman_top10_vs_reference"] >= 0.99
    ]
    chosen = min(kept)
    default = levers[-1]
    cascade: list[dict[str, Any]] = []
    if auto != "none":  # lever 2: the cross-encoder over the ranker's top N
        cascading = Config(CASCADE, reranker=auto, cascade=True, text_pass=True)
        timed = _in_child(cascading, ctx.home, sample, warmup)
        cascade = _cascade_quality(ctx, stage, setup, ranker, auto, quick)
        for row in cascade:
            depth = row["cross_encoder_depth"]
            row.update(timed[str(depth)] if depth else default)
    distilled = {}
    if (models / DISTILLED / "reranker.json").is_file():
        distilled = {
            "teacher": _card_quality(reranker_dir),
            "student": _card_quality(models / DISTILLED),
        }
    item_layers = {}
    if (split / "reranker.json").is_file():
        item_layers = {"whole": _card_quality(reranker_dir), "split": _card_quality(split)}
    # It pays only where it beats the ranker's order by more than one standard error.
    pays = [
        r["cross_encoder_depth"]
        for r in cascade
        if r["cross_encoder_depth"] and r["ndcg@10"] - cascade[0]["ndcg@10"] > r["minus_ranker_se"]
    ]
    targets = [
        Target("default: p95 ms, 1 stream, in process", round(default["p95_ms"], 2), 50.0, "<="),
        Target("default: p99 / p95", round(default["p99_ms"] / default["p95_ms"], 3), 1.5, "<="),
        Target(
            "default: user embedding p95 / p50",
            round(default["embed_p95_ms"] / default["embed_p50_ms"], 2),
            2.0,
            "<=",
        ),
        Target(
            "served depth = smallest depth within 1% NDCG@10 and Spearman >= 0.99",
            chosen,
            REFERENCE_DEPTH,
            "<=",
        ),
    ]
    return BenchReport(
        name="latency",
        params={
            "quick": quick,
            "calls": calls,
            "ranking_stage_calls": stage_calls,
            "warmup": warmup,
            "k": 10,
            "backend_auto": auto,
            "depths": list(DEPTHS),
            "reference_depth": REFERENCE_DEPTH,
            "validation_lists": reference["lists"],
            "configs": [asdict(c) for c in configs],
            "cascade_depths": list(CASCADE_DEPTHS),
        },
        results={
            "levers": levers,
            "depth": quality,
            "chosen_depth": chosen,
            "cascade": cascade,
            "cascade_depths_that_pay": pays,
            "distillation": distilled,
            "item_layers": item_layers,
        },
        targets=targets,
        table=[
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k == "configuration" or (k.endswith("_ms") and "_p99_" not in k)
                }
                for r in levers
            ),
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k
                    in (
                        "depth",
                        "mean_candidates",
                        "ndcg@10",
                        "ndcg_vs_reference",
                        "spearman_top10_vs_reference",
                        "top10_overlap_vs_reference",
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                    )
                }
                for r in quality
            ),
            *(
                {
                    k: v
                    for k, v in r.items()
                    if k
                    in (
                        "cross_encoder_depth",
                        "ndcg@10",
                        "ndcg_vs_ranker",
                        "spearman_top10_vs_ranker",
                        "p50_ms",
                        "p95_ms",
                        "p_like_p95_ms",
                    )
                }
                for r in cascade
            ),
        ],
    )
