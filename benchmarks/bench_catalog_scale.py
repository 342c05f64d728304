"""`duorank bench catalog-scale`: a serving worker as the catalog grows to a million items.

`bench online-scale` holds the users' side (5M users in Redis) with the served home's 9,742
items. This one grows the item side. Per size, a synthetic catalog (items with a title, a year
and one to three of 18 genres; a tenth as many users as items, 20 events each, items drawn with
a Zipf-like popularity so that head items fill their neighbour rows) is saved as a dataset, and
then everything runs as a user runs it:

- ``duorank index build --data D --tower T --ranker R``: the home's trained tower and ranker
  (the quickstart's) over the new catalog, timed as a whole and by the manifest's phases, with
  the build process's peak resident memory;
- the users written into the online user store (:meth:`online.UserStore.write_log`);
- ``duorank serve --user-store --workers 2`` over that version: time to ready, p50 / p95 / p99
  of ``user_id`` calls at 1 client, each worker's resident memory after the calls and the part
  of it that is its own (``RssAnon``: the mapped index's pages are shared by the workers), and
  the version's files by size.

The item text vectors are not MiniLM's: encoding a million texts takes about an hour on 2
cores (``bench scale-encode``), so the bench writes seeded random unit vectors (clustered, so
that neighbours and the index behave as on real text) into the embedding cache under the
model's fingerprint and exact text before the build, and the build reads them back as cache
hits, as a nightly build reads its unchanged items. Everything after the encoder is the
product's code.

The sizes are 10k and 100k items with the default flat index, 100k and 1M with HNSW in
full; 300 (flat) and 3,000 (HNSW) with ``--quick``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.progress import Progress

SIZES = ((10_000, "flat"), (100_000, "flat"), (100_000, "hnsw"), (1_000_000, "hnsw"))
"""Items and the build's ``--index-type``: flat (the default) while its exact scan is cheap,
HNSW past it (a flat scan of 100k vectors of the tower's width costs tens of ms a call)."""
QUICK_SIZES = ((300, "flat"), (3_000, "hnsw"))
EVENTS_PER_USER = 20
USERS_PER_ITEM = 0.1
GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
)
GENRES += ("Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance")
GENRES += ("Sci-Fi", "Thriller", "War", "Western")
WORDS: tuple[str, ...] = (
    "night",
    "river",
    "house",
    "city",
    "last",
    "first",
    "blue",
    "storm",
    "king",
    "winter",
)
WORDS += ("road", "dark", "love", "lost", "secret", "garden", "iron", "glass", "star", "wild")
CLUSTERS = 256
T0 = 1_500_000_000
NAMESPACE = "bench:catalog-users"


def synthetic_catalog(n_items: int, seed: int = 0) -> Any:
    """A dataset of ``n_items`` items and a tenth as many users (20 events each, half rated),
    with a Zipf-like item popularity."""
    from catalog import Catalog, Interactions, Item, User

    rng = np.random.default_rng(seed)
    n_users = max(int(n_items * USERS_PER_ITEM), 100)
    words = np.array(WORDS)
    picks = rng.integers(0, len(WORDS), (n_items, 2))
    years = rng.integers(1930, 2024, n_items)
    n_genres = rng.integers(1, 4, n_items)
    genre_of = rng.integers(0, len(GENRES), (n_items, 3))
    items = {
        str(i): Item(
            str(i),
            f"The {words[a]} {words[b]} {i} ({y})",
            genres=tuple(dict.fromkeys(GENRES[g] for g in genre_of[i, :k])),
        )
        for i, (a, b), y, k in zip(range(n_items), picks, years, n_genres, strict=True)
    }
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    rows = n_users * EVENTS_PER_USER
    drawn = rng.choice(n_items, size=rows, p=popularity / popularity.sum())
    ratings = rng.integers(1, 11, rows) / 2
    users = np.char.add("u", np.repeat(np.arange(n_users), EVENTS_PER_USER).astype(str))
    times = T0 + np.sort(rng.integers(0, 365 * 86_400, (n_users, EVENTS_PER_USER))).ravel()
    inter = Interactions(users, drawn.astype(str), times, ratings)
    return Catalog(
        items,
        {f"u{u}": User(f"u{u}") for u in range(n_users)},
        inter,
        source={"loader": "bench catalog-scale", "seed": seed},
    )


def _unit_vectors(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """Seeded unit vectors around :data:`CLUSTERS` centres (text-like neighbourhoods)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 65_536):
        stop = min(start + 65_536, n)
        part = centres[rng.integers(0, CLUSTERS, stop - start)]
        part += 0.8 * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def _fill_cache(settings: Any, items: Any, tower: Path, seed: int) -> tuple[int, float]:
    """Every item's text, as the build renders it, cached with a synthetic vector under the
    model's fingerprint; returns the vectors written and the seconds it took."""
    from catalog.text import ItemTextTemplate
    from duorank.app import runtime
    from duorank.jobs import tower_text_as_of

    started = time.perf_counter()
    template = ItemTextTemplate()
    as_of = tower_text_as_of(tower)
    texts = [template.render(item) for item in items.values()]
    assert as_of is None or all(not item.tags for item in items.values())  # no tags to date
    with runtime(settings) as rt:
        encoder = rt.encoder()
        vectors = _unit_vectors(len(texts), encoder.dim, seed)
        assert rt.cache is not None
        written = 0
        with Progress("caching synthetic text vectors", total=len(texts), unit="items") as bar:
            for start in range(0, len(texts), 50_000):
                part = texts[start : start + 50_000]
                written += rt.cache.put_many(
                    encoder.fingerprint, part, vectors[start : start + len(part)]
                )
                bar.update(len(part))
    return written, time.perf_counter() - started


def _duorank(home: Path, args: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Runs ``duorank --home HOME ARGS`` to its end; returns its seconds and its peak resident
    memory (MB, its ``VmHWM`` read while it runs)."""
    exe = Path(sys.executable).with_name("duorank")
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [str(exe), "--home", str(home), "--log-level", "WARNING", *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        peak = 0.0
        while child.poll() is None:
            try:
                status = Path(f"/proc/{child.pid}/status").read_text()
                peak = max(peak, float(status.split("VmHWM:")[1].split()[0]) / 1024)
            except (OSError, IndexError):  # it ended between poll and read
                pass
            time.sleep(0.2)
        if child.returncode:
            err.seek(0)
            raise RuntimeError(f"duorank {' '.join(args)} failed:\n{err.read()[-4000:]}")
    return time.perf_counter() - started, peak


def _serve(
    home: Path, data: Path, ranker: Path, env: dict[str, str], users: list[str], quick: bool
) -> dict[str, Any]:
    """``serve --user-store --workers 2`` over the version: ready time, latency at 1 client
    and each process's resident memory."""
    from benchmarks.latency.server import level, one_client, rss_mb, serve_process

    extra = ["--data", str(data), "--ranker", str(ranker), "--user-store", "--workers", "2"]
    requests, budget = (30, 60.0) if quick else (400, 240.0)
    started = time.perf_counter()
    with serve_process(home, "torch", extra, env, ready_s=900) as (url, pid):
        ready_s = time.perf_counter() - started
        one = level(url, users, 1, requests, budget)
        memory, private = rss_mb(pid), rss_mb(pid, "RssAnon")
    return {
        "ready_s": ready_s,
        **one_client(one),
        "serve_errors": one["errors"],
        "rss_mb_by_process": memory,
        "rss_mb_per_worker": max(memory[1:] or memory),
        # what is the worker's own: its resident memory less the file pages it shares
        "private_mb_by_process": private,
        "private_mb_per_worker": max(private[1:] or private),
    }


def _one_size(
    n_items: int, index_type: str, ctx: BenchContext, redis_url: str, quick: bool
) -> dict[str, Any]:
    import redis

    from catalog.store import save_catalog
    from duorank.settings import Settings
    from online import UserStore

    tower, ranker = ctx.home / "models" / "tower", ctx.home / "models" / "ranker"
    with tempfile.TemporaryDirectory(prefix="duorank-catalog-scale-") as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "data"
        started = time.perf_counter()
        catalog = synthetic_catalog(n_items, seed=n_items)
        save_catalog(catalog, data)
        dataset_s = time.perf_counter() - started
        settings = Settings.from_env(home=home, redis_url=redis_url)
        cached, cache_s = _fill_cache(settings, catalog.items, tower, seed=n_items)
        log, users = catalog.interactions, list(catalog.users)
        del catalog  # the bench's own memory is not what the build and the workers measure
        env = {"DUORANK_REDIS_URL": redis_url, "DUORANK_USERS_NAMESPACE": NAMESPACE}
        root = home / "index"
        build_s, build_peak = _duorank(
            home,
            [
                "index",
                "build",
                "--data",
                str(data),
                "--root",
                str(root),
                "--index-type",
                index_type,
                "--tower",
                str(tower),
                "--ranker",
                str(ranker),
            ],
            env,
        )
        current = (root / "CURRENT").read_text().strip()
        version = root / "versions" / current
        manifest = json.loads((version / "manifest.json").read_text())
        files_mb = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(version.iterdir())}
        # The workers read no text vector from the cache: emptied, the users written instead.
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        UserStore(client, namespace=NAMESPACE).write_log(log, batch=1_000)
        rng = np.random.default_rng(5)
        sample = [users[int(u)] for u in rng.integers(0, len(users), 2_000)]
        served = _serve(home, data, ranker, env, sample, quick)
        client.close()  # the private server is emptied before the next size
    return {
        "items": n_items,
        "index_type": index_type,
        "users": len(users),
        "events": len(users) * EVENTS_PER_USER,
        "dataset_s": dataset_s,
        "cached_vectors": cached,
        "cache_fill_s": cache_s,
        "build_s": build_s,
        "build_encoded": manifest["build"]["encoded"],
        "build_cache_hits": manifest["build"]["cache_hits"],
        "build_phases_s": manifest["build"]["seconds"],
        "build_peak_rss_mb": build_peak,
        "version_files_mb": files_mb,
        **served,
    }


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Every size on one private Redis (the cache and the store), emptied between sizes."""
    from retrieval.redis_client import EmbeddedRedis

    for need in ("tower", "ranker"):
        if not (ctx.home / "models" / need).is_dir():
            raise FileNotFoundError(
                f"{ctx.home / 'models' / need}: bench catalog-scale serves the home's trained "
                "tower and ranker over each synthetic catalog; run `duorank quickstart` first"
            )
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    with tempfile.TemporaryDirectory(prefix="duorank-catalog-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            client = server.client()
            client.config_set("save", "")  # no snapshots of GBs of vectors
            for n, index_type in sizes:
                client.flushdb()
                rows.append(_one_size(n, index_type, ctx, server.url, quick))
        finally:
            server.close()
    large = rows[-1]
    targets = [
        Target(
            f"serving RSS MB per worker at {large['items']:,} items",
            large["rss_mb_per_worker"],
            1_500.0,
            "<=",
        ),
        Target(
            f"serving p95 ms at 1 client, {large['items']:,} items",
            round(large["serve_p95_ms_1"], 2),
            25.0,
            "<=",
        ),
        Target("serving errors, every size", sum(r["serve_errors"] for r in rows), 0, "<="),
    ]
    return BenchReport(
        name="catalog-scale",
        params={
            "quick": quick,
            "sizes": [list(s) for s in sizes],
            "users_per_item": USERS_PER_ITEM,
            "events_per_user": EVENTS_PER_USER,
            "text_vectors": "synthetic unit vectors in the embedding cache (not MiniLM)",
            "served": "serve --user-store --workers 2: the home's tower and ranker",
        },
        results={"sizes": rows},
        targets=targets,
        table=[
            {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in r.items()
                if k not in ("build_phases_s", "version_files_mb", "private_mb_by_process")
            }
            for r in rows
        ],
    )
