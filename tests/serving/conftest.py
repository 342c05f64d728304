"""The serving suite's module-scoped server over the session's tiny stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.live import LiveServer, Stack, make_server


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[LiveServer]:
    with make_server(stack) as live:
        yield live
