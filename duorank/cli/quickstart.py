"""`duorank quickstart`: the main job end to end on bundled data, through the same job
functions the other commands call."""

from __future__ import annotations

from pathlib import Path

import click

from duorank.settings import Settings

QUICKSTART_TOWER_EPOCHS = 8
"""The reduced tower training (the full run early-stops later)."""


@click.command()
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
    "--retrain",
    is_flag=True,
    help="Train the tower and the ranking stage again even if they exist.",
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

    import -> train the sequential tower (reduced) -> train the ranking stage over its and
    three other sources' candidates -> build the index with the tower and the stage's tables
    -> recommend.
    """
    from duorank import jobs
    from duorank.cli.data import print_import
    from duorank.cli.index import print_build
    from duorank.cli.serve import print_recommendation
    from duorank.cli.train import print_ranker, print_tower
    from indexer import BuildConfig
    from rerank.ranker.train import RankingStageArgs
    from retrieval.sequential import SequentialConfig

    home = settings.layout
    dataset = home.dataset(data_path.name)
    click.echo(f"[1/5] importing {data_path} -> {dataset}")
    print_import(jobs.import_movielens(data_path, dataset), dataset, as_json=False)

    if retrain or home.trained_tower() is None:
        click.echo(f"\n[2/5] training the sequential tower ({tower_epochs} epochs) -> {home.tower}")
        tower, card = jobs.train_tower(
            settings, dataset, home.tower, SequentialConfig(epochs=tower_epochs)
        )
        print_tower(home.tower, tower, card)
    else:
        click.echo(f"\n[2/5] tower already trained at {home.tower} (--retrain to redo)")

    if retrain or home.trained_ranker() is None:
        click.echo(f"\n[3/5] training the ranking stage over every source -> {home.ranker}")
        card = jobs.train_ranker(
            settings,
            dataset,
            home.tower,
            home.ranker,
            RankingStageArgs(),
            progress=lambda m: click.echo(m, err=True),
        )
        print_ranker(card, home.ranker)
    else:
        click.echo(f"\n[3/5] ranking stage already trained at {home.ranker} (--retrain to redo)")

    click.echo(f"\n[4/5] building the index under {home.index} (cached vectors are reused)")
    job = jobs.IndexJob(home.index, data=dataset, tower=home.tower, ranker=home.ranker)
    print_build(jobs.build_index(settings, job, BuildConfig(wait=True)), "flat", home.index, False)

    click.echo(f"\n[5/5] recommendations for user {user_id}")
    serving = jobs.ServingJob(dataset, home.index, home.trained_reranker(), ranker=home.ranker)
    with jobs.open_recommender(settings, serving) as recommender:
        print_recommendation(recommender.recommend(user_id, k=10, candidates=100))


COMMANDS = [quickstart]
