"""Defaults are defined once: every `duorank train` option named like a field of the command's
training dataclass defaults to that field's value, so a command without flags trains what a
library caller of the dataclass trains (and what the README measured)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from typing import Any

import click
import pytest

from duorank.cli import cli
from rerank.cross_encoder.training_args import RerankerTrainArgs
from rerank.ranker.train import RankingStageArgs
from retrieval.sequential import SequentialConfig
from retrieval.train import RetrieverTrainConfig
from tests.conftest import REPO

COMMANDS = {
    "tower": SequentialConfig(),
    "reranker": RerankerTrainArgs(),
    "ranker": RankingStageArgs(),
    "retriever": RetrieverTrainConfig(),
}


def _command(name: str) -> click.Command:
    group = cli.commands["train"]
    assert isinstance(group, click.Group)
    return group.commands[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_train_option_defaults_to_its_dataclass_field(name: str) -> None:
    args: Any = COMMANDS[name]
    nested = [args.ranker] if name == "ranker" else []  # the LightGBM settings, one level down
    owner = {f.name: a for a in (args, *nested) for f in fields(a)}
    checked = []
    for param in _command(name).params:
        flag = isinstance(param, click.Option) and param.is_flag  # a switch, not a value
        if param.name not in owner or param.name == "seed" or flag:
            continue
        assert param.default == getattr(owner[param.name], param.name), (name, param.name)
        checked.append(param.name)
    assert checked, f"train {name}: no option matches a field of {type(args).__name__}"


def test_the_reduced_runs_are_defined_once() -> None:
    assert SequentialConfig().reduced().epochs < SequentialConfig().epochs
    reduced = RerankerTrainArgs().reduced()
    assert reduced.max_steps is not None and reduced.max_steps < RerankerTrainArgs().max_steps  # type: ignore[operator]
    assert RerankerTrainArgs(max_steps=None).reduced(None).max_steps is None


def test_train_help_loads_no_torch_faiss_or_lightgbm() -> None:
    check = (
        "import sys; from click.testing import CliRunner; from duorank.cli import cli;"
        "r = CliRunner().invoke(cli, ['train', 'reranker', '--help']); assert r.exit_code == 0;"
        "print(sorted(m for m in ('torch', 'faiss', 'lightgbm') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
