"""`duorank train`: the four trainable parts, each named for what it trains. The options' defaults
are the training dataclasses' own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from duorank.cli.options import (
    data_option,
    device_option,
    out_option,
    print_table,
    quick_option,
    seed_option,
    step_logger,
    tower_option,
)
from duorank.settings import Settings
from rerank.cross_encoder.training_args import LOSSES, QUICK_STEPS, RerankerTrainArgs
from retrieval.sequential import QUICK_EPOCHS, SequentialConfig

# The options' defaults are the dataclasses' own (both modules load without torch), so a
# command run without flags trains the measured configuration the library's callers get.
TOWER = SequentialConfig()
RERANKER = RerankerTrainArgs()


@click.group(short_help="Train the first stage, the ranking stage or the cross-encoder.")
def train() -> None:
    """Train a model: `tower` (the first stage, minutes on a CPU), `ranker` (the ranking
    stage over every source's candidates: the served default where it beats the first stage
    on validation), `reranker` (the cross-encoder, a second stage over text pairs), or
    `retriever` (full fine-tuning of the text model, a GPU job)."""


@train.command(name="retriever", short_help="Fine-tune the text model itself (a GPU job).")
@data_option()
@out_option("Model folder to write (sentence-transformers format + duorank-card.json).", "MODEL")
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
@seed_option
@quick_option("CI size: 20 steps, 5 pairs per user, 100 validation users.")
@device_option
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
    """Fine-tune the text model itself (the sentence-transformer) with in-batch negatives.

    Every transformer weight is trained: a GPU job. Its output is a sentence-transformers
    folder to build an index with (`index build --model`). For the default first stage on a
    CPU, see `train tower`.
    """
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
    print_table(rows)
    click.echo(f"saved {out} ({card['steps']} steps, {card['train_seconds']:.0f} s)")


@train.command(
    name="tower", short_help="Train the sequential user tower (the default first stage)."
)
@data_option()
@out_option("Tower folder to write (tower.json + model.safetensors).", "MODEL")
@click.option("--dim", type=click.IntRange(min=2), default=TOWER.dim, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=TOWER.epochs,
    show_default=True,
    help="At most; early stopping on validation Recall@10 usually ends sooner.",
)
@click.option("--no-ids", is_flag=True, help="Text only: no per-item ID vectors.")
@click.option(
    "--no-collab",
    is_flag=True,
    help="No collaborative (ALS) block: the tower's own score and the cold-item blend only.",
)
@seed_option
@quick_option(f"CI size: {QUICK_EPOCHS} epochs.")
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
    """Train the sequential user tower (the default first stage) on cached item vectors.

    The text model stays frozen: a small adaptor, per-item ID vectors, a GRU over the user's
    recent items and an ALS block learn on its cached vectors, in minutes on a CPU. Publish it
    with `index build --tower`.
    """
    from dataclasses import replace

    from duorank.jobs import train_tower

    cfg = replace(TOWER, dim=dim, epochs=epochs, use_ids=not no_ids, seed=seed)
    if quick:
        cfg = cfg.reduced()
    if no_collab:
        cfg = replace(cfg, collab_grid=())
    tower, card = train_tower(settings, data_path, out, cfg, seed=seed)
    print_tower(out, tower, card)


def print_tower(out: Path, tower: Any, card: dict[str, Any]) -> None:
    """Where the tower went, its validation figure and the blends chosen on validation."""
    from catalog.progress import duration

    click.echo(
        f"saved {out}: validation Recall@10 {card['best_recall@10']:.4f} at epoch "
        f"{card['best_epoch']}; cold blend {tower.cfg.cold_blend:g}, collaborative "
        f"{tower.cfg.collab_weight:g} (trained in {duration(card['train_seconds'])})"
    )


@train.command(
    name="reranker", short_help="Fine-tune the cross-encoder reranker (the second stage)."
)
@data_option()
@out_option("Reranker folder to write.", "MODEL")
@click.option("--model", default=None, help="Backbone folder (default: bundled MiniLM).")
@click.option(
    "--head",
    type=click.Choice(["binary", "rating"]),
    default=RERANKER.head,
    show_default=True,
    help="Sigmoid like/click head, or softmax over rating levels.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=RERANKER.epochs, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=RERANKER.batch_size, show_default=True
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=RERANKER.lr,
    show_default=True,
    help="Backbone learning rate.",
)
@click.option(
    "--head-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=RERANKER.head_lr,
    show_default=True,
    help="Learning rate of the heads over the pooled text and the scalar features.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=0),
    default=RERANKER.max_steps,
    show_default=True,
    help="Optimiser steps (the measured configuration); 0: whole epochs (--epochs).",
)
@click.option(
    "--targets-per-user",
    type=click.IntRange(min=1),
    default=RERANKER.targets_per_user,
    show_default=True,
)
@click.option(
    "--random-negatives",
    type=click.IntRange(min=0),
    default=RERANKER.random_negatives,
    show_default=True,
)
@click.option(
    "--hard-negatives",
    type=click.IntRange(min=0),
    default=RERANKER.hard_negatives,
    show_default=True,
)
@click.option(
    "--threshold",
    type=float,
    default=RERANKER.threshold,
    show_default=True,
    help="Rating at or above = like.",
)
@click.option(
    "--no-features",
    is_flag=True,
    help="Text only: no retrieval score, popularity or mean-rating inputs.",
)
@click.option(
    "--val-users",
    type=click.IntRange(min=1),
    default=RERANKER.val_users,
    show_default=True,
    help="Validation users (seeded sample); only lists holding the held-out item are scored.",
)
@tower_option(
    "The trained sequential tower that serves the first stage (`duorank train tower`): "
    "its candidates are the hard negatives and its score the retrieval feature. "
    "Default: zero-shot pooling of recent liked item vectors."
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
    default=RERANKER.attention,
    show_default=True,
    help="user_prefix: item tokens attend to the user's, not the reverse, so serving encodes "
    "the user once per call; full: a standard cross-encoder (any backbone).",
)
@click.option(
    "--freeze-layers",
    type=click.IntRange(min=0),
    default=RERANKER.freeze_layers,
    show_default=True,
    help="Keep the backbone's embeddings and first N layers as pretrained: backward stops "
    "above them (cheaper steps); 0 tunes all.",
)
@click.option(
    "--item-layers",
    type=click.IntRange(min=0),
    default=RERANKER.item_layers,
    show_default=True,
    help="With user_prefix: the first N layers read the item alone, so serving keeps each "
    "item's states after them in Redis and runs only the layers above per call; 0: none.",
)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the backbone's first N transformer layers: a shallower, faster "
    "cross-encoder (with --teacher, a distilled one). Default: all.",
)
@click.option(
    "--teacher",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A trained reranker folder: its P(like) of each training pair is the target "
    "(distillation) instead of the 0/1 label.",
)
@click.option(
    "--no-calibrate",
    is_flag=True,
    help="Keep the trained head as it learned: no validation fusion (which can give the text "
    "no weight); for the text's own logit, e.g. as a ranking-stage feature.",
)
@click.option(
    "--loss",
    type=click.Choice(list(LOSSES)),
    default=RERANKER.loss,
    show_default=True,
    help="pointwise: cross-entropy of each pair; listwise: softmax cross-entropy of each liked "
    "target against its own negatives (raise --hard-negatives for longer lists).",
)
@click.option(
    "--user-ratings/--no-user-ratings",
    default=RERANKER.user_ratings,
    show_default=True,
    help="Follow each title in the user text with the user's stars.",
)
@seed_option
@quick_option(
    f"Reduced: {QUICK_STEPS} steps, 2 targets/user, 20 validation candidates (all validation "
    "users: fewer leave the fusion too little to tie the probability to the item)."
)
@device_option
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
    item_layers: int,
    layers: int | None,
    teacher: Path | None,
    no_calibrate: bool,
    loss: str,
    user_ratings: bool,
    seed: int,
    quick: bool,
    device: str | None,
) -> None:
    """Fine-tune the point-wise cross-encoder reranker (the second stage) on the training
    split, over the first stage's candidates."""
    from dataclasses import replace

    from duorank.jobs import RerankerJob, train_reranker

    cfg = replace(
        RERANKER,
        head=head,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        seed=seed,
        max_steps=max_steps or None,
        targets_per_user=targets_per_user,
        random_negatives=random_negatives,
        hard_negatives=hard_negatives,
        threshold=threshold,
        features=() if no_features else RERANKER.features,
        val_users=val_users,
        eval_before=eval_before,
        attention=attention,
        freeze_layers=freeze_layers,
        item_layers=item_layers,
        layers=layers,
        teacher=str(teacher) if teacher is not None else None,
        loss=loss,
        user_ratings=user_ratings,
        calibrate=not no_calibrate,
    )
    if quick:  # --quick's own step count unless --max-steps was given
        given = click.get_current_context().get_parameter_source("max_steps")
        cfg = (
            cfg.reduced()
            if given is click.core.ParameterSource.DEFAULT
            else cfg.reduced(cfg.max_steps)
        )
    job = RerankerJob(data_path, out, tower_path, model, resume, device, seed)
    print_reranker_card(train_reranker(settings, job, cfg), out)


@train.command(
    name="ranker",
    short_help="Train the ranking stage over several candidate sources (LightGBM).",
)
@data_option()
@out_option("Ranker folder to write (ranker.txt + ranker.json).", "RANKER")
@click.option(
    "--tower",
    "tower_path",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="The trained sequential tower (`train tower`): the first stage it corrects.",
)
@click.option(
    "--per-user",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Training targets per user (their newest training events).",
)
@click.option(
    "--min-history",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Events a user keeps before their first target (shorter histories give no list).",
)
@click.option(
    "--cold-dropout",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of rows read as an item with no events in a cold copy of each training list, "
    "so the trees learn to rank new arrivals by their content (DropoutNet; 0: no copies).",
)
@click.option(
    "--short-histories",
    type=click.FloatRange(min=0.0, max=1.0),
    default=0.0,
    show_default=True,
    help="Share of the training lists learned again with the history cut to its newest one "
    "to three events, so the trees learn users who have just arrived (0: none).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="User folds that choose the number of trees, every list held out once (1: one "
    "held-out fifth of the users).",
)
@click.option(
    "--bag/--no-bag",
    default=True,
    show_default=True,
    help="Serve the mean of the fold models (--no-bag: one model refitted on every list).",
)
@seed_option
@quick_option("CI size: 100 trees at most.")
@click.pass_obj
def train_ranker_cmd(
    settings: Settings,
    data_path: Path,
    out: Path,
    tower_path: Path,
    per_user: int,
    min_history: int,
    cold_dropout: float,
    short_histories: float,
    folds: int,
    bag: bool,
    seed: int,
    quick: bool,
) -> None:
    """Train the ranking stage: candidates from the tower, co-visitation, ALS and recent
    popularity, merged; a LightGBM lambdarank ranker learns the correction to the tower's score
    from features one inner product cannot express, on lists built by a first stage that never
    saw their targets. It serves only if it beats the tower's order on validation by more than
    one standard error (the card says which serves).
    """
    from dataclasses import replace

    from duorank.jobs import train_ranker
    from rerank.ranker.model import RankerConfig
    from rerank.ranker.train import RankingStageArgs

    args = RankingStageArgs(
        per_user=per_user,
        min_history=min_history,
        short_histories=short_histories,
        ranker=RankerConfig(seed=seed, cold_dropout=cold_dropout, folds=folds, bag=bag),
    )
    if quick:
        args = replace(args, ranker=replace(args.ranker, max_rounds=100))
    card = train_ranker(
        settings,
        data_path,
        tower_path,
        out,
        args,
        seed=seed,
        progress=step_logger(),
    )
    print_ranker(card, out)


def print_ranker(card: dict[str, Any], out: Path) -> None:
    """The validation figures behind the served choice, and where the stage went."""
    from catalog.progress import duration

    choice = card["choice"]
    click.echo(
        f"saved {out}: validation NDCG@10 {choice['ndcg@10']:.4f} vs the tower's "
        f"{choice['first_stage_ndcg@10']:.4f} ({choice['minus_first_stage']:+.4f}, one "
        f"standard error {choice['minus_first_stage_se']:.4f}): serves the "
        f"{choice['served'].replace('_', ' ')}; {card['rounds']} trees{_folds(card)} "
        f"(trained in {duration(sum(card['seconds'].values()))})"
    )
    if "cold_view_ndcg@10" in choice:  # cards written before cold dropout lack it
        click.echo(
            f"  as new arrivals (every candidate read with no events): NDCG@10 "
            f"{choice['cold_view_ndcg@10']:.4f} vs the tower's {choice['first_stage_ndcg@10']:.4f}"
        )
    if "short_view_ndcg@10" in choice:  # cards written before short copies lack it
        click.echo(
            f"  as new users (every history cut to its newest 1 to 3 events): NDCG@10 "
            f"{choice['short_view_ndcg@10']:.4f} vs the tower's "
            f"{choice['short_view_first_stage_ndcg@10']:.4f}"
        )
    like = card.get("like")
    if isinstance(like, dict):
        figures = (
            f"validation AUC {like['validation_auc']:.3f}, ECE {like['validation_ece']:.3f}"
            if "validation_auc" in like
            else "no validation AUC (the validation events are all likes or all dislikes)"
        )
        click.echo(f"P(like) head: {like['rounds']} trees; {figures}")
    elif isinstance(like, str):
        click.echo(f"P(like) head: {like}")


def _folds(card: dict[str, Any]) -> str:
    """How the card's trees were chosen and served, in words ('' for older cards)."""
    folds = card.get("folds")
    if not isinstance(folds, int) or folds < 2:
        return ""
    served = "the mean of the fold models" if card.get("bagged") else "one refit"
    return f" chosen on {folds} user folds, served as {served}"


def print_reranker_card(card: dict[str, Any], out: Path) -> None:
    """Validation per epoch, the calibration, and where the model went."""
    before = card["before_training"]
    rows = [{"model": "before training", **before}] if before else []
    rows += [
        {
            "model": f"epoch {e['epoch']}",
            **{k: v for k, v in e.items() if k not in ("epoch", "steps")},
        }
        for e in card["epochs"]
    ]
    print_table(rows)
    click.echo(f"calibration: {card['calibration']}")
    click.echo(f"saved {out} ({card['steps']} steps, {card['train_seconds']:.0f} s)")


COMMANDS = [train]
