"""`duorank users publish`, `events ingest` and `events fold` on a real Redis: the nightly
writer, a file of live events checked line by line before anything is ingested, and the fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from catalog import Catalog, load_catalog, save_catalog
from duorank.cli import EXIT_USAGE, cli
from online import UserStore
from tests.conftest import tiny_catalog


@pytest.fixture
def env(tmp_path: Path, redis_url: str, namespace: str) -> dict[str, str]:
    catalog = tiny_catalog(n_items=10, n_users=3, per_user=4)
    assert isinstance(catalog, Catalog)
    save_catalog(catalog, tmp_path / "data")
    return {
        "DUORANK_HOME": str(tmp_path / "home"),
        "DUORANK_REDIS_URL": redis_url,
        "DUORANK_USERS_NAMESPACE": namespace,
    }


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def test_publish_ingest_and_fold(env: dict[str, str], tmp_path: Path, redis_url: str) -> None:
    data = str(tmp_path / "data")
    code, out = _run(env, "users", "publish", "--data", data, "--json")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["users"] == 3
    lines = [
        {"event_id": "a", "user_id": "u0", "item_id": "7", "timestamp": 9000, "rating": 4.5},
        {"event_id": "b", "user_id": "walk-in", "item_id": 3, "timestamp": 9001, "label": 1},
        {"event_id": "a", "user_id": "u0", "item_id": "7", "timestamp": 9000, "rating": 4.5},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    code, out = _run(env, "events", "ingest", str(events), "--data", data, "--json")
    assert code == 0, out
    assert json.loads(out) == {"events": 3, "accepted": 2, "duplicates": 1}
    store = UserStore(redis.Redis.from_url(redis_url), namespace=env["DUORANK_USERS_NAMESPACE"])
    u0 = store.record("u0")
    assert u0 is not None and u0.history[-1].item_id == "7"

    code, out = _run(env, "events", "fold", "--data", data, "--json")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["events"] == 2
    folded = load_catalog(tmp_path / "data")
    assert (folded.interactions.events == "live").sum() == 2 and "walk-in" in folded.users
    # the index build records which live events the stage's tables hold: serving counts the
    # stream's others on top of them
    from duorank.jobs import StageWriter
    from retrieval.vectors import ItemVectors

    ranker = tmp_path / "ranker"
    ranker.mkdir()
    card = {"kind": "gbdt", "names": [], "record": {"stage": {"als": {"iterations": 1}}}}
    (ranker / "ranker.json").write_text(json.dumps(card))
    (tmp_path / "version").mkdir()
    ids = list(folded.items)
    written = StageWriter(tmp_path / "data", ranker).tables(
        ItemVectors(ids, np.eye(len(ids), dtype=np.float32)), tmp_path / "version"
    )
    assert written["live_mark"] == folded.source["live_mark"] == store.events_mark()
    assert written["live_late"] == [] and written["events"] == len(folded.interactions)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"event_id": "a", "user_id": "u0", "item_id": "7"}',
            "events.jsonl:2: timestamp: Field required",
        ),
        (
            '{"event_id": "a", "user_id": "u0", "item_id": "zz", "timestamp": 1}',
            "events.jsonl:2: item_id 'zz' is not in the catalog",
        ),
        (
            '{"event_id": "a", "user_id": "u0", "item_id": "7", "timestamp": 1, "rating": 9}',
            "events.jsonl:2: rating: Input should be less than or equal to 5",
        ),
        ("not json", "events.jsonl:2: line: Invalid JSON"),
    ],
)
def test_a_bad_line_names_file_line_and_field_and_nothing_is_ingested(
    env: dict[str, str], tmp_path: Path, redis_url: str, line: str, message: str
) -> None:
    good = '{"event_id": "g", "user_id": "u0", "item_id": "7", "timestamp": 1}'
    (tmp_path / "events.jsonl").write_text(f"{good}\n{line}\n")
    code, out = _run(
        env, "events", "ingest", str(tmp_path / "events.jsonl"), "--data", str(tmp_path / "data")
    )
    assert code == EXIT_USAGE
    assert message in out
    store = UserStore(redis.Redis.from_url(redis_url), namespace=env["DUORANK_USERS_NAMESPACE"])
    assert store.live("u0") == []  # checked before anything was ingested


def test_serve_with_workers_refuses_an_empty_index_root_at_once(tmp_path: Path) -> None:
    """A worker that cannot start would be restarted for ever: the parent checks first."""
    from duorank.cli import cli as duorank_cli

    result = CliRunner().invoke(
        duorank_cli,
        [
            "--home",
            str(tmp_path),
            "serve",
            "--port",
            "0",
            "--workers",
            "2",
            "--root",
            str(tmp_path / "none"),
        ],
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert "no published version yet" in result.output


@pytest.mark.parametrize("command", [["users", "publish"], ["recommend-all", "--user-store"]])
def test_a_redis_that_does_not_answer_is_one_line_naming_it(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    down = {**env, "DUORANK_REDIS_URL": "redis://127.0.0.1:1/0"}
    out = tmp_path / "lists"
    extra = ["--out", str(out)] if command[0] == "recommend-all" else []
    result = CliRunner().invoke(cli, [*command, "--data", str(tmp_path / "data"), *extra], env=down)
    assert result.exit_code == 1, result.output
    assert "error: Redis does not answer" in result.output and "127.0.0.1:1" in result.output
    assert "Traceback" not in result.output and not out.exists()
