"""Several worker processes on one port (`serve --workers N`).

The parent reserves the port, then uvicorn's supervisor spawns N fresh interpreters (never a
fork of a process that loaded torch or OpenMP), each listening on a socket of its own bound to
that port with ``SO_REUSEPORT`` (:class:`SpreadSupervisor`): the kernel spreads new connections
over the workers. (Sharing one listening socket, the worker whose loop was free took every
connection of a burst of kept-alive clients, and the other served none.) Each worker builds
its own app through :func:`app` from what the parent wrote to :data:`SPEC_ENV`: the settings
and the serving job. The workers share nothing but Redis, the index files and the metrics
folder (``PROMETHEUS_MULTIPROC_DIR``), so every worker hot-reloads on its own, and /metrics,
whichever worker answers, sums all of them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

from duorank.jobs import ServingJob
from duorank.settings import Settings


class SpreadSupervisor(Multiprocess):
    """uvicorn's supervisor (restarts, signals, health checks), each worker it starts on a new
    listening socket from ``bind`` (``SO_REUSEPORT`` on the shared port). The parent closes its
    copy once the worker has started (the spawned child holds its own), so a worker that dies
    takes its socket out of the kernel's spread. It relies on uvicorn's ``Multiprocess``
    reading ``self.sockets`` for each worker it starts (the workers test would see a worker
    left without calls)."""

    def __init__(self, config: Config, bind: Callable[[], socket.socket]) -> None:
        self._bind = bind
        self._handed: list[socket.socket] = []
        super().__init__(config, sockets=[])

    @property
    def sockets(self) -> list[socket.socket]:
        """A fresh socket for each worker the supervisor starts."""
        sock = self._bind()
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, value: list[socket.socket]) -> None:
        """uvicorn's shared list is not used."""

    def _release(self) -> None:
        while self._handed:
            self._handed.pop().close()

    def init_processes(self) -> None:
        super().init_processes()
        self._release()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._release()

    def restart_all(self) -> None:
        super().restart_all()
        self._release()

    def handle_ttin(self) -> None:
        super().handle_ttin()
        self._release()


SPEC_ENV = "DUORANK_SERVE_SPEC"
"""The environment variable that carries a worker's settings and job (JSON, no token: the
token stays in ``DUORANK_API_TOKEN``)."""
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's folder of per-process values, read when it is imported."""

_open: contextlib.ExitStack | None = None


def spec(
    settings: Settings,
    job: ServingJob,
    limits: dict[str, Any],
    report: Path | None,
    public_demo: bool,
) -> str:
    """What every worker needs to build the same app, as JSON."""
    public = {f.name: str(getattr(settings, f.name)) for f in fields(settings)}
    public.pop("api_token")
    return json.dumps(
        {
            "settings": public,
            "job": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(job).items()},
            "limits": limits,
            "report": str(report) if report else None,
            "public_demo": public_demo,
        }
    )


def app() -> Any:
    """The uvicorn factory each worker calls: the Recommender and the app, from
    :data:`SPEC_ENV` (the Recommender stays open until the worker exits)."""
    global _open
    from duorank.jobs import open_recommender
    from serving.http import create_app
    from serving.schemas import ServerLimits

    raw = json.loads(os.environ[SPEC_ENV])
    settings = Settings.from_env(**raw["settings"])
    paths = {f.name for f in fields(ServingJob) if f.type in ("Path | None", Path)}
    values: dict[str, Any] = {
        k: (Path(v) if k in paths and v is not None else v) for k, v in raw["job"].items()
    }
    job = ServingJob(**values)
    _open = contextlib.ExitStack()
    atexit.register(_open.close)
    recommender = _open.enter_context(open_recommender(settings, job))
    shared = os.environ.get(METRICS_ENV)
    return create_app(
        recommender,
        token=settings.api_token,
        limits=ServerLimits(**raw["limits"]),
        report=Path(raw["report"]) if raw["report"] else None,
        public_demo=raw["public_demo"],
        metrics_dir=Path(shared) if shared else None,
    )
