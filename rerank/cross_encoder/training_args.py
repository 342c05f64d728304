"""The reranker's training arguments, one frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from catalog.thresholds import LIKE_THRESHOLD

FEATURES = ("retrieval_score", "log_popularity", "item_rating_deviation", "user_rating_deviation")
"""Scalar features a reranker head can read (its config names the ones it uses, in order;
:class:`rerank.cross_encoder.pairs.FeatureMaker` computes them). Named here, beside the
training arguments, so that they load without torch. The two rating features are shrunk means
as deviations from the global mean (the ranker's ``item_mean_rating`` is the shrunk mean
itself: another column)."""
RENAMED = {
    "item_mean_rating": "item_rating_deviation",
    "user_mean_rating": "user_rating_deviation",
}
"""Feature names of folders saved before the rename, read as today's."""
DEFAULT_FEATURES = FEATURES  # all of them: the head learns how much each one is worth
LOSSES = ("pointwise", "listwise")
"""The training losses (:attr:`RerankerTrainArgs.loss`)."""
QUICK_STEPS = 30
"""Optimiser steps of the reduced run (:meth:`RerankerTrainArgs.reduced`)."""


@dataclass(frozen=True)
class RerankerTrainArgs:
    """How the reranker is trained (recorded in the model card as ``config``); what the
    saved model is, is :class:`rerank.cross_encoder.model.RerankerConfig`.

    Attributes:
        head: ``binary`` or ``rating``.
        epochs, batch_size, lr, warmup_ratio: optimisation (``lr``: the backbone).
        max_steps: optimiser steps, the measured configuration (None: whole epochs).
        head_lr: learning rate of the linear heads over the pooled text and the features.
        targets_per_user: most recent training events per user used as targets.
        random_negatives, hard_negatives: sampled negatives per positive.
        hard_pool: hard negatives come from the retrieval stage's top ``hard_pool``.
        threshold: rating at or above = like.
        max_length: token cap of a pair.
        max_liked, max_disliked: history items in the user text.
        user_ratings: each history title in the user text followed by its stars.
        features: scalar features beside the text (empty tuple for text only).
        val_users: validate on a seeded sample of this many users (None = all).
        val_candidates: retrieval candidates reranked for validation NDCG@10.
        patience: epochs without AUC improvement before stopping.
        calibrate: fit the fusion (binary head) or a temperature (rating head) on validation.
        eval_before: also validate the untrained model (a baseline for the card; one more
            validation pass, minutes on a CPU).
        attention: ``user_prefix`` (the user side computed once per user at serving) or
            ``full`` (a standard cross-encoder); see :mod:`rerank.cross_encoder.model`.
        freeze_layers: the backbone's token embeddings and its first ``freeze_layers``
            transformer layers stay as pretrained (0: fine-tune all): backward then stops
            above them, so steps are cheaper (results: docs/results.md).
        item_layers: the first layers in which the item side reads only itself, so that
            serving caches each item's states after them (``user_prefix`` only; 0: none).
        layers: keep only the backbone's first ``layers`` transformer layers (None: all): a
            shallower, faster cross-encoder, initialised from the pretrained lower layers.
        teacher: a trained reranker folder whose P(like) of each training pair is the target
            (distillation; binary head): the student learns the teacher's scores, not the
            0/1 labels.
        loss: ``pointwise``: binary cross-entropy of each pair (or the rating softmax);
            ``listwise``: softmax cross-entropy of each liked target against its own sampled
            negatives (the served first stage's candidates with ``hard_negatives``), the
            ranker's loss (binary head; dislikes, which have no list, are left out).
        seed: seeds Python, numpy and torch.
    """

    head: str = "binary"
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    head_lr: float = 1e-3
    warmup_ratio: float = 0.1
    max_steps: int | None = 300
    targets_per_user: int = 10
    random_negatives: int = 1
    hard_negatives: int = 1
    hard_pool: int = 50
    threshold: float = LIKE_THRESHOLD
    max_length: int = 160
    max_liked: int = 10
    max_disliked: int = 5
    user_ratings: bool = False
    features: tuple[str, ...] = DEFAULT_FEATURES
    val_users: int | None = 1000
    val_candidates: int = 50
    patience: int = 1
    calibrate: bool = True
    eval_before: bool = False
    attention: str = "user_prefix"
    freeze_layers: int = 3
    item_layers: int = 0
    layers: int | None = None
    teacher: str | None = None
    loss: str = "pointwise"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.layers is not None and self.freeze_layers >= self.layers:
            raise ValueError(
                f"freeze_layers ({self.freeze_layers}) must be below layers ({self.layers}): "
                "the top layer must learn"
            )
        if self.teacher is not None and self.head != "binary":
            raise ValueError("a teacher's scores are P(like): distillation needs the binary head")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.loss == "listwise" and (self.head != "binary" or self.teacher is not None):
            raise ValueError("the list-wise loss needs the binary head and no teacher")
        if self.loss == "listwise" and not (self.random_negatives or self.hard_negatives):
            raise ValueError("the list-wise loss needs negatives: a list is a target and its own")

    @classmethod
    def of_card(cls, card: Mapping[str, Any]) -> RerankerTrainArgs:
        """The arguments a saved reranker was trained with (its card's ``config``; fields
        added since it was saved keep their defaults)."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in card.get("config", {}).items() if k in known}
        if "features" in given:
            given["features"] = tuple(RENAMED.get(f, f) for f in given["features"])
        return cls(**given)

    def reduced(self, max_steps: int | None = QUICK_STEPS) -> RerankerTrainArgs:
        """The reduced run of the quickstart and CI: ``max_steps`` steps, 2 targets per user,
        20 validation candidates. Every validation user is kept: fewer leave the fusion too
        few pairs to tie the probability to the item."""
        return replace(self, max_steps=max_steps, targets_per_user=2, val_candidates=20)
