"""The first stage a reranker learns from and is validated on: its tower, index and features."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from catalog.model import Catalog
from catalog.splits import Split
from catalog.text import ItemTextTemplate, UserTextTemplate
from rerank.cross_encoder.pairs import FeatureMaker, RatingStats, item_texts
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.index import FlatIndex
from retrieval.towers import MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors


@dataclass
class Stage:
    """What training and validation share: texts, the first stage and its features."""

    item_text: dict[str, str]
    features: FeatureMaker
    template: UserTextTemplate
    levels: tuple[float, ...]


def prepare_stage(
    catalog: Catalog,
    split: Split,
    item_vectors: ItemVectors,
    cfg: RerankerTrainArgs,
    item_template: ItemTextTemplate | None = None,
    tower: UserTower | None = None,
) -> Stage:
    """Builds the first stage and the feature maker from the training split.

    The first stage is ``tower`` (bound to its indexed item vectors, e.g. the trained
    sequential tower) or, by default, the mean-of-recent-likes tower over ``item_vectors``.
    """
    texts = item_texts(catalog.items, item_template or ItemTextTemplate())
    counts = Counter(split.train.item_ids.tolist())
    if tower is None:
        tower = MeanItemsTower(item_vectors, n_recent=5, like_threshold=cfg.threshold)
    vectors = getattr(tower, "item_vectors", None)
    if not isinstance(vectors, ItemVectors):
        raise ValueError(f"the {tower.name} tower is not bound to item vectors")
    index = FlatIndex(vectors.dim).build(vectors.ids, vectors.matrix)
    ratings = split.train.ratings[~np.isnan(split.train.ratings)]
    levels = tuple(float(v) for v in np.unique(ratings)) if cfg.head == "rating" else ()
    template = UserTextTemplate(
        max_liked=cfg.max_liked,
        max_disliked=cfg.max_disliked,
        max_tokens=cfg.max_length // 2 + 20,
        like_threshold=cfg.threshold,
        ratings=cfg.user_ratings,
    )
    features = FeatureMaker(tower, index, dict(counts), cfg.features, RatingStats.of(split.train))
    return Stage(texts, features, template, levels)
