"""Lever 3 of the latency issue: a shallower cross-encoder, trained on a teacher's scores."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import rerank.cross_encoder.trainer
from catalog import Catalog, leave_one_out
from rerank import Reranker
from rerank.cross_encoder.model import RerankerConfig, new_net
from rerank.cross_encoder.trainer import teacher_targets, train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder, bundled_model_path
from tests.rerank.cross_encoder.conftest import CFG, text_vectors

STUDENT = replace(CFG, layers=2, freeze_layers=0, eval_before=False, calibrate=False)


def test_a_student_keeps_the_first_layers_and_learns_the_teachers_scores(
    trained: tuple[Path, Catalog], tmp_path: Path, encoder: Encoder
) -> None:
    teacher, catalog = trained
    split = leave_one_out(catalog.interactions)
    vectors = text_vectors(catalog, encoder)
    card = train_reranker(
        catalog,
        split,
        vectors,
        tmp_path / "student",
        replace(STUDENT, teacher=str(teacher)),
        progress=False,
    )
    saved = json.loads((tmp_path / "student" / "backbone" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    assert card["config"]["layers"] == 2 and card["config"]["teacher"] == str(teacher)
    assert card["distillation"]["teacher"] == str(teacher)
    assert card["distillation"]["pairs"] == sum(card["data"]["pairs"].values())
    assert 0.0 < card["distillation"]["mean_target"] < 1.0
    # The student serves like any reranker, from its two layers.
    student = Reranker(tmp_path / "student")
    text = next(iter(catalog.items.values())).title
    probs = student.score("liked: " + text, [text, text + " II"], np.zeros((2, 4)))
    assert probs.shape == (2,) and np.all((probs > 0) & (probs < 1))


def test_the_teachers_scores_are_its_served_p_like(
    trained: tuple[Path, Catalog], encoder: Encoder
) -> None:
    from rerank.cross_encoder.context import prepare_stage

    teacher, catalog = trained
    split = leave_one_out(catalog.interactions)
    stage = prepare_stage(catalog, split, text_vectors(catalog, encoder), STUDENT)
    examples = rerank.cross_encoder.trainer._training_pairs(catalog, split, stage, STUDENT, None)[
        :12
    ]
    soft = teacher_targets(teacher, examples, stage, STUDENT, progress=False)
    model = Reranker(teacher)
    for example, target in zip(examples, soft, strict=True):
        alone = model.score(
            example.user_text, [stage.item_text[example.item_id]], np.array([example.features])
        )
        assert target == pytest.approx(float(alone[0]), abs=1e-5)


def test_the_targets_are_the_teachers_not_the_labels(
    trained: tuple[Path, Catalog], tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same pairs: a teacher that says "like" everywhere pushes the head's bias up,
    one that says "dislike" everywhere pushes it down."""
    teacher, catalog = trained
    split = leave_one_out(catalog.interactions)
    vectors = text_vectors(catalog, encoder)
    bias = {}
    for said in (0.0, 1.0):
        monkeypatch.setattr(
            rerank.cross_encoder.trainer,
            "teacher_targets",
            lambda _t, examples, *_a, said=said, **_k: np.full(len(examples), said, np.float32),
        )
        out = tmp_path / f"said-{said}"
        train_reranker(
            catalog, split, vectors, out, replace(STUDENT, teacher=str(teacher)), progress=False
        )
        bias[said] = float(load_file(str(out / "head.safetensors"))["head.bias"][0])
    assert bias[1.0] > bias[0.0]


def test_bad_student_settings_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"freeze_layers \(3\) must be below layers \(2\)"):
        RerankerTrainArgs(layers=2)
    with pytest.raises(ValueError, match="binary head"):
        RerankerTrainArgs(head="rating", teacher=str(tmp_path))
    with pytest.raises(ValueError, match=r"layers must be in 1\.\.5 for this 6-layer"):
        new_net(str(bundled_model_path()), RerankerConfig(), layers=6)


def test_a_teacher_with_other_features_is_refused(
    trained: tuple[Path, Catalog], tmp_path: Path, encoder: Encoder
) -> None:
    teacher, catalog = trained
    with pytest.raises(ValueError, match="train the student with the teacher's features"):
        train_reranker(
            catalog,
            leave_one_out(catalog.interactions),
            text_vectors(catalog, encoder),
            tmp_path / "student",
            replace(STUDENT, teacher=str(teacher), features=()),
            progress=False,
        )
    assert not (tmp_path / "student").exists()
