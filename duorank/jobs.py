"""The jobs the commands run, as plain functions: settings and a config in, a result out.

The CLI parses and prints; the quickstart calls these same functions. Only this layer turns
settings into a Redis client and an encoder (:func:`duorank.app.runtime`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duorank.app import Runtime, runtime
from duorank.settings import Settings

if TYPE_CHECKING:  # the types only: each job imports its heavy parts when it runs
    from catalog.model import Catalog
    from catalog.splits import Split
    from catalog.text import HistoryEvent
    from indexer import BuildConfig
    from indexer.encoding import EncodeEngine
    from rerank.cross_encoder.training_args import RerankerTrainArgs
    from rerank.ranker.train import RankingStageArgs
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder, Matrix
    from retrieval.index import VectorIndex
    from retrieval.sequential import SequentialConfig, SequentialTower
    from retrieval.towers import UserTower
    from retrieval.vectors import ItemVectors
    from serving.recommender import Recommender


def item_vectors(rt: Runtime, catalog: Catalog) -> tuple[Encoder, list[str], Matrix]:
    """The runtime's cached encoder, the ids of the items with text and their text vectors."""
    from retrieval.encoder import encode_catalog

    encoder = rt.encoder()
    vectors = encode_catalog(encoder, catalog.items, progress=True)
    return encoder, vectors.ids, vectors.matrix


def training_catalog(data: Path, seed: int = 0) -> tuple[Catalog, Split, int | None]:
    """The dataset as a model trained on its leave-one-out split may know it: the split, and
    the items' text as of the earliest held-out event (tags written later are left out:
    :meth:`catalog.model.Catalog.as_of`), with that time."""
    from catalog import leave_one_out, load_catalog
    from catalog.splits import heldout_start

    catalog = load_catalog(data)
    split = leave_one_out(catalog.interactions, seed=seed)
    at = heldout_start(split)
    return catalog.as_of(at), split, at


def bound_tower(path: Path | None, ids: list[str], vectors: Matrix) -> SequentialTower | None:
    """The sequential tower at ``path`` bound to its item vectors (None without a path)."""
    if path is None:
        return None
    from retrieval.sequential import SequentialTower
    from retrieval.vectors import ItemVectors

    tower = SequentialTower.load(path)
    return tower.bind_text(ItemVectors(ids, vectors))


def import_movielens(path: Path, out: Path, *, skip_bad: bool = False) -> dict[str, Any]:
    """Imports a MovieLens folder into a dataset folder; returns its manifest."""
    from catalog import load_movielens, save_catalog

    return save_catalog(load_movielens(path, skip_bad=skip_bad), out, inputs=[path])


def import_mind(
    path: Path, out: Path, *, negatives: bool = False, skip_bad: bool = False
) -> dict[str, Any]:
    """Imports a MIND folder (news.tsv, behaviors.tsv) into a dataset folder."""
    from catalog import save_catalog
    from catalog.mind import load_mind

    return save_catalog(load_mind(path, negatives=negatives, skip_bad=skip_bad), out, inputs=[path])


def train_tower(
    settings: Settings, data: Path, out: Path, cfg: SequentialConfig, *, seed: int = 0
) -> tuple[SequentialTower, dict[str, Any]]:
    """Trains the sequential user tower on cached item vectors and saves it atomically.

    Args:
        cfg: a :class:`retrieval.sequential.SequentialConfig`.
        seed: the split's seed.

    Returns:
        The tower and its card.
    """
    from catalog.fsutil import MODEL, atomic_dir, write_json
    from catalog.history import group_histories
    from retrieval.sequential_train import train_sequential
    from retrieval.vectors import ItemVectors

    catalog, split, text_as_of = training_catalog(data, seed)
    with runtime(settings) as rt:
        encoder, ids, vectors = item_vectors(rt, catalog)
        fingerprint = encoder.fingerprint
    validation = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )
    tower, card = train_sequential(
        ItemVectors(ids, vectors), group_histories(split.train), validation, cfg
    )
    card["text_model_fingerprint"] = fingerprint
    card["text_as_of"] = text_as_of
    with atomic_dir(out, MODEL) as staging:
        tower.save(staging)
        write_json(staging / "duorank-card.json", card)
    return tower, card


@dataclass(frozen=True)
class RerankerJob:
    """What :func:`train_reranker` needs beside the training arguments."""

    data: Path
    out: Path
    tower: Path | None = None
    base_model: str | None = None
    resume: bool = False
    device: str | None = None
    seed: int = 0


def train_reranker(settings: Settings, job: RerankerJob, cfg: RerankerTrainArgs) -> dict[str, Any]:
    """Fine-tunes the point-wise cross-encoder on the training split; returns its card.

    Args:
        cfg: a :class:`rerank.cross_encoder.training_args.RerankerTrainArgs`.
    """
    from rerank.cross_encoder.trainer import train_reranker as train
    from retrieval.vectors import ItemVectors

    catalog, split, _ = training_catalog(job.data, job.seed)
    with runtime(settings) as rt:
        encoder, ids, vectors = item_vectors(rt, catalog)
        tower = bound_tower(job.tower, ids, vectors)
        return train(
            catalog,
            split,
            ItemVectors(ids, vectors),
            job.out,
            cfg,
            base_model=job.base_model,
            resume=job.resume,
            count_tokens=encoder.count_tokens,
            tower=tower,
            device=job.device,
        )


def train_ranker(
    settings: Settings,
    data: Path,
    tower_path: Path,
    out: Path,
    args: RankingStageArgs,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains the ranking stage over the tower's candidates and saves it atomically; returns
    the ranker's card (see :mod:`rerank.ranker.train`).

    Args:
        tower_path: the trained sequential tower (``train tower``): the served first stage.
        args: a :class:`rerank.ranker.train.RankingStageArgs`.
    """
    from rerank.ranker.train import ranker_validation, train_on
    from retrieval.vectors import ItemVectors

    catalog, _, text_as_of = training_catalog(data, seed)
    with runtime(settings) as rt:
        _, ids, vectors = item_vectors(rt, catalog)
    setup = ranker_validation(catalog, ItemVectors(ids, vectors), tower_path, seed=seed)
    trained = train_on(setup, args, progress=progress)
    ranker = trained.ranker
    ranker.record.update(
        choice=trained.choice,
        stage=args.as_dict(),
        tower=str(tower_path),
        data=str(data),
        seconds=trained.seconds,
        text_as_of=text_as_of,
    )
    if ranker.like is not None:
        ranker.record["like"] = ranker.like.record
    ranker.save(out)
    return ranker.record


def recalibrate_reranker(
    settings: Settings,
    folder: Path,
    data: Path,
    *,
    tower: Path | None = None,
    val_users: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Refits a binary reranker's validation fusion without retraining; returns its card."""
    from catalog import leave_one_out, load_catalog
    from rerank.cross_encoder.calibration import recalibrate
    from retrieval.vectors import ItemVectors

    catalog = load_catalog(data)
    split = leave_one_out(catalog.interactions, seed=seed)
    with runtime(settings) as rt:
        _, ids, vectors = item_vectors(rt, catalog)
    bound = bound_tower(tower, ids, vectors)
    return recalibrate(
        catalog, split, ItemVectors(ids, vectors), folder, tower=bound, val_users=val_users
    )


@dataclass(frozen=True)
class IndexJob:
    """Where a build's items come from and where it publishes."""

    root: Path
    data: Path | None = None
    items: Path | None = None
    mapping: tuple[str, ...] = ()
    duplicates: str = "error"
    model: str | None = None
    tower: Path | None = None
    ranker: Path | None = None
    engine: EncodeEngine | None = None  # None: encode in this process


def tower_text_as_of(tower: Path | None) -> int | None:
    """The cut-off of the item text a trained tower learned from (its card's ``text_as_of``;
    None without a tower or for a tower trained before the card recorded it)."""
    if tower is None or not (tower / "duorank-card.json").is_file():
        return None
    import json

    value = json.loads((tower / "duorank-card.json").read_text()).get("text_as_of")
    return int(value) if isinstance(value, int) else None


class StageWriter:
    """Fits the ranking stage's tables on the dataset's interactions, with the ALS settings of
    the ranker's card, and writes them into an index version's staging folder; then the
    exposure of the version's own first stage over the same users, so that a serving process
    needs no user's history for it (:class:`indexer.build.StageWriter`).

    Raises:
        ValueError: ``ranker`` holds no ranker's card (at once, before any work).
    """

    def __init__(self, data: Path, ranker: Path) -> None:
        from rerank.ranker.model import read_card
        from rerank.ranker.tables import ALSParams

        card = read_card(ranker)  # before any work: a wrong folder fails at once
        self.data, self.ranker = data, ranker
        self.als = ALSParams(**card.get("record", {}).get("stage", {}).get("als", {}))
        self._histories: dict[str, list[HistoryEvent]] | None = None
        self._item_ids: list[str] = []

    def tables(self, text_vectors: ItemVectors, folder: Path) -> dict[str, Any]:
        """Fits and writes the tables; returns the manifest's ``stage`` entry."""
        from dataclasses import asdict

        from catalog import load_catalog
        from catalog.history import group_histories
        from rerank.ranker.tables import StageTables

        catalog = load_catalog(self.data)
        self._histories = group_histories(catalog.interactions)
        tables = StageTables.fit(catalog.items, self._histories, text_vectors, self.als)
        self._item_ids = tables.item_ids
        files = tables.save(folder)
        return {
            "files": [p.name for p in files],
            "events": tables.events,
            "als": asdict(self.als),
            "ranker": str(self.ranker),
            # which live events the tables hold (a serving process counts the stream's others)
            "live_mark": catalog.source.get("live_mark", "0-0"),
            "live_late": list(catalog.source.get("live_late", [])),
        }

    def exposure(self, tower: UserTower, index: VectorIndex, folder: Path) -> dict[str, Any]:
        """Measures and writes the exposure feature over the tables' users (after
        :meth:`tables`); returns its ``stage`` entries."""
        from rerank.ranker.candidates import EXPOSURE_USERS, exposure, exposure_key
        from rerank.ranker.tables import save_exposure

        if self._histories is None:
            raise RuntimeError("StageWriter.exposure runs after StageWriter.tables")
        col = {i: n for n, i in enumerate(self._item_ids)}
        path = save_exposure(folder, exposure(tower, index, self._histories, col))
        users = min(EXPOSURE_USERS, sum(1 for h in self._histories.values() if h))
        self._histories = None  # the build's memory is the index's from here
        return {"exposure": {"file": path.name, "tower": exposure_key(tower), "users": users}}


def build_index(settings: Settings, job: IndexJob, config: BuildConfig) -> dict[str, Any]:
    """Builds and publishes one index version; returns its manifest.

    Args:
        config: an :class:`indexer.BuildConfig`.

    Raises:
        indexer.LockHeldError: another build holds the root's lock.
        indexer.TowerLoadError: ``job.tower`` cannot be loaded.
    """
    from catalog.table import ColumnMapping
    from indexer import CatalogSource, publish_version

    if (job.data is None) == (job.items is None):
        raise ValueError("give exactly one of a dataset folder or an items file")
    if job.data is not None:
        # The text the served tower learned from: its card's cut-off (else every tag).
        source = CatalogSource.from_dataset(job.data, tower_text_as_of(job.tower))
    else:
        assert job.items is not None  # exactly one of the two, checked above
        mapping = ColumnMapping.from_pairs(list(job.mapping))
        source = CatalogSource.from_items_file(job.items, mapping, job.duplicates)

    @contextlib.contextmanager
    def open_encoder() -> Iterator[Encoder]:
        with runtime(settings) as rt:
            yield rt.encoder(job.model)

    stage = None
    if job.ranker is not None:
        if job.data is None:
            raise ValueError("the ranking stage's tables need a dataset (--data)")
        stage = StageWriter(job.data, job.ranker)
    return publish_version(
        job.root, source, open_encoder, config, tower_path=job.tower, stage=stage, engine=job.engine
    )


@dataclass(frozen=True)
class EvalJob:
    """What :func:`evaluate` runs: the data, the optional models and the protocol's knobs."""

    data: Path
    reranker: Path | None = None
    backend: str = "torch"
    retriever: Path | None = None
    trained_tower: bool = True
    seed: int = 0
    seeds: int = 1
    rerank_als: bool = True
    quick: bool = False
    progress: Callable[[str], None] | None = field(default=None, compare=False)
    protocol: str = "duorank"  # or a published one (benchmarks.evaluation.literature)


def evaluate(settings: Settings, job: EvalJob) -> dict[str, Any]:
    """The offline evaluation's report, stamped with machine, date and commit."""
    from benchmarks.contract import stamp
    from benchmarks.evaluation import run_eval
    from benchmarks.evaluation.literature import prepare
    from catalog import leave_one_out, load_catalog
    from catalog.splits import heldout_start
    from rerank import Reranker
    from retrieval.encoder import encode_catalog
    from retrieval.sequential import SequentialConfig
    from retrieval.vectors import ItemVectors

    # as training_catalog, once the protocol has prepared the dataset
    catalog, prepared = prepare(load_catalog(job.data), job.protocol)
    text_as_of = heldout_start(leave_one_out(catalog.interactions, seed=job.seed))
    catalog = catalog.as_of(text_as_of)
    reranker_path = job.reranker or settings.layout.trained_reranker()
    reranker = Reranker(reranker_path, backend=job.backend) if reranker_path else None
    tower = SequentialConfig(seed=job.seed)  # what `train tower` trains, seeded as the run
    with runtime(settings) as rt:
        encoder, ids, vectors = item_vectors(rt, catalog)  # one model load for both texts
        retriever = rt.encoder(job.retriever) if job.retriever else None
        report = run_eval(
            catalog,
            item_vectors=ItemVectors(ids, vectors),
            text_as_of=text_as_of,
            encode=lambda items: encode_catalog(encoder, items),
            reranker=reranker,
            retriever=retriever,
            sequential=(tower.reduced() if job.quick else tower) if job.trained_tower else None,
            quick=job.quick,
            seed=job.seed,
            seeds=job.seeds,
            rerank_als=job.rerank_als,
            protocol=prepared,
            **({"progress": job.progress} if job.progress else {}),
        )
    return stamp(report)


@dataclass(frozen=True)
class ServingJob:
    """What the Recommender serves: every path defaults to the home's layout."""

    data: Path | None = None
    root: Path | None = None
    reranker: Path | None = None
    backend: str = "auto"
    text_users: bool = False
    fallback: bool = False
    ranker: Path | None = None
    use_ranker: bool = True
    version: str | None = None  # a published version to serve instead of CURRENT
    user_store: bool = False  # users read from the online user store in Redis


def item_state_cache(rt: Runtime) -> EmbeddingCache:
    """The cache of an item-layers reranker's item states: the embedding cache's Redis, its
    own namespace, float16."""
    from retrieval.cache import EmbeddingCache

    return EmbeddingCache(rt.cache.client, namespace=f"{rt.cache.namespace}:items", dtype="float16")


def cache_item_states(
    settings: Settings, reranker_path: Path, data: Path, backend: str = "auto"
) -> dict[str, Any]:
    """Computes and stores an item-layers reranker's states of every catalog item with
    ``backend`` (the nightly step after an index build; serving computes only what is
    missing). Returns counts and the bytes kept per item.

    Raises:
        ValueError: the reranker has no item layers (checked before anything is opened).
    """
    from catalog import ItemTextTemplate, load_catalog
    from rerank import Reranker
    from rerank.cross_encoder.model import read_config

    if not read_config(reranker_path).item_layers:
        raise ValueError(f"{reranker_path} has no item layers (train it with --item-layers N)")
    catalog = load_catalog(data)
    template = ItemTextTemplate()
    texts = [t for t in (template.render(item) for item in catalog.items.values()) if t]
    with runtime(settings) as rt:
        cache = item_state_cache(rt)
        reranker = Reranker(reranker_path, backend=backend, item_cache=cache)
        before = cache.stats.as_dict()
        started = time.perf_counter()
        states = reranker.item_states(texts)
        seconds = time.perf_counter() - started
        after = cache.stats.as_dict()
    tokens = sum(len(s) for s in states)
    return {
        "items": len(texts),
        "already_cached": int(after["hits"] - before["hits"]),
        "written": int(after["writes"] - before["writes"]),
        "seconds": seconds,
        "float16_bytes_per_item": 2
        * tokens
        * (states[0].shape[1] if states else 0)
        / max(len(states), 1),
    }


@contextlib.contextmanager
def open_recommender(settings: Settings, job: ServingJob) -> Iterator[Recommender]:
    """The Recommender over the job's (or the home's) dataset, index and reranker; with
    ``text_users`` the cached text encoder stays open as long as the Recommender is used.

    Raises:
        indexer.NoVersionError: nothing published (or, with ``fallback``, nothing verifies).
        indexer.VerifyError: the CURRENT version is damaged (without ``fallback``).
    """
    from catalog import load_catalog
    from rerank import Reranker
    from serving.recommender import Recommender

    home = settings.layout
    reranker_path = job.reranker or home.trained_reranker()
    ranker_path = (job.ranker or home.trained_ranker()) if job.use_ranker else None
    # users from the online store: the items alone, so memory does not grow with the users
    catalog = load_catalog(job.data or home.dataset(), items_only=job.user_store)
    with contextlib.ExitStack() as stack:
        encoder = None
        rt = stack.enter_context(runtime(settings)) if job.text_users or job.user_store else None
        if rt is not None and job.text_users:
            encoder = rt.encoder()
        users = None
        if rt is not None and job.user_store:
            from online import UserStore

            users = UserStore(rt.cache.client, namespace=settings.users_namespace)
        reranker = None
        if reranker_path:
            from rerank.cross_encoder.model import read_config

            item_cache = None
            if read_config(Path(reranker_path)).item_layers:  # its item states live in Redis
                rt = rt or stack.enter_context(runtime(settings))
                item_cache = item_state_cache(rt)
            reranker = Reranker(reranker_path, backend=job.backend, item_cache=item_cache)
        ranker = None
        if ranker_path is not None:
            from rerank.ranker.model import GBDTRanker

            ranker = GBDTRanker.load(ranker_path)

        def text_vectors() -> ItemVectors:
            """Only for an index version without stage tables: the cached text vectors."""
            from retrieval.vectors import ItemVectors

            with runtime(settings) as rt:
                _, ids, vectors = item_vectors(rt, catalog)
            return ItemVectors(ids, vectors)

        yield Recommender(
            job.root or home.index,
            catalog,
            reranker,
            user_encoder=encoder,
            fallback=job.fallback,
            ranker=ranker,
            text_vectors=text_vectors,
            version=job.version,
            users=users,
        )
