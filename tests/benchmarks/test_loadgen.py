"""`bench serving`'s light load generator against the real HTTP app on loopback: every request
counted once, with its status, latency and the server's stage timings."""

from __future__ import annotations

import socket
import threading

from benchmarks.latency.loadgen import drive
from tests.live import Stack, make_server


def test_every_request_is_answered_and_counted_once(stack: Stack) -> None:
    users = sorted(set(stack.catalog.interactions.user_ids.tolist()))
    answered: list[int] = []
    with make_server(stack) as server:
        out = drive(server.url, users, 3, 14, 60.0, on_answer=lambda: answered.append(1))
        unknown = drive(server.url, ["nobody"], 2, 4, 60.0)
    assert out.codes == [200] * 14 and len(answered) == 14
    assert len(out.latencies) == 14 and all(0 < s < 60 for s in out.latencies)
    assert {"embed", "retrieve", "rerank"} <= set(out.stages)  # the server's own split
    assert all(len(v) == 14 for v in out.stages.values())
    assert out.wall_s >= max(out.latencies)
    assert unknown.codes == [404] * 4 and not unknown.latencies  # only 200s are timed


def test_a_protected_server_answers_401_and_a_closed_connection_counts_as_no_answer(
    stack: Stack,
) -> None:
    with make_server(stack, token="s3cret") as server:
        refused = drive(server.url, ["u1"], 2, 4, 60.0)
    assert refused.codes == [401] * 4
    with socket.socket() as listener:  # accepts, then hangs up without a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        dropped = drive(f"http://127.0.0.1:{port}", ["u1"], 2, 10, 10.0)
        thread.join(timeout=10)
    assert dropped.codes == [0, 0] and not dropped.latencies  # one per connection, then gone
