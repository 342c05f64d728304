"""Baselines for offline evaluation, each a :class:`Scorer` over the whole catalog:
popularity, ALS and BPR (``implicit``), a tuned item-kNN, EASE and SASRec with full softmax.

``fit(data)`` learns from a fold's :class:`TrainData`; ``scores(user_rows)`` gives a dense
(users, items) block. Ranking, exclusion of seen items and metrics are shared by every method
in :mod:`benchmarks.evaluation`; each baseline's validation grid is in :mod:`.grids`.
"""

from benchmarks.baselines.base import Scorer, TrainData, Validation
from benchmarks.baselines.ease import CatalogTooLargeError, EASEScorer
from benchmarks.baselines.implicit_mf import ImplicitScorer
from benchmarks.baselines.itemknn import ItemKNNScorer
from benchmarks.baselines.popularity import PopularityScorer
from benchmarks.baselines.sasrec import SASRecScorer

__all__ = [
    "CatalogTooLargeError",
    "EASEScorer",
    "ImplicitScorer",
    "ItemKNNScorer",
    "PopularityScorer",
    "SASRecScorer",
    "Scorer",
    "TrainData",
    "Validation",
]
