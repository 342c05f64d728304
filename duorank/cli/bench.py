"""`duorank bench`: the speed suites, each printing a table and writing its JSON record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from benchmarks.registry import BENCHMARKS, run_benchmark
from duorank.cli.options import quick_option
from duorank.settings import Settings


@click.command(epilog="Names: " + ", ".join(BENCHMARKS) + ".")
@click.argument("name", type=click.Choice(list(BENCHMARKS)), metavar="NAME")
@quick_option("Small sizes, for CI.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON file to write (default benchmarks/results/NAME.json).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="MovieLens folder the suites read (default: the bundled ml-latest-small).",
)
@click.pass_obj
def bench(
    settings: Settings, name: str, quick: bool, output: Path | None, data_path: Path | None
) -> None:
    """Run benchmark NAME, print its table and write its JSON record.

    NAME is one of the registered suites (named below). The home and Redis
    settings apply.
    """
    from benchmarks.contract import BenchContext

    ctx = BenchContext(home=settings.home, redis_url=settings.redis_url or None, output=output)
    if data_path is not None:
        ctx = replace(ctx, data=data_path)
    report = run_benchmark(name, quick, ctx)
    click.echo(report.render())
    path = report.write(output)
    click.echo(f"\nwritten {path}")


COMMANDS = [bench]
