"""`duorank data`: import and inspect datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from duorank.cli.options import json_option, out_option


@click.group()
def data() -> None:
    """Import and inspect datasets."""


@data.group(name="import")
def data_import() -> None:
    """Import a dataset into a normalized dataset folder."""


def print_import(manifest: dict[str, Any], out: Path, as_json: bool) -> None:
    """The import summary: counts and import statistics."""
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
@out_option("Dataset folder to write.", "DATASET")
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows and count them.")
@json_option()
def import_movielens(path: Path, out: Path, skip_bad: bool, as_json: bool) -> None:
    """Import MovieLens (latest-small/25M CSV, 100K or 1M layout) from PATH."""
    from duorank.jobs import import_movielens as run

    print_import(run(path, out, skip_bad=skip_bad), out, as_json)


@data_import.command(name="mind")
@click.argument("path", type=click.Path(path_type=Path))
@out_option("Dataset folder to write.", "DATASET")
@click.option(
    "--negatives/--no-negatives",
    default=False,
    show_default=True,
    help="Also keep each impression's non-clicks as label-0 events (real negatives for a "
    "point-wise model; off by default: the ranking protocols hold out each user's last event).",
)
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows and count them.")
@json_option()
def import_mind(path: Path, out: Path, negatives: bool, skip_bad: bool, as_json: bool) -> None:
    """Import MIND (news.tsv and behaviors.tsv, e.g. MINDsmall_train) from PATH."""
    from duorank.jobs import import_mind as run

    print_import(run(path, out, negatives=negatives, skip_bad=skip_bad), out, as_json)


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
@out_option("Dataset folder to write.", "DATASET")
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows and count them.")
@click.option(
    "--duplicates",
    type=click.Choice(["error", "last"]),
    default="error",
    show_default=True,
    help="Duplicate item ids: fail, or keep the last row.",
)
@json_option()
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
    sources = [p for p in (items, interactions, users) if p is not None]
    print_import(save_catalog(catalog, out, inputs=sources), out, as_json)


@data.command(name="info")
@click.argument("path", type=click.Path(path_type=Path))
@json_option("Print the manifest and the summary as JSON.")
def data_info(path: Path, as_json: bool) -> None:
    """Summarise a dataset folder: counts, time span, rating scale, events per user."""
    from catalog.store import describe, read_manifest

    about = describe(path)
    if as_json:
        click.echo(json.dumps({"manifest": read_manifest(path), "summary": about}, indent=2))
        return
    click.echo(f"{about['path']} ({about['source']} import, {about['created_at']})")
    for key in ("users", "items", "interactions"):
        click.echo(f"  {key:<22} {about[key]:>10,}")
    click.echo(f"  {'events':<22} {about['first_event']} to {about['last_event']}")
    click.echo(f"  {'events per user':<22} {about['events_per_user_median']:>10g} (median)")
    if about["rated"]:
        click.echo(
            f"  {'ratings':<22} {about['rated']:>10,} from {about['rating_min']:g} to "
            f"{about['rating_max']:g} ({about['rating_values']} distinct values; 4 and up is "
            "a like)"
        )
    else:
        meaning = (
            "labels say which are likes" if about["labelled"] else "every event counts as a like"
        )
        click.echo(f"  {'ratings':<22} {'none':>10} ({meaning})")
    if about["labelled"]:
        click.echo(f"  {'labels (0/1)':<22} {about['labelled']:>10,}")
    for key, value in about["import_stats"].items():
        click.echo(f"  {key:<26} {value:>6,}")


COMMANDS = [data]
