"""Several worker processes behind one listening socket (`serve --workers N`).

The parent binds the socket, then uvicorn's supervisor spawns N fresh interpreters (never a
fork of a process that loaded torch or OpenMP). Each worker builds its own app through
:func:`app` from what the parent wrote to :data:`SPEC_ENV`: the settings and the serving job.
The workers share nothing but Redis, the index files and the metrics folder
(``PROMETHEUS_MULTIPROC_DIR``), so every worker hot-reloads on its own, and /metrics, whichever
worker answers, sums all of them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from duorank.jobs import ServingJob
from duorank.settings import Settings

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
