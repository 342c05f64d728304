"""A bounded, seeded schemathesis run against a real server on loopback: every operation of
the OpenAPI schema, valid and invalid inputs, every built-in check (no 5xx, documented status
codes and content types, responses matching the schema, invalid data rejected)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from serving.schemas import ServerLimits
from tests.live import LiveServer, Stack, make_server

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 100  # per mode; a fixed budget, derandomized: the same cases every run


@pytest.fixture(scope="module")
def live(stack: Stack) -> Iterator[LiveServer]:
    limits = ServerLimits(max_in_flight=2, max_queue=64)  # the fuzzer must not see 429s
    with make_server(stack, token=TOKEN, limits=limits) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_or_schema_violation(live: LiveServer, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH)
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=live.url, headers=AUTH, timeout=30)
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1

    run()
    assert not any(key.split()[-1].startswith("5") for key in seen), seen
    # Negative mode has nothing to break in the GET routes (no parameters, no body).
    routes = {"/recommend", "/score", "/events"} | (
        {"/healthz", "/metrics"} if mode.is_positive else set()
    )
    assert {key.split()[1] for key in seen} >= routes, seen
