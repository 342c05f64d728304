"""Training the ranking stage: stacked lists, the features ranker, the served choice.

One recipe for ``duorank train ranker`` and ``duorank eval``:

1. Per user, the last ``per_user`` training events are targets
   (:func:`rerank.ranker.stacking.stack`).
2. A tower with the served tower's settings (its validated epochs), co-visitation, ALS and
   recent popularity are fitted on the events before each user's first target, and build every
   training list (:class:`rerank.ranker.candidates.CandidateStage`).
3. :class:`rerank.ranker.model.GBDTRanker` learns the correction to the tower's score on those
   lists, and, with ``short_histories`` (off by default: measured, it did not reach new users),
   on short copies of a share of them (each history cut to its newest one to three events,
   :func:`rerank.ranker.stacking.short_copies`).
4. The validation lists (each user's validation event) come from the served first stage: the
   tower trained on the training split, every table fitted on it. The ranker serves only if its
   NDCG@10 there beats the first stage's order of the same candidates by more than one standard
   error of the paired difference; else the first stage's order serves (one-standard-error
   rule: the simpler model wins ties). The card also records two views of the same lists:
   every candidate read as a new arrival (the cold view) and every history cut short (the
   short view).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.text import HistoryEvent, is_positive
from catalog.thresholds import LIKE_THRESHOLD
from rerank.ranker.candidates import DEPTHS, CandidateStage, Lists
from rerank.ranker.cold import as_cold
from rerank.ranker.features import Request, group_of
from rerank.ranker.model import GBDTRanker, LikeModel, RankerConfig
from rerank.ranker.stacking import Stacked, request_time, short_copies, short_draws, stack
from rerank.ranker.tables import FORMAT as TABLES_FORMAT
from rerank.ranker.tables import ALSParams
from retrieval.index import FlatIndex, VectorIndex
from retrieval.vectors import ItemVectors

if TYPE_CHECKING:  # the tower's module imports torch; the ranker loads without it
    from catalog.model import Catalog
    from retrieval.sequential import SequentialConfig, SequentialTower


@dataclass(frozen=True)
class RankingStageArgs:
    """The ranking stage's settings (recorded in the ranker's card)."""

    per_user: int = 5
    min_history: int = 5
    short_histories: float = 0.0
    """Share of the stacked lists learned again with the history cut to its newest one to
    three events (:func:`rerank.ranker.stacking.short_copies`; 0: none)."""
    depths: Mapping[str, int] = field(default_factory=lambda: dict(DEPTHS))
    als: ALSParams = field(default_factory=ALSParams)
    ranker: RankerConfig = field(default_factory=RankerConfig)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {
            "per_user": self.per_user,
            "min_history": self.min_history,
            "short_histories": self.short_histories,
            "depths": dict(self.depths),
            "als": asdict(self.als),
            "ranker": asdict(self.ranker),
            # the definitions the features were learned with (a build serves this format)
            "tables": TABLES_FORMAT,
        }


@dataclass(frozen=True)
class Validation:
    """The validation requests: each user's history before their validation event, what
    they may not be recommended, and the event's item."""

    requests: Sequence[Request]
    excludes: Sequence[Collection[str]]
    targets: Sequence[str]
    likes: Sequence[float] | None = None
    """Like (1) / dislike (0) of each validation event, for the P(like) head's figures."""


@dataclass(frozen=True)
class RankerValidation:
    """What the ranking stage is trained and validated over (:func:`ranker_validation`)."""

    catalog: Catalog
    text_vectors: ItemVectors
    tower: SequentialTower  # the served tower, bound to the text vectors
    tower_card: dict[str, Any]
    histories: Mapping[str, Sequence[HistoryEvent]]  # the training split's events per user
    validation: Validation
    index: VectorIndex  # the tower's exact index over the catalog


def ranker_validation(
    catalog: Catalog, text_vectors: ItemVectors, tower_path: Path, *, seed: int = 0
) -> RankerValidation:
    """The leave-one-out split's training histories and each user's validation request, the
    served tower (bound to the catalog's text vectors) and its index: what ``train ranker``
    validates on (and ``bench latency``'s depth curve re-scores)."""
    import json

    from retrieval.sequential import SequentialTower

    tower = SequentialTower.load(tower_path).bind_text(text_vectors)
    card_path = tower_path / "duorank-card.json"
    tower_card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return validation_of(catalog, text_vectors, tower, tower_card, seed=seed)


def validation_of(
    catalog: Catalog,
    text_vectors: ItemVectors,
    tower: SequentialTower,
    tower_card: dict[str, Any],
    *,
    seed: int = 0,
) -> RankerValidation:
    """:func:`ranker_validation` with a tower in memory (bound to ``text_vectors``)."""
    from catalog import leave_one_out
    from catalog.history import group_histories

    split = leave_one_out(catalog.interactions, seed=seed)
    histories = group_histories(split.train)
    requests, excludes, targets, likes = [], [], [], []
    for row in split.validation:
        liked = is_positive(HistoryEvent(row.item_id, 0, row.rating, row.label), LIKE_THRESHOLD)
        likes.append(0.0 if liked is False else 1.0)
        history = histories.get(row.user_id, [])
        requests.append(
            Request(
                row.user_id, history, request_time(HistoryEvent(row.item_id, int(row.timestamp)))
            )
        )
        excludes.append({e.item_id for e in history})
        targets.append(row.item_id)
    assert tower.item_vectors is not None
    index = FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)
    return RankerValidation(
        catalog,
        text_vectors,
        tower,
        tower_card,
        histories,
        Validation(requests, excludes, targets, likes),
        index,
    )


def list_ndcg10(scores: npt.NDArray[np.floating], lists: Lists) -> npt.NDArray[np.float64]:
    """Per list, NDCG@10 of its target under ``scores`` (0 where the target is absent). Ties
    keep the list's order, as the stable sort that serves does: never in the target's favour.
    The metric is :func:`metrics.ndcg_at_k` over positions within each list."""
    from metrics import ndcg_at_k

    off = lists.offsets
    n = len(lists.sizes)
    top = np.full((n, 10), -1, dtype=np.int64)
    target = np.full((n, 1), -1, dtype=np.int64)
    for i in range(n):
        s = np.asarray(scores[off[i] : off[i + 1]], dtype=np.float64)
        order = np.argsort(-s, kind="stable")[:10]
        top[i, : len(order)] = order
        hit = np.flatnonzero(lists.labels[off[i] : off[i + 1]])
        if len(hit):
            target[i, 0] = hit[0]
    values = np.asarray(ndcg_at_k(top, target, 10, per_user=True), dtype=np.float64)
    return np.nan_to_num(values, nan=0.0)  # no target among the candidates: 0


def short_requests(validation: Validation, seed: int) -> list[Request]:
    """Each validation request with its history cut to its newest one to three events
    (:data:`rerank.ranker.stacking.SHORT`, seeded): the same targets as a cold user sees them."""
    _, lengths = short_draws(len(validation.requests), seed)
    return [
        Request(r.user_id, list(r.history)[-k:], r.at)
        for r, k in zip(validation.requests, lengths.tolist(), strict=True)
    ]


def cold_view_ndcg10(ranker: GBDTRanker, lists: Lists) -> float:
    """Mean NDCG@10 of ``lists`` with every candidate read as a new arrival (no events): how
    the stage orders items by their content alone (the first stage's order does not change)."""
    cold = as_cold(lists.x, lists.names, lists.depths)
    return float(list_ndcg10(ranker.score(cold), lists).mean())


def one_se_choice(
    ranker: npt.NDArray[np.float64], first: npt.NDArray[np.float64]
) -> dict[str, Any]:
    """Serve the ranker only if its mean per-list NDCG@10 beats the first stage's by more
    than one standard error of the paired difference."""
    diff = ranker - first
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return {
        "served": "ranker" if float(diff.mean()) > se else "first_stage",
        "ndcg@10": float(ranker.mean()),
        "first_stage_ndcg@10": float(first.mean()),
        "minus_first_stage": float(diff.mean()),
        "minus_first_stage_se": se,
        "lists": len(diff),
    }


@dataclass
class TrainedStage:
    """The fitted ranker, the lists it learned and was validated on, and the choice."""

    ranker: GBDTRanker
    train_lists: Lists
    val_lists: Lists
    short_lists: Lists | None  # the short copies it learned too (None: no share)
    short_val: Lists  # the validation lists with every history cut short
    choice: dict[str, Any]
    stacked: Stacked
    stage_val: CandidateStage
    seconds: dict[str, float]


def refit_config(tower: SequentialTower, card: Mapping[str, Any]) -> SequentialConfig:
    """A trained sequential tower's settings for a fixed-length refit: its validated epochs
    (``card["best_epoch"]``) and chosen blends, no grids."""
    return replace(
        tower.cfg,
        epochs=max(1, int(card.get("best_epoch", tower.cfg.epochs))),
        blend_grid=(),
        collab_grid=(),
    )


def _stacked_first_stage(
    text_vectors: ItemVectors, stacked: Stacked, tower_cfg: SequentialConfig
) -> tuple[SequentialTower, VectorIndex]:
    """A tower with the served tower's settings, fitted on the events before every stacked
    list's targets, and its index: the first stage the training lists come from."""
    from retrieval.sequential_train import train_sequential

    tower, _ = train_sequential(text_vectors, stacked.fit_histories, {}, tower_cfg, progress=False)
    assert tower.item_vectors is not None
    return tower, FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)


def train_ranking_stage(
    items: Mapping[str, Item],
    histories: Mapping[str, Sequence[HistoryEvent]],
    validation: Validation,
    tower: SequentialTower,
    index: VectorIndex,
    text_vectors: ItemVectors,
    tower_cfg: SequentialConfig,
    args: RankingStageArgs | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainedStage:
    """The recipe of the module docstring.

    Args:
        items: the catalog's items.
        histories: the training split's time-ordered events per user.
        validation: each user's validation request (its history is ``histories``' user's).
        tower: the served sequential tower, trained on ``histories``.
        index: ``tower``'s index.
        text_vectors: the catalog's text vectors.
        tower_cfg: the stacked tower's settings: the served tower's, with its validated
            epochs and blends and no grids (:func:`refit_config`).
        args: settings.
        progress: called with a line per step.
    """
    import time

    args = args or RankingStageArgs()
    say = progress or (lambda _m: None)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    stacked = stack(histories, args.per_user, args.min_history)
    say(f"ranking stage: {len(stacked.lists)} stacked lists; fitting their first stage")
    stack_tower, stack_index = _stacked_first_stage(text_vectors, stacked, tower_cfg)
    seconds["stacked_tower"] = time.perf_counter() - started
    started = time.perf_counter()
    stage_fit = CandidateStage.build(
        items,
        stacked.fit_histories,
        stack_tower,
        stack_index,
        text_vectors,
        als=args.als,
        depths=args.depths,
    )
    train_lists = stage_fit.lists(
        [s.request for s in stacked.lists],
        [{e.item_id for e in s.request.history} for s in stacked.lists],
        [s.target.item_id for s in stacked.lists],
    )
    stage_val = CandidateStage.build(
        items, histories, tower, index, text_vectors, als=args.als, depths=args.depths
    )
    short = short_copies(stacked.lists, args.short_histories, args.ranker.seed)
    short_lists = (
        stage_fit.lists(
            [s.request for s in short],
            [{e.item_id for e in s.request.history} for s in short],
            [s.target.item_id for s in short],
        )
        if short
        else None
    )
    val_lists = stage_val.lists(validation.requests, validation.excludes, list(validation.targets))
    short_val = stage_val.lists(
        short_requests(validation, args.ranker.seed),
        validation.excludes,
        list(validation.targets),
    )
    seconds["lists"] = time.perf_counter() - started
    started = time.perf_counter()
    ranker = GBDTRanker.fit(train_lists, args.ranker, extra=short_lists, progress=say)
    seconds["ranker"] = time.perf_counter() - started
    choice = one_se_choice(
        list_ndcg10(ranker.score(val_lists.x), val_lists),
        list_ndcg10(val_lists.column("retrieval_score"), val_lists),
    )
    choice["cold_view_ndcg@10"] = cold_view_ndcg10(ranker, val_lists)
    choice["short_view_ndcg@10"] = float(list_ndcg10(ranker.score(short_val.x), short_val).mean())
    choice["short_view_first_stage_ndcg@10"] = float(
        list_ndcg10(short_val.column("retrieval_score"), short_val).mean()
    )
    started = time.perf_counter()
    _fit_like_head(ranker, train_lists.names, stage_fit, stacked, validation, stage_val, args, say)
    seconds["like"] = time.perf_counter() - started
    say(
        f"ranking stage: validation NDCG@10 {choice['ndcg@10']:.4f} vs first stage "
        f"{choice['first_stage_ndcg@10']:.4f}; serving the {choice['served'].replace('_', ' ')}"
    )
    return TrainedStage(
        ranker, train_lists, val_lists, short_lists, short_val, choice, stacked, stage_val, seconds
    )


def like_rows(
    stage: CandidateStage, stacked: Stacked, names: Sequence[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[str], list[int]]:
    """What the P(like) head learns from: each stacked target's row as a candidate no source
    proposed, every column of ``names`` but the sources' (they say how an item was found, not
    whether it is liked), its like (1) or dislike (0); with the names and columns kept."""
    sources = [s.name for s in stage.sources]
    cols = [n for n, name in enumerate(names) if group_of(name, sources) != "sources"]
    rows = stage.item_rows(
        [s.request for s in stacked.lists], [s.target.item_id for s in stacked.lists]
    )[:, cols]
    liked = np.array(
        [is_positive(s.target, LIKE_THRESHOLD) is not False for s in stacked.lists], np.float32
    )
    return rows, liked, [names[n] for n in cols], cols


def _fit_like_head(
    ranker: GBDTRanker,
    names: Sequence[str],
    stage_fit: CandidateStage,
    stacked: Stacked,
    validation: Validation,
    stage_val: CandidateStage,
    args: RankingStageArgs,
    say: Callable[[str], None],
) -> None:
    """The P(like) head on the stacked targets' rows (every column but the sources'), and its
    validation AUC and ECE; none on implicit feedback, where every target is a like."""
    rows, liked, like_names, like_cols = like_rows(stage_fit, stacked, names)
    if len(set(liked.tolist())) < 2:  # implicit feedback: no dislike to tell a like from
        say("ranking stage: every training target is a like; no P(like) head")
        ranker.record["like"] = "none: every training target is a like (implicit feedback)"
    else:
        ranker.like = LikeModel.fit(
            rows, liked, like_names, [s.request.user_id for s in stacked.lists], args.ranker
        )
    if ranker.like is not None and validation.likes is not None and len(set(validation.likes)) == 2:
        from metrics import auc, expected_calibration_error

        p = ranker.like.probability(
            stage_val.item_rows(validation.requests, validation.targets)[:, like_cols]
        )
        ranker.like.record.update(
            validation_auc=auc(p, np.asarray(validation.likes)),
            validation_ece=expected_calibration_error(p, np.asarray(validation.likes)),
        )


def train_on(
    setup: RankerValidation,
    args: RankingStageArgs,
    *,
    progress: Callable[[str], None] | None = None,
) -> TrainedStage:
    """:func:`train_ranking_stage` over what :func:`ranker_validation` (or
    :func:`validation_of`) prepared, the tower refitted with its validated settings."""
    return train_ranking_stage(
        setup.catalog.items,
        setup.histories,
        setup.validation,
        setup.tower,
        setup.index,
        setup.text_vectors,
        refit_config(setup.tower, setup.tower_card),
        args,
        progress=progress,
    )
