"""Options several commands share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
AUTO = "auto"
"""rerank.cross_encoder.inference's names, repeated so that `duorank --help` imports no torch
(a test holds them equal)."""


def data_option(*, required: bool = True, help: str | None = None) -> Callable[[F], F]:
    """``--data DIR``: a dataset folder written by ``duorank data import``."""
    return click.option(
        "--data",
        "data_path",
        type=click.Path(path_type=Path),
        required=required,
        default=None,
        help=help or "Dataset folder (from `duorank data import`).",
    )


def out_option(help: str, marker: str) -> Callable[[F], F]:
    """``--out DIR``: the folder a command writes (always atomically). It is checked when the
    command line is read, before any work: only a new or empty folder, or one this kind of
    command made (``marker``: a name in :mod:`catalog.fsutil`, looked up only when the option
    is used, so `duorank --help` loads no catalog code), may be replaced."""

    def check(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        from catalog import fsutil
        from catalog.errors import DataError

        if value is not None:
            try:
                fsutil.check_replaceable(value, getattr(fsutil, marker))
            except DataError as exc:
                raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return click.option(
        "--out",
        type=click.Path(path_type=Path),
        required=True,
        callback=check,
        help=help + " An existing folder is replaced only when empty or made by this command.",
    )


def reranker_option(fn: F) -> F:
    """``--reranker DIR``: a trained reranker, else the home's."""
    return click.option(
        "--reranker",
        "reranker_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Reranker folder (default: HOME/models/reranker when present).",
    )(fn)


def seed_option(fn: F) -> F:
    """``--seed``: seeds the split and the training (Python, numpy, torch)."""
    return click.option("--seed", type=int, default=0, show_default=True)(fn)


def json_option(help: str = "Print the summary as one JSON line.") -> Callable[[F], F]:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def quick_option(help: str) -> Callable[[F], F]:
    """``--quick``: the command's CI size (each command says what it reduces)."""
    return click.option("--quick", is_flag=True, help=help)


def device_option(fn: F) -> F:
    """``--device``: where training runs."""
    return click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")(
        fn
    )


def backend_option(default: str = AUTO) -> Callable[[F], F]:
    """``--backend``: the reranker's inference backend; ``auto`` picks the fastest for this
    CPU (native bf16, else exported int8, else fp32)."""
    return click.option(
        "--backend",
        type=click.Choice((AUTO, *BACKENDS)),
        default=default,
        show_default=True,
        help="Reranker backend; auto: torch-bf16 on CPUs with native bf16, else onnx-int8 "
        "when exported, else torch.",
    )


def tower_option(help: str) -> Callable[[F], F]:
    """``--tower DIR``: a trained sequential tower (``duorank train tower``)."""
    return click.option(
        "--tower", "tower_path", type=click.Path(path_type=Path), default=None, help=help
    )


def root_option(help: str = "Index root folder.") -> Callable[[F], F]:
    """``--root DIR``: an index root, by default the home's (``HOME/index``), the one `serve`,
    `recommend` and the quickstart use."""

    def home_index(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
        if value is not None:
            return value
        from duorank.settings import Settings

        settings = ctx.find_object(Settings)
        return settings.layout.index if settings is not None else Path(".duorank") / "index"

    return click.option(
        "--root",
        type=click.Path(path_type=Path),
        default=None,
        callback=home_index,
        help=f"{help} [default: HOME/index]",
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    """Prints rows as an aligned table (the benchmarks' format)."""
    from benchmarks.contract import format_table

    click.echo(format_table(rows))


def step_logger() -> Callable[[str], None]:
    """Prints each step of a long job on stderr with the time since the job started
    (``[2 min 05 s] fitting the ranker``), so a log shows where the time goes."""
    import time

    from catalog.progress import duration

    started = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{duration(time.monotonic() - started)}] {message}", err=True)

    return say
