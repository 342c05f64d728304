"""A serving process that reads its users from the online store holds no user data: the
catalog's items alone, the log's per-item totals and the first stage's exposure from the index
version. Its lists are the ones a process holding the whole log serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from catalog import Catalog, load_catalog
from catalog.errors import DataError
from catalog.history import group_histories
from catalog.text import HistoryEvent
from indexer.store import IndexRoot
from online import LiveEvent, UserStore
from rerank.ranker.candidates import exposure
from rerank.ranker.model import GBDTRanker
from rerank.ranker.tables import EXPOSURE, StageTables
from retrieval.encoder import Encoder
from retrieval.redis_client import connect
from serving.logstats import LogStats
from serving.recommender import Recommender
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, Catalog]:
    tmp = tmp_path_factory.mktemp("itemsonly")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    build_ranked_stack(tmp, catalog, encoder, plain_root=tmp / "plain")
    return tmp, catalog


def test_items_only_reads_the_items_file_alone(
    ranked: tuple[Path, Catalog], tmp_path: Path
) -> None:
    tmp, catalog = ranked
    items = load_catalog(tmp / "data", items_only=True)
    assert items.items == catalog.items
    assert len(items.interactions) == 0 and items.users == {}
    (tmp_path / "data").mkdir()
    for path in (tmp / "data").iterdir():
        (tmp_path / "data" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "data" / "interactions.parquet").unlink()
    assert load_catalog(tmp_path / "data", items_only=True).items == catalog.items
    with pytest.raises(DataError, match=r"interactions\.parquet"):
        load_catalog(tmp_path / "data")


def test_the_build_saves_the_exposure_serving_measured_over_the_users(
    ranked: tuple[Path, Catalog],
) -> None:
    tmp, catalog = ranked
    root = IndexRoot(tmp / "index")
    version = root.require_current()
    manifest = json.loads((root.version_dir(version) / "manifest.json").read_text())
    saved = manifest["stage"]["exposure"]
    assert saved["file"] == EXPOSURE and saved["tower"] == "sequential"
    assert saved["users"] == len(group_histories(catalog.interactions))
    assert EXPOSURE in manifest["files"]  # checksummed and published with the index
    rec = Recommender(tmp / "index", catalog, ranker=GBDTRanker.load(tmp / "ranker"))
    stage = rec._loaded.stage
    assert stage is not None and stage.features.exposure.any()
    measured = exposure(
        stage.tower, stage.index, group_histories(catalog.interactions), stage.features.item_col
    )
    np.testing.assert_array_equal(stage.features.exposure, measured)


def test_log_totals_from_the_tables_equal_the_logs(ranked: tuple[Path, Catalog]) -> None:
    tmp, catalog = ranked
    root = IndexRoot(tmp / "index")
    ids, counts = StageTables.load_counts(root.version_dir(root.require_current()))
    items = list(catalog.items)
    saved, direct = (
        LogStats.of_day_counts(counts, ids, items),
        LogStats.of(catalog.interactions, items),
    )
    assert saved.counts == direct.counts and saved.end == direct.end > 0
    np.testing.assert_array_equal(saved.popularity.counts, direct.popularity.counts)
    assert saved.popularity.top(30) == direct.popularity.top(30)
    assert saved.ratings.global_mean == pytest.approx(direct.ratings.global_mean, rel=1e-12)
    assert saved.ratings.counts == direct.ratings.counts
    assert saved.ratings.sums == pytest.approx(direct.ratings.sums, rel=1e-12)


def test_without_the_log_cold_users_live_events_and_unknown_ids_are_served_as_with_it(
    ranked: tuple[Path, Catalog], redis_url: str, namespace: str
) -> None:
    """(Every stored user's list: ``test_live_events.py``, with and without the log.)"""
    tmp, catalog = ranked
    ranker = GBDTRanker.load(tmp / "ranker")
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    store.write_log(catalog.interactions)
    items = load_catalog(tmp / "data", items_only=True)
    lean = Recommender(tmp / "index", items, ranker=ranker, users=store)
    plain = Recommender(tmp / "index", catalog, ranker=ranker)
    assert not lean.holds_log and len(lean.histories) == 0
    # a user with no readable history gets the same most popular items
    cold = [HistoryEvent("not-an-item", 1)]
    assert [i.item_id for i in lean.recommend(history=cold, k=5).items] == [
        i.item_id for i in plain.recommend(history=cold, k=5).items
    ]
    # a live event reaches the lean process's next call
    t = int(catalog.interactions.timestamps.max()) + 60
    first = lean.recommend("u3", k=10).items[0].item_id
    assert lean.ingest([LiveEvent("lean-1", "u3", HistoryEvent(first, t, 5.0))]).accepted == 1
    assert first not in {i.item_id for i in lean.recommend("u3", k=10).items}
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        lean.recommend("nobody")
    assert lean.store_errors == 0


def test_without_the_log_a_store_outage_serves_popular_items_not_an_error(
    ranked: tuple[Path, Catalog],
) -> None:
    tmp, _ = ranked
    dead = UserStore(connect("redis://127.0.0.1:1", connect_timeout=0.2))
    ranker = GBDTRanker.load(tmp / "ranker")
    lean = Recommender(
        tmp / "index", load_catalog(tmp / "data", items_only=True), ranker=ranker, users=dead
    )
    out = lean.recommend("u3", k=5)
    assert out.fallback == "popularity" and len(out.items) == 5
    assert lean.store_errors >= 1


def test_without_the_log_a_version_without_stage_tables_is_refused(
    ranked: tuple[Path, Catalog], redis_url: str, namespace: str
) -> None:
    tmp, _ = ranked
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    items = load_catalog(tmp / "data", items_only=True)
    with pytest.raises(ValueError, match="carries no ranking-stage tables"):
        Recommender(tmp / "plain", items, users=store)
    with pytest.raises(ValueError, match="carries no ranking-stage tables"):
        Recommender(tmp / "plain", items, ranker=GBDTRanker.load(tmp / "ranker"), users=store)
