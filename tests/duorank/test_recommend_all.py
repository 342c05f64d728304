"""`duorank recommend-all`: every user's top k, locally and on Ray actors, equal to the
Recommender called user by user; written as Parquet and to Redis with a TTL."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner

from catalog import Catalog, save_catalog
from duorank.batch import recommend_all, write_parquet, write_redis
from duorank.cli import cli
from duorank.jobs import ServingJob, open_recommender
from duorank.settings import Settings
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import RankedStack, build_ranked_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, RankedStack]:
    base = tmp_path_factory.mktemp("recommend-all")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    save_catalog(catalog, base / "data")
    return base, build_ranked_stack(base, catalog, encoder)


def _job(base: Path, stack: RankedStack) -> ServingJob:
    return ServingJob(base / "data", stack.root, ranker=stack.ranker, backend="torch")


def test_local_and_ray_rows_equal_the_recommender_user_by_user(
    ranked: tuple[Path, RankedStack], local_ray: None
) -> None:
    base, stack = ranked
    settings = Settings.from_env({}, home=base / "home")
    users = sorted(stack.catalog.users)
    with open_recommender(settings, _job(base, stack)) as rec:
        expected = {u: rec.recommend(u, k=5, candidates=8) for u in users}
        version = rec.index_version
    for engine in ("local", "ray"):
        rows, served = recommend_all(
            settings, _job(base, stack), users, k=5, candidates=8, engine=engine, workers=2
        )
        assert served == version
        assert [r["user_id"] for r in rows] == [u for u in users for _ in range(5)]
        for user in users:
            mine = [r for r in rows if r["user_id"] == user]
            items = expected[user].items
            assert [r["item_id"] for r in mine] == [i.item_id for i in items], engine
            assert [r["rank"] for r in mine] == [1, 2, 3, 4, 5]
            assert [r["ranking_score"] for r in mine] == pytest.approx(
                [i.ranking_score for i in items]
            )
            assert [r["p_like"] for r in mine] == pytest.approx([i.p_like for i in items])


def test_parquet_and_redis_outputs(
    ranked: tuple[Path, RankedStack], tmp_path: Path, redis_url: str, namespace: str
) -> None:
    base, stack = ranked
    settings = Settings.from_env({}, home=base / "home")
    users = sorted(stack.catalog.users)[:4]
    rows, version = recommend_all(settings, _job(base, stack), users, k=3, candidates=8)
    path = write_parquet(rows, tmp_path / "recs", {"index_version": version})
    table = pq.read_table(path).to_pylist()
    assert [(r["user_id"], r["rank"], r["item_id"]) for r in table] == [
        (r["user_id"], r["rank"], r["item_id"]) for r in rows
    ]
    manifest = json.loads((tmp_path / "recs" / "manifest.json").read_text())
    assert manifest == {"index_version": version}
    client = redis.Redis.from_url(redis_url)
    assert write_redis(client, rows, ttl=60, prefix=namespace) == 4
    stored = json.loads(client.get(f"{namespace}:{users[0]}") or b"[]")
    assert [s["item_id"] for s in stored] == [r["item_id"] for r in rows[:3]]
    assert 0 < int(client.ttl(f"{namespace}:{users[0]}")) <= 60


def test_the_command_writes_every_users_list(
    ranked: tuple[Path, RankedStack], tmp_path: Path
) -> None:
    base, stack = ranked
    out = tmp_path / "nightly"
    args = ["--data", str(base / "data"), "--root", str(stack.root), "--ranker", str(stack.ranker)]
    result = CliRunner().invoke(
        cli,
        ["--home", str(base / "home"), "recommend-all", *args, "-k", "4", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "recommendations.parquet")
    assert table.num_rows == 4 * len(stack.catalog.users)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["users"] == len(stack.catalog.users) and manifest["engine"] == "local"
    n = len(stack.catalog.users)
    assert f"recommending: {n} users in " in result.output  # the summary, on stderr
    assert f"rows {4 * n:,})" in result.output
    refused = CliRunner().invoke(cli, ["--home", str(base / "home"), "recommend-all", *args])
    assert refused.exit_code == 2 and "--out DIR, --to-redis" in refused.output
    users = tmp_path / "users.txt"
    users.write_text("u1\n\nghost\n")
    flags = ["--users", str(users), "--out", str(out)]
    unknown = CliRunner().invoke(
        cli, ["--home", str(base / "home"), "recommend-all", *args, *flags]
    )
    assert unknown.exit_code == 2
    assert f"{users}:3: value 'ghost': unknown user id" in unknown.output
    assert pq.read_table(out / "recommendations.parquet").num_rows == table.num_rows  # kept


def test_from_the_store_the_command_reads_no_log_and_lists_the_stores_users(
    ranked: tuple[Path, RankedStack], tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """`recommend-all --user-store`: the users from the store's id index (one the dataset does
    not hold too), each worker loading the items alone: the dataset's interactions may be gone,
    and every dataset user's list is the one served from the log."""
    import shutil

    from catalog.text import HistoryEvent
    from online import UserRecord, UserStore

    base, stack = ranked
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    store.write_log(stack.catalog.interactions)
    # published, not a live event: a live one would move every user's counts and clock
    store.write([("walk-in", UserRecord({}, [HistoryEvent("3", 10**9, 5.0)]))])
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    (data / "interactions.parquet").unlink()  # nothing of the log is read
    args = ["--data", str(data), "--root", str(stack.root), "--ranker", str(stack.ranker)]
    env = {"DUORANK_REDIS_URL": redis_url, "DUORANK_USERS_NAMESPACE": namespace}
    out = tmp_path / "nightly"
    home = ["--home", str(base / "home")]
    result = CliRunner().invoke(
        cli, [*home, "recommend-all", *args, "--user-store", "-k", "3", "--out", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "recommendations.parquet").to_pylist()
    users = sorted([*stack.catalog.users, "walk-in"])
    assert [r["user_id"] for r in rows] == [u for u in users for _ in range(3)]
    plain, _ = recommend_all(
        Settings.from_env({}, home=base / "home"),
        _job(base, stack),
        sorted(stack.catalog.users),
        k=3,
        candidates=100,
    )
    assert [(r["user_id"], r["item_id"]) for r in rows if r["user_id"] != "walk-in"] == [
        (r["user_id"], r["item_id"]) for r in plain
    ]
