"""`duorank eval`: the offline evaluation (full ranking, baselines, intervals, report)."""

from __future__ import annotations

from pathlib import Path

import click

from duorank.cli.options import (
    backend_option,
    data_option,
    print_table,
    quick_option,
    reranker_option,
    seed_option,
    step_logger,
)
from duorank.settings import Settings

HEADLINE = (
    "ndcg@10",
    "ndcg@10_vs_best_baseline",
    "recall@10",
    "mrr@10",
    "recall@100",
    "auc",
    "cold_recall@100",
)


@click.command(name="eval")
@data_option()
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="report.json to write (a Markdown table and PNG plots go beside it).",
)
@reranker_option
@backend_option("torch")  # the committed report's configuration
@click.option(
    "--retriever",
    "retriever_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A fine-tuned text model (`duorank train retriever`) to evaluate too.",
)
@click.option(
    "--trained-tower/--no-trained-tower",
    default=True,
    show_default=True,
    help="Train and evaluate the sequential tower over cached item vectors.",
)
@seed_option
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
@click.option(
    "--protocol",
    type=click.Choice(["duorank", "sasrec"]),
    default="duorank",
    show_default=True,
    help="duorank's own leave-one-out, or the SASRec/BERT4Rec papers' (5-core filter, ties "
    "in file order): the one their published figures use (docs/baselines.md).",
)
@quick_option("100 users and small grids, for CI.")
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
    protocol: str,
    quick: bool,
) -> None:
    """Offline evaluation: full ranking, baselines, bootstrap intervals, report and plots."""
    from benchmarks.evaluation import write_report
    from duorank.jobs import EvalJob, evaluate

    say = step_logger()
    job = EvalJob(
        data_path,
        reranker_path,
        backend,
        retriever_path,
        trained_tower,
        seed,
        seeds,
        rerank_als,
        quick,
        progress=say,
        protocol=protocol,
    )
    report = evaluate(settings, job)
    say(f"evaluation done: {len(report['methods'])} methods")
    for path in write_report(report, output):
        click.echo(f"wrote {path}")
    print_table(
        [
            {"method": name, **{k: m.get(k) for k in HEADLINE}}
            for name, m in report["methods"].items()
        ]
    )


COMMANDS = [eval_cmd]
