"""The normalized dataset folder that every other command reads.

Layout::

    DIR/items.parquet         id, title, description, genres, tags, attributes (JSON text)
    DIR/users.parquet         id, attributes (JSON text)
    DIR/interactions.parquet  user_id, item_id, timestamp, rating, label, event
    DIR/tags.parquet          item_id, tag, timestamp: when each tag was written (optional:
                              only a source that dates its tags writes it)
    DIR/manifest.json         counts, source, import stats, sha256 of every file
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog.errors import DataError
from catalog.fsutil import DATASET, atomic_dir, sha256_file, write_json
from catalog.model import NO_LABEL, Catalog, Interactions, Item, User
from catalog.tags import DatedTags

FORMAT = "duorank.dataset/1"
FILES = ("items.parquet", "users.parquet", "interactions.parquet")
TAGS_FILE = "tags.parquet"


def save_catalog(catalog: Catalog, out: str | Path, inputs: Iterable[Path] = ()) -> dict[str, Any]:
    """Writes ``catalog`` to a dataset folder atomically and returns its manifest.

    Only a new or empty folder, or an earlier dataset folder, is replaced; never one that holds
    ``inputs`` (the files it was read from), nor the working folder (see
    :func:`catalog.fsutil.check_replaceable`).
    """
    target = Path(out)
    with atomic_dir(target, DATASET, inputs) as staging:
        items = list(catalog.items.values())
        pq.write_table(
            pa.table(
                {
                    "id": [i.id for i in items],
                    "title": [i.title for i in items],
                    "description": [i.description for i in items],
                    "genres": pa.array([list(i.genres) for i in items], type=pa.list_(pa.string())),
                    "tags": pa.array([list(i.tags) for i in items], type=pa.list_(pa.string())),
                    "attributes": [json.dumps(dict(i.attributes), sort_keys=True) for i in items],
                }
            ),
            staging / "items.parquet",
        )
        users = list(catalog.users.values())
        pq.write_table(
            pa.table(
                {
                    "id": pa.array([u.id for u in users], type=pa.string()),
                    "attributes": pa.array(
                        [json.dumps(dict(u.attributes), sort_keys=True) for u in users],
                        type=pa.string(),
                    ),
                }
            ),
            staging / "users.parquet",
        )
        inter = catalog.interactions
        ratings = inter.ratings
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(inter.user_ids.tolist(), type=pa.string()),
                    "item_id": pa.array(inter.item_ids.tolist(), type=pa.string()),
                    "timestamp": pa.array(inter.timestamps, type=pa.int64()),
                    "rating": pa.array(ratings, type=pa.float32(), mask=np.isnan(ratings)),
                    "label": pa.array(inter.labels, type=pa.int8(), mask=inter.labels == NO_LABEL),
                    "event": pa.array(
                        inter.events.tolist(), type=pa.string(), mask=inter.events == ""
                    ),
                }
            ),
            staging / "interactions.parquet",
        )
        written = list(FILES)
        dated = catalog.tag_events
        if dated is not None and len(dated):
            pq.write_table(
                pa.table(
                    {
                        "item_id": pa.array(dated.item_ids.tolist(), type=pa.string()),
                        "tag": pa.array(dated.tags.tolist(), type=pa.string()),
                        "timestamp": pa.array(dated.timestamps, type=pa.int64()),
                    }
                ),
                staging / TAGS_FILE,
            )
            written.append(TAGS_FILE)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            **catalog.summary(),
            "dated_tags": len(dated) if dated is not None else 0,
            "source": catalog.source,
            "import_stats": catalog.stats,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {name: sha256_file(staging / name) for name in written},
        }
        write_json(staging / "manifest.json", manifest)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Reads a dataset folder's manifest.

    Raises:
        DataError: the folder or its manifest is missing, or the manifest is not a dataset's.
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise DataError(
            "dataset folder not found (create one with `duorank data import`)", path=root
        )
    if not manifest_path.exists():
        raise DataError(
            "no manifest.json: not a dataset folder (create one with `duorank data import`)",
            path=root,
        )
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=manifest_path, line=exc.lineno) from None
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"expected format {FORMAT!r}",
            path=manifest_path,
            column="format",
            value=manifest.get("format"),
        )
    return manifest


def describe(path: str | Path) -> dict[str, Any]:
    """What a person asks of a dataset first: counts, the time span of its events, its rating
    scale and labels, events per user (read from the interactions' columns, not the whole
    catalog)."""
    root = Path(path)
    manifest = read_manifest(root)
    table = pq.read_table(
        root / "interactions.parquet", columns=["user_id", "timestamp", "rating", "label"]
    )
    times = table.column("timestamp").to_numpy()
    ratings = table.column("rating").drop_null().to_numpy()
    labels = table.column("label").drop_null().to_numpy()
    _, per_user = np.unique(
        table.column("user_id").to_numpy(zero_copy_only=False), return_counts=True
    )
    out: dict[str, Any] = {
        "path": str(root),
        "source": (manifest.get("source") or {}).get("loader"),
        "created_at": manifest.get("created_at"),
        **{k: manifest[k] for k in ("users", "items", "interactions")},
        "first_event": _when(int(times.min())) if len(times) else None,
        "last_event": _when(int(times.max())) if len(times) else None,
        "rated": len(ratings),
        "rating_min": float(ratings.min()) if len(ratings) else None,
        "rating_max": float(ratings.max()) if len(ratings) else None,
        "rating_values": len(np.unique(ratings)),
        "labelled": len(labels),
        "events_per_user_median": float(np.median(per_user)) if len(per_user) else 0.0,
        "import_stats": manifest.get("import_stats", {}),
    }
    return out


def _when(timestamp: int) -> str:
    """An epoch-seconds time as a UTC date; other units (or none: file order) as the number."""
    if 0 <= timestamp < 10**10:
        return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(timestamp)


def load_catalog(path: str | Path, *, verify: bool = True, items_only: bool = False) -> Catalog:
    """Reads a dataset folder written by :func:`save_catalog`.

    Args:
        path: the dataset folder.
        verify: check every file's sha256 against the manifest first.
        items_only: read the items alone (no users, no interactions, no dated tags): what a
            serving process that reads its users from the online store needs, whatever the
            number of users.

    Raises:
        DataError: a missing folder, manifest or file, or a checksum mismatch (naming the file).
    """
    root = Path(path)
    manifest = read_manifest(root)
    listed = [*FILES, *([TAGS_FILE] if TAGS_FILE in manifest.get("files", {}) else [])]
    if items_only:
        listed = [FILES[0]]
    for name in listed:
        file = root / name
        if not file.exists():
            raise DataError("file listed in manifest.json is missing", path=file)
        if verify and sha256_file(file) != manifest["files"].get(name):
            raise DataError(
                "sha256 does not match manifest.json (file changed or corrupt)", path=file
            )
    it = pq.read_table(root / "items.parquet").to_pydict()
    items = {
        i: Item(i, t, d, tuple(g or ()), tuple(tg or ()), json.loads(a))
        for i, t, d, g, tg, a in zip(
            it["id"],
            it["title"],
            it["description"],
            it["genres"],
            it["tags"],
            it["attributes"],
            strict=True,
        )
    }
    if items_only:
        return Catalog(
            items,
            {},
            Interactions([], [], []),
            source=manifest.get("source", {}),
            stats=manifest.get("import_stats", {}),
        )
    us = pq.read_table(root / "users.parquet").to_pydict()
    users = {u: User(u, json.loads(a)) for u, a in zip(us["id"], us["attributes"], strict=True)}
    table = pq.read_table(root / "interactions.parquet")
    col = table.column
    inter = Interactions(
        np.array(col("user_id").to_pylist(), dtype=str) if len(table) else [],
        np.array(col("item_id").to_pylist(), dtype=str) if len(table) else [],
        col("timestamp").to_numpy(),
        col("rating").to_numpy(zero_copy_only=False).astype(np.float32),
        col("label").fill_null(NO_LABEL).to_numpy(zero_copy_only=False),
        np.array(col("event").fill_null("").to_pylist(), dtype=str) if len(table) else None,
    )
    dated = None
    if TAGS_FILE in listed:
        tags = pq.read_table(root / TAGS_FILE)
        dated = DatedTags(
            np.array(tags.column("item_id").to_pylist(), dtype=str).reshape(-1),
            np.array(tags.column("tag").to_pylist(), dtype=str).reshape(-1),
            tags.column("timestamp").to_numpy().astype(np.int64),
        )
    return Catalog(
        items,
        users,
        inter,
        source=manifest.get("source", {}),
        stats=manifest.get("import_stats", {}),
        tag_events=dated,
    )
