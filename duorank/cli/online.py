"""`duorank users` and `duorank events`: the online user store, its live events and the
nightly fold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from duorank.cli.options import data_option, json_option
from duorank.settings import Settings


def _dataset(settings: Settings, data: Path | None) -> Path:
    return data or settings.layout.dataset()


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    for key, value in summary.items():
        click.echo(f"  {key:<14} {value:,}" if isinstance(value, int) else f"  {key:<14} {value}")


@click.group()
def users() -> None:
    """The online user store in Redis (`serve --user-store` reads it)."""


@users.command(name="publish")
@data_option(required=False, help="Dataset folder (default: HOME/datasets/ml-latest-small).")
@json_option()
@click.pass_obj
def users_publish(settings: Settings, /, data_path: Path | None, as_json: bool) -> None:
    """Write every user's profile and newest events to the store (the nightly step after an
    index build; live events already there stay)."""
    from duorank.live import publish_users

    _print(publish_users(settings, _dataset(settings, data_path), click.echo), as_json)


@click.group()
def events() -> None:
    """Live events: ingest them into the user store, fold them into the dataset."""


@events.command(name="ingest")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@data_option(required=False, help="Dataset folder whose items the events must name.")
@json_option()
@click.pass_obj
def events_ingest(settings: Settings, /, file: Path, data_path: Path | None, as_json: bool) -> None:
    """Ingest a JSON-lines FILE of events ({"event_id", "user_id", "item_id", "timestamp",
    "rating", "label"} per line, as POST /events takes them). Every line is checked first;
    an event id seen before is counted as a duplicate, not ingested twice."""
    from duorank.live import ingest_file

    _print(ingest_file(settings, file, _dataset(settings, data_path)), as_json)


@events.command(name="fold")
@data_option(required=False, help="Dataset folder to fold the events into.")
@json_option()
@click.pass_obj
def events_fold(settings: Settings, /, data_path: Path | None, as_json: bool) -> None:
    """Move every live event into the dataset exactly once (safe to re-run after a crash);
    then retrain and rebuild from it as every night."""
    from duorank.live import fold_events

    _print(fold_events(settings, _dataset(settings, data_path), click.echo), as_json)


COMMANDS = [users, events]
