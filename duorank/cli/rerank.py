"""`duorank rerank`: utilities for a trained reranker."""

from __future__ import annotations

from pathlib import Path

import click

from duorank.cli.options import backend_option, data_option, seed_option, tower_option
from duorank.settings import Settings


@click.group(name="rerank")
def rerank_group() -> None:
    """Reranker utilities."""


@rerank_group.command(name="export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--no-int8", is_flag=True, help="Skip the int8-quantized model.")
def rerank_export(folder: Path, no_int8: bool) -> None:
    """Export a trained reranker to ONNX (fp32 and dynamic int8) under FOLDER/onnx/."""
    from rerank.cross_encoder.export import export_onnx

    for path in export_onnx(folder, quantize=not no_int8):
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@rerank_group.command(name="calibrate")
@click.argument("folder", type=click.Path(path_type=Path))
@data_option(help="Dataset folder (its validation split is what the fusion is fitted on).")
@tower_option("The trained tower the reranker learned from (when it did).")
@click.option("--val-users", type=click.IntRange(min=1), default=None)
@seed_option
@click.pass_obj
def rerank_calibrate(
    settings: Settings,
    folder: Path,
    data_path: Path,
    tower_path: Path | None,
    val_users: int | None,
    seed: int,
) -> None:
    """Refit a binary reranker's validation fusion (text logit + features), no retraining."""
    from duorank.jobs import recalibrate_reranker

    card = recalibrate_reranker(
        settings, folder, data_path, tower=tower_path, val_users=val_users, seed=seed
    )
    fusion = card["calibration"]
    click.echo(f"fusion: text x{fusion['text_scale']:.3f}, features {fusion['feature_weights']}")
    click.echo(f"validation before: {fusion['before']}")
    click.echo(f"validation after:  {fusion['after']}")
    click.echo(f"saved {folder} (run `duorank rerank export {folder}` again for ONNX)")


@rerank_group.command(name="cache-items")
@click.argument("folder", type=click.Path(path_type=Path))
@data_option(help="Dataset folder whose items' states are computed.")
@backend_option()
@click.pass_obj
def rerank_cache_items(settings: Settings, folder: Path, data_path: Path, backend: str) -> None:
    """Compute and store the item states of a reranker trained with --item-layers for every
    catalog item (after a nightly index build; serving computes only what is missing). States
    are kept per backend: use the one `serve` runs (both default to auto)."""
    from duorank.jobs import cache_item_states

    done = cache_item_states(settings, folder, data_path, backend)
    click.echo(
        f"{done['items']} items: {done['written']} states written, {done['already_cached']} "
        f"already cached ({done['seconds']:.1f} s; {done['float16_bytes_per_item']:,.0f} bytes "
        "of float16 states per item)"
    )


COMMANDS = [rerank_group]
