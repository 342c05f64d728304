"""`duorank recommend-all`: every user's top k precomputed, so a site can serve stored lists.

Each worker opens the Recommender once (the published index, tower and ranking stage, exactly
as `serve` does) and calls it user by user: in this process (``engine="local"``) or in a pool
of Ray Data actors (``engine="ray"``: a local Ray, or a cluster whose nodes see the same home
folder). The rows are the same either way (a test compares them with the Recommender called
user by user). They are written as Parquet (one row per user and rank, replaced atomically,
with a manifest) and/or to Redis, one key per user holding the list as JSON, with a TTL.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.fsutil import RECOMMENDATIONS
from catalog.progress import Progress
from duorank.jobs import ServingJob, open_recommender
from duorank.settings import Settings

if TYPE_CHECKING:
    from serving.recommender import Recommender

COLUMNS = ("user_id", "rank", "item_id", "ranking_score", "first_stage_score", "p_like")
"""The rows' columns (``rank`` counts from 1)."""
REDIS_PREFIX = "duorank:recs"
"""Key prefix of the lists written to Redis (``<prefix>:<user id>``)."""


def recommend_rows(
    rec: Recommender,
    users: Sequence[str],
    k: int,
    candidates: int,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """The Recommender's top ``k`` of every user, one row per (user, rank); ``progress``
    counts users and the fallbacks served (``fallbacks``)."""
    rows: list[dict[str, Any]] = []
    for user in users:
        result = rec.recommend(user, k=k, candidates=candidates)
        if progress is not None:
            progress.update()
            if result.fallback:
                progress.note("fallbacks")
        for rank, item in enumerate(result.items, start=1):
            rows.append(
                {
                    "user_id": user,
                    "rank": rank,
                    "item_id": item.item_id,
                    "ranking_score": item.ranking_score,
                    "first_stage_score": item.first_stage_score,
                    "p_like": item.p_like,
                }
            )
    return rows


class RecommendActor:
    """A Ray actor: one Recommender, opened once, for batches of user ids."""

    def __init__(self, settings: Settings, job: ServingJob, k: int, candidates: int) -> None:
        self._stack = contextlib.ExitStack()
        self.rec = self._stack.enter_context(open_recommender(settings, job))
        self.k, self.candidates = k, candidates

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = recommend_rows(self.rec, [str(u) for u in batch["user_id"]], self.k, self.candidates)
        return {c: np.array([r[c] for r in rows], dtype=object) for c in COLUMNS}


def recommend_all(
    settings: Settings,
    job: ServingJob,
    users: Sequence[str],
    *,
    k: int = 10,
    candidates: int = 100,
    engine: str = "local",
    workers: int = 2,
    address: str | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Every user's rows, in ``users`` order and rank order, and the serving index version;
    ``progress`` counts the users done (and, in this process, the fallbacks served)."""
    if engine == "local":
        with open_recommender(settings, job) as rec:
            return recommend_rows(rec, users, k, candidates, progress), rec.index_version
    if engine != "ray":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    import ray

    from indexer import IndexRoot

    # The version CURRENT names, pinned for every actor (a publish while the job runs must
    # not mix two versions in one output); the driver loads no Recommender itself.
    version = IndexRoot(job.root or settings.layout.index).require_current()
    job = dataclasses.replace(job, version=version)

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        blocks = max(workers, math.ceil(len(users) / batch_size))
        dataset = ray.data.from_items(
            [{"user_id": u} for u in users], override_num_blocks=blocks
        ).map_batches(
            RecommendActor,
            fn_constructor_kwargs={
                "settings": settings,
                "job": job,
                "k": k,
                "candidates": candidates,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
        )
        rows = []
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows += [
                {c: _plain(batch[c][n]) for c in COLUMNS} for n in range(len(batch["user_id"]))
            ]
            if progress is not None:
                progress.update(len(set(batch["user_id"].tolist())))
    finally:
        if started_here:
            ray.shutdown()
    return rows, version


def _plain(value: Any) -> Any:
    """numpy scalars as Python values (None stays None)."""
    return value.item() if hasattr(value, "item") else value


def write_parquet(rows: Sequence[dict[str, Any]], out: Path, manifest: dict[str, Any]) -> Path:
    """``out/recommendations.parquet`` and ``out/manifest.json``, replacing ``out`` whole or
    not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.fsutil import atomic_dir, write_json

    table = pa.table(
        {
            "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
            "rank": pa.array([r["rank"] for r in rows], pa.int32()),
            "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
            **{
                c: pa.array([r[c] for r in rows], pa.float64())
                for c in ("ranking_score", "first_stage_score", "p_like")
            },
        }
    )
    with atomic_dir(out, RECOMMENDATIONS) as staging:
        pq.write_table(table, staging / "recommendations.parquet")
        write_json(staging / "manifest.json", manifest)
    return out / "recommendations.parquet"


def write_redis(
    client: Any, rows: Sequence[dict[str, Any]], ttl: int, prefix: str = REDIS_PREFIX
) -> int:
    """One key per user (``<prefix>:<user id>``) holding its list as JSON, expiring after
    ``ttl`` seconds; returns the keys written. Pipelined in chunks (per node on a cluster)."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(
            {k: r[k] for k in ("item_id", "ranking_score", "first_stage_score", "p_like")}
        )
    written = 0
    users = list(by_user)
    for start in range(0, len(users), 500):
        pipe = client.pipeline(transaction=False)
        for user in users[start : start + 500]:
            pipe.set(f"{prefix}:{user}", json.dumps(by_user[user]), ex=ttl)
        pipe.execute()
        written += len(users[start : start + 500])
    return written


def manifest_of(version: str, users: int, k: int, candidates: int, engine: str) -> dict[str, Any]:
    """What a precomputed set of lists was made from."""
    return {
        "format": RECOMMENDATIONS.value,
        "index_version": version,
        "users": users,
        "k": k,
        "candidates": candidates,
        "engine": engine,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def user_ids(path: Path | None, known: Sequence[str]) -> list[str]:
    """The users to precompute: one id per line of ``path`` (``\\n``-separated, a UTF-8 BOM
    and blank lines skipped, repeats kept once), else all ``known`` ones.

    Raises:
        DataError: an undecodable line or an id the dataset does not know (named with its file
            and line), or a file with no id at all (so an empty file never replaces yesterday's
            lists with none), before any work.
    """
    from catalog.errors import DataError

    if path is None:
        return list(known)
    members = set(known)
    data = path.read_bytes()
    data = data.removeprefix(codecs.BOM_UTF8)
    out: dict[str, None] = {}
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            user = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DataError(
                f"cannot decode as UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                path=path,
                line=n,
            ) from None
        if not user:
            continue
        if user not in members:
            raise DataError("unknown user id (not in the dataset)", path=path, line=n, value=user)
        out[user] = None
    if not out:
        raise DataError("no user ids in the file (one id per line)", path=path)
    return list(out)
