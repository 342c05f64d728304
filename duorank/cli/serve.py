"""`duorank recommend` and `duorank serve`: the online path, from a terminal or over HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from duorank.cli.options import (
    backend_option,
    data_option,
    print_table,
    reranker_option,
    root_option,
)
from duorank.settings import Settings

log = logging.getLogger("duorank")
F = TypeVar("F", bound=Callable[..., Any])


def serving_options(fn: F) -> F:
    """--data, --root, --reranker, --ranker, --backend and --text-users, shared by both
    commands."""
    for option in reversed(
        (
            data_option(
                required=False, help="Dataset folder (default: HOME/datasets/ml-latest-small)."
            ),
            root_option(required=False, help="Index root (default: HOME/index)."),
            reranker_option,
            click.option(
                "--ranker",
                "ranker_path",
                type=click.Path(path_type=Path, exists=True, file_okay=False),
                default=None,
                help="Ranking stage folder (`train ranker`; default: HOME/models/ranker when "
                "present). It orders every source's candidates where its card chose it on "
                "validation; the reranker then only scores P(like) of the k returned.",
            ),
            click.option("--no-ranker", is_flag=True, help="Serve without the ranking stage."),
            backend_option(),
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


@click.command()
@click.option("--user", "user_id", required=True, help="User id from the dataset.")
@click.option("-k", "k", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option(
    "--candidates",
    type=click.IntRange(min=1, max=5000),
    default=100,
    show_default=True,
    help="Retrieved candidates passed to the reranker.",
)
@serving_options
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
    ranker_path: Path | None,
    no_ranker: bool,
    backend: str,
    text_users: bool,
    as_json: bool,
) -> None:
    """Recommend items for a user: retrieve candidates, rerank, print a table."""
    from dataclasses import asdict

    from duorank.jobs import ServingJob, open_recommender

    job = ServingJob(
        data_path,
        root,
        reranker_path,
        backend,
        text_users,
        ranker=ranker_path,
        use_ranker=not no_ranker,
    )
    with open_recommender(settings, job) as recommender:
        result = recommender.recommend(user_id, k=k, candidates=max(candidates, k))
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    print_recommendation(result)


def print_recommendation(result: Any) -> None:
    """A recommendation as a table with its version, fallback and stage timings."""
    click.echo(
        f"index version {result.index_version}; reranked: {result.reranked}"
        + (f"; fallback: {result.fallback}" if result.fallback else "")
    )
    print_table(
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
    click.echo(
        "timings (ms): " + ", ".join(f"{name} {ms:.1f}" for name, ms in result.timings_ms.items())
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@serving_options
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
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The evaluation report (`duorank eval` JSON) the explorer page shows "
    "(default: the committed ml-latest-small report, when installed from a checkout).",
)
@click.option(
    "--public-demo",
    is_flag=True,
    help="The explorer page's data and /recommend answer without the token (a read-only "
    "demo; /score and /metrics still need it).",
)
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    data_path: Path | None,
    root: Path | None,
    reranker_path: Path | None,
    ranker_path: Path | None,
    no_ranker: bool,
    backend: str,
    text_users: bool,
    max_in_flight: int,
    max_queue: int,
    reload_interval: float,
    strict: bool,
    report: Path | None,
    public_demo: bool,
) -> None:
    """Serve the HTTP API and the explorer page at / (token from DUORANK_API_TOKEN, if set)."""
    import uvicorn

    import benchmarks
    from duorank.jobs import ServingJob, open_recommender
    from serving.http import ServerLimits, create_app

    if report is not None and not report.is_file():
        raise click.BadParameter(f"{report}: no such file", param_hint="--report")

    job = ServingJob(
        data_path,
        root,
        reranker_path,
        backend,
        text_users,
        fallback=not strict,
        ranker=ranker_path,
        use_ranker=not no_ranker,
    )
    with open_recommender(settings, job) as recommender:
        limits = ServerLimits(
            max_in_flight=max_in_flight, max_queue=max_queue, reload_interval_s=reload_interval
        )
        app = create_app(
            recommender,
            token=settings.api_token,
            limits=limits,
            report=report or _committed_report(Path(benchmarks.__file__).parent),
            public_demo=public_demo,
        )
        log.info(
            "serving index %s on http://%s:%d (auth: %s); the explorer page is at /",
            recommender.index_version,
            host,
            port,
            ("bearer token" if settings.api_token else "off")
            + (", public demo" if public_demo else ""),
        )
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


def _committed_report(benchmarks_dir: Path) -> Path | None:
    """The committed ml-latest-small report, where the benchmarks' results folder exists (an
    install from a checkout)."""
    path = benchmarks_dir / "results" / "eval-ml-latest-small.json"
    return path if path.is_file() else None


COMMANDS = [recommend, serve]
