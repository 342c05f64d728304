"""`duorank index`: build, verify, list and roll back published index versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from duorank.cli.errors import EXIT_USAGE, EXIT_VERIFY
from duorank.cli.options import json_option, root_option, tower_option
from duorank.settings import Settings

if TYPE_CHECKING:
    from indexer import IndexRoot


@click.group()
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
@root_option()
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
    "--spill-items",
    type=click.IntRange(min=0),
    default=1_000_000,
    show_default=True,
    metavar="N",
    help="Catalogs of more than N items keep their vectors in staging files (memory-mapped, "
    "never published) and fill the index shard by shard, so the build's memory stays near "
    "the index's own.",
)
@tower_option(
    "A trained sequential tower (`duorank train tower`): indexed with the version and "
    "used to embed users when serving."
)
@click.option(
    "--ranker",
    "ranker_path",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="A trained ranking stage (`duorank train ranker`): fit its tables (co-visitation, "
    "ALS at its settings, per-item counts by day, text vectors) on the dataset's "
    "interactions, measure the first stage's exposure, and publish them inside the version, "
    "so serving swaps them with the index and needs no user's history (needs --data).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where items are encoded: this process, or Ray Data actors (pip install "
    "duorank[ray]); both publish the same version.",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --engine ray: 'auto' or ray://host:10001 joins a running cluster (its nodes "
    "need the model and a Redis they can reach: --redis-url); default: a local Ray.",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="With --engine ray: encoder actors (each loads the model once; a GPU each when the "
    "cluster has GPUs).",
)
@json_option("Print the build summary as one JSON object on the last line.")
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
    spill_items: int,
    tower_path: Path | None,
    ranker_path: Path | None,
    engine: str,
    ray_address: str | None,
    ray_workers: int,
    as_json: bool,
) -> None:
    """Build a new index version from the catalog and publish it atomically."""
    from duorank.jobs import IndexJob, build_index
    from indexer import BuildConfig

    if (data_path is None) == (items_path is None):
        raise click.UsageError("give exactly one of --data DIR or --items FILE")
    if ranker_path is not None and data_path is None:
        raise click.UsageError("--ranker needs --data DIR (its tables come from the interactions)")
    config = BuildConfig(
        index_type=index_type,
        index_params=_index_params(params),
        keep=keep,
        wait=wait,
        lock_timeout=lock_timeout,
        verify_cache_sample=verify_cache_sample,
        spill_items=spill_items,
    )
    runner = None
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.UsageError("--engine ray needs Ray: pip install 'duorank[ray]'") from None
        from indexer.ray_engine import RayEngine

        if ray_address not in (None, "", "local") and not settings.redis_url:
            raise click.UsageError(
                "--ray-address: a Ray cluster's nodes cannot reach the embedded Redis; give "
                "--redis-url with a Redis they can reach"
            )
        try:
            runner = RayEngine(
                address=ray_address, workers=ray_workers, redis_url=settings.redis_url or None
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    elif ray_address is not None:
        raise click.UsageError("--ray-address needs --engine ray")
    job = IndexJob(
        root, data_path, items_path, mapping, duplicates, model, tower_path, ranker_path, runner
    )
    print_build(build_index(settings, job, config), index_type, root, as_json)


def print_build(manifest: dict[str, Any], index_type: str, root: Path, as_json: bool) -> None:
    """The build summary: what was encoded, reused, added, changed and removed."""
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
        return
    from catalog.progress import duration

    click.echo(f"published {summary['version']} under {root}")
    for key in ("items", "encoded", "cache_hits", "skipped_empty", "added", "changed", "removed"):
        click.echo(f"  {key:<14} {summary[key]:>8,}")
    seconds = build["seconds"]
    steps = ", ".join(f"{name} {duration(s)}" for name, s in seconds.items())
    click.echo(f"  {'time':<14} {duration(sum(seconds.values())):>8} ({steps})")
    audit = summary["cache_audit"]
    if audit is not None:
        verdict = "trusted" if audit["trusted"] else "NOT trusted: every item re-encoded"
        click.echo(
            f"  cache audit    {audit['mismatched']} of {audit['checked']} cached vectors "
            f"differ from the model ({verdict})"
        )


def _root(root: Path) -> IndexRoot:
    from indexer import IndexRoot

    if not root.is_dir():
        click.echo(f"error: index root not found: {root}", err=True)
        raise SystemExit(EXIT_USAGE)
    return IndexRoot(root)


@index.command(name="verify")
@root_option()
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
@root_option()
@json_option("One JSON object per version.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip verifying each version (checksums of every file: slow for large indexes).",
)
def index_list(root: Path, as_json: bool, no_verify: bool) -> None:
    """List published versions, oldest first; * marks CURRENT, FAILED a damaged version."""
    from catalog.errors import printable
    from indexer import VerifyError

    store = _root(root)
    try:
        current = store.current()
    except VerifyError as exc:
        click.echo(f"warning: {exc}", err=True)
        current = None
    if current is not None and current not in store.versions():
        click.echo(
            f"warning: {store.current_file} names '{printable(current)}', not a published version",
            err=True,
        )
    unpublished = set(store.unpublished())
    for version in store.versions():
        try:
            m = store.manifest(version)
        except Exception as exc:  # a damaged version is still listed
            m = {"error": str(exc)}
        problem = None if no_verify else store.check(version)
        row = {
            "version": version,
            "current": version == current,
            "published": version not in unpublished,
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
            if version in unpublished:
                status += "  UNPUBLISHED (a build stopped before CURRENT named it)"
            click.echo(
                f"{mark} {version}  {row['created_at']}  {row['items']} items  "
                f"{row['index']}  model {row['model_fingerprint']}{status}"
            )


@index.command(name="rollback")
@click.argument("version", required=False)
@root_option()
def index_rollback(version: str | None, root: Path) -> None:
    """Point CURRENT at VERSION (default: the version before CURRENT), after verifying it."""
    from catalog.errors import printable
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
                    f"{root}: no version before '{printable(current)}' to roll back to "
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


COMMANDS = [index]
