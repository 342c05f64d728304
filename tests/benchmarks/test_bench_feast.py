"""`bench feast` needs Feast beside the project, which duorank does not install: without it
the benchmark stops with how to get it, before touching Redis."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.bench_feast import _address, _records
from benchmarks.contract import BenchContext
from benchmarks.registry import run_benchmark
from online.codec import decode, encode


@pytest.mark.skipif(importlib.util.find_spec("feast") is not None, reason="Feast is installed")
def test_without_feast_the_benchmark_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeError, match=r"pip install 'feast\[redis\]'"):
        run_benchmark("feast", True, BenchContext(redis_url="redis://127.0.0.1:1/0"))


@pytest.mark.parametrize("url", [None, "unix:///tmp/redis.sock"])
def test_it_needs_a_tcp_redis_both_stores_reach(url: str | None) -> None:
    with pytest.raises(RuntimeError, match="needs a redis:// URL"):
        run_benchmark("feast", True, BenchContext(redis_url=url))


def test_both_stores_hold_the_same_bytes_of_the_same_users() -> None:
    records = _records(50, seed=0)
    assert [u for u, _ in records] == [f"user{n}" for n in range(50)]
    assert records == _records(50, seed=0)  # seeded
    for _, record in records:
        assert len(record.history) == 20
        assert decode(encode(record)) == record  # what either store reads back


def test_a_redis_url_becomes_feasts_host_port_and_db() -> None:
    assert _address("redis://10.0.0.5:6380/3") == ("10.0.0.5", 6380, 3)
    assert _address("redis://127.0.0.1:6379") == ("127.0.0.1", 6379, 0)
