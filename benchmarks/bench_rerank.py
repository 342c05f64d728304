"""`duorank bench rerank`: latency of scoring 100 candidate pairs per user, per backend.

Users are ml-latest-small validation users; each call scores the retrieval stage's top 100
candidates for one user (the user text from the training history, the item texts, the
features). Per backend: p50/p95 over the calls, NDCG@10 of the reranked lists against the
held-out item (the same lists for every backend), and achieved GFLOP/s against the CPU's peak.

The straightforward baseline is ``sentence_transformers.CrossEncoder.predict`` in fp32 on the
same backbone and the same pairs (its head is the library's own, so only its latency is
compared; the quality reference is duorank's own fp32 path on the trained model).

A ``user_prefix`` model's backends compute the user side once per call and then the item
tokens alone (ONNX through the exported user and item graphs). Achieved GFLOP/s count the
tokens a backend computes; ``pair_gflops`` counts every token of every pair (what the
straightforward call computes), so it shows the work saved as well as the speed of the work.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target, cpu_model
from catalog import ItemTextTemplate, leave_one_out, load_movielens
from catalog.progress import Progress
from metrics import heldout_ndcg
from rerank import Reranker, export_onnx
from rerank.cross_encoder.backends import ONNX_FILES, PREFIX_FILES
from rerank.cross_encoder.context import prepare_stage
from rerank.cross_encoder.evaluation import validation_set
from rerank.cross_encoder.model import read_config, split_pair_ids
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder, encode_catalog
from retrieval.redis_client import open_redis

FLOP_PER_TOKEN = 2 * 11.0e6
"""Forward FLOPs per token of MiniLM-L6 (2 x ~11M non-embedding weights; attention over short
sequences adds a few percent and is left out, so achieved GFLOP/s are slight underestimates)."""


def cpu_peak_gflops() -> dict[str, float]:
    """Peak fp32 and bf16 GFLOP/s: cores x clock x FLOP per cycle (two 256-bit FMA pipes for
    AVX2/AVX-512 on Zen 4: 32 fp32 FLOP per cycle; bf16 dot products double that)."""
    mhz = 0.0
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    cores = os.cpu_count() or 1
    per_cycle = 32.0 if "avx2" in flags else 8.0
    fp32 = cores * mhz / 1000 * per_cycle
    return {
        "fp32": fp32,
        "bf16": fp32 * (2 if "avx512_bf16" in flags or "amx_bf16" in flags else 1),
    }


def _spearman(a: Any, b: Any) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


Call = tuple[str, list[str], list[str], Any]
"""One timed call: the user text, the candidates' ids, their texts, their features."""


def _exported(folder: Path) -> None:
    """Export the ONNX int8 graphs the backends need, unless they are there already."""
    files = [ONNX_FILES["onnx-int8"]]
    if read_config(folder).attention == "user_prefix":
        files += PREFIX_FILES["onnx-int8"]
    if not all((folder / "onnx" / name).is_file() for name in files):
        export_onnx(folder)


def _calls(ctx: BenchContext, reference: Reranker, n_users: int) -> tuple[list[Call], Any]:
    """One call per validation list of the reranker's own validation setup (the stage it
    learned from, every list kept), and the held-out items."""
    catalog = load_movielens(ctx.data)
    split = leave_one_out(catalog.interactions, seed=0)
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        vectors = encode_catalog(encoder, catalog.items, ItemTextTemplate())
    finally:
        client.close()
        if server is not None:
            server.close()
    cfg = RerankerTrainArgs(
        val_users=n_users,
        val_candidates=100,
        threshold=reference.config.threshold,
        features=reference.config.features,
    )
    tower = None
    if reference.config.retrieval == "sequential":  # the first stage it learned from
        from retrieval.sequential import SequentialTower

        tower = SequentialTower.load(ctx.home / "models" / "tower")
        tower.bind_text(vectors)
    stage = prepare_stage(catalog, split, vectors, cfg, tower=tower)
    val = validation_set(catalog, split, stage, cfg, every_list=True)
    calls = [
        (
            lst[0].user_text,
            [e.item_id for e in lst],
            [stage.item_text[e.item_id] for e in lst],
            np.array([e.features for e in lst], dtype=np.float32),
        )
        for lst in val.lists
    ]
    return calls, val.held


def _score(reranker: Reranker, call: Call) -> Any:
    return reranker.score(call[0], call[2], call[3])


def _by_prob(call: Call, probs: Any) -> list[str]:
    return [call[1][i] for i in np.argsort(-np.asarray(probs), kind="stable")]


@dataclass
class _Timer:
    """Times one scoring function over every call; keeps its outputs for the agreement."""

    calls: list[Call]
    held: Any
    tokens: list[int]
    outputs: dict[str, list[Any]] = field(default_factory=dict)

    def measure(
        self,
        name: str,
        fn: Callable[[Call], Any],
        ranked_fn: Callable[[Call, Any], list[str]] | None,
        computed: list[int] | None = None,
    ) -> dict[str, Any]:
        computed = self.tokens if computed is None else computed
        fn(self.calls[0])  # warm-up
        times = []
        ranked = []
        self.outputs[name] = []
        for call in self.calls:
            start = time.perf_counter()
            out = fn(call)
            times.append(time.perf_counter() - start)
            self.outputs[name].append(np.asarray(out, dtype=np.float64).reshape(-1))
            if ranked_fn is not None:
                ranked.append(ranked_fn(call, out))

        def rate(counts: list[int]) -> float:
            return float(
                np.median(
                    [t * FLOP_PER_TOKEN / s / 1e9 for t, s in zip(counts, times, strict=True)]
                )
            )

        return {
            "backend": name,
            "calls": len(self.calls),
            "pairs_per_call": len(self.calls[0][1]),
            "p50_ms": statistics.median(times) * 1000,
            "p95_ms": float(np.percentile(times, 95)) * 1000,
            "ndcg@10": heldout_ndcg(ranked, self.held, 10) if ranked else None,
            "tokens_computed": float(np.mean(computed)),
            "gflops": rate(computed),
            "pair_gflops": rate(self.tokens),
        }


def _compare(rows: list[dict[str, Any]], timer: _Timer, peak: dict[str, float]) -> None:
    """Each row against the baseline's speed, fp32's NDCG@10 and order, and the CPU's peak."""
    for row in rows[1:]:  # rank agreement with fp32 on every call: median Spearman
        row["spearman_vs_fp32"] = float(
            np.median(
                [
                    _spearman(a, b)
                    for a, b in zip(
                        timer.outputs["torch"], timer.outputs[row["backend"]], strict=True
                    )
                ]
            )
        )
    base_ms = rows[0]["p50_ms"]
    ref_ndcg = rows[1]["ndcg@10"]
    for row in rows:
        row["speedup"] = base_ms / row["p50_ms"]
        row["ndcg_retained"] = (
            row["ndcg@10"] / ref_ndcg if row["ndcg@10"] is not None and ref_ndcg else None
        )
        peak_here = peak["bf16"] if "bf16" in row["backend"] else peak["fp32"]
        row["share_of_peak"] = row["gflops"] / peak_here if peak_here else None


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Times every backend on the same calls; needs a trained reranker under
    ``<home>/models/reranker`` (``duorank train reranker`` or the quickstart) and, when it
    learned from the trained tower, that tower under ``<home>/models/tower``."""
    from sentence_transformers import CrossEncoder

    ctx = ctx or BenchContext()
    folder = ctx.home / "models" / "reranker"
    if not (folder / "reranker.json").is_file():
        raise FileNotFoundError(
            f"no trained reranker at {folder}: run `duorank train reranker "
            f"--out {folder}` (or the quickstart) first"
        )
    _exported(folder)
    reference = Reranker(folder)
    calls, held = _calls(ctx, reference, 10 if quick else 40)
    tokens = [sum(len(r) for r in reference.encode_pairs(u, texts)) for u, _, texts, _ in calls]
    prefix_tokens = []  # what a backend that computes the user side once computes
    for u, _, texts, _ in calls:
        prefix, items = split_pair_ids(reference.tokenizer, u, texts, reference.config.max_length)
        prefix_tokens.append(len(prefix) + sum(len(r) for r in items))
    peak = cpu_peak_gflops()
    timer = _Timer(calls, held, tokens)
    baseline = CrossEncoder(
        str(folder / "backbone"), num_labels=1, device="cpu", max_length=reference.config.max_length
    )
    rows = [
        timer.measure(
            "CrossEncoder.predict fp32 (straightforward)",
            lambda c: baseline.predict(
                list(zip([c[0]] * len(c[2]), c[2], strict=True)),
                batch_size=32,
                show_progress_bar=False,
            ),
            None,
        )
    ]
    bar = Progress("rerank backends", 4, "backends")  # counted between the timed runs
    for backend in ("torch", "torch-bf16", "onnx", "onnx-int8"):
        bar.update()
        # The transformer runs even where the fusion gave the text no weight: its cost.
        reranker = Reranker(folder, backend=backend, batch_size=32, skip_unweighted_text=False)
        rows.append(
            timer.measure(
                backend,
                partial(_score, reranker),
                _by_prob,
                prefix_tokens if reranker.core.prefix_once else tokens,
            )
        )
    _compare(rows, timer, peak)
    retrieval_order = heldout_ndcg([c[1] for c in calls], held, 10)
    qualified = [r for r in rows[1:] if (r["ndcg_retained"] or 0) >= 0.99]
    best = max(qualified, key=lambda r: r["speedup"]) if qualified else None
    targets = [
        Target(
            "fastest backend at >= 99% of fp32 NDCG@10: speed-up over CrossEncoder.predict (x)",
            round(best["speedup"], 2) if best else 0.0,
            3.0,
        )
    ]
    return BenchReport(
        name="rerank",
        params={
            "quick": quick,
            "users": len(calls),
            "candidates": 100,
            "model": str(folder),
            "max_length": reference.config.max_length,
            "batch_size": 32,
            "cpu": cpu_model(),
            "peak_gflops": peak,
            "mean_tokens_per_call": float(np.mean(tokens)),
            "attention": reference.config.attention,
        },
        results={
            "backends": rows,
            "retrieval_order_ndcg@10": retrieval_order,
            "best": best["backend"] if best else None,
        },
        targets=targets,
        table=rows,
    )
