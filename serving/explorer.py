"""The explorer page and the read-only routes it needs, served by the same app as the API.

``/`` is a plain HTML page (``serving/static/``: HTML, CSS and a little JavaScript, no build
step). It holds no data and no secret, so it loads without the token; everything it shows
comes from routes that need the bearer token like the rest of the API, unless the server runs
with ``--public-demo`` (:data:`DEMO_ROUTES` then answer without one):

- ``GET /items?q=``: catalog items whose title contains ``q`` (case-insensitive);
- ``GET /users?q=``: user ids starting with ``q``, with their history length (from the online
  user store's sorted set of ids when the server has one, else the dataset's list);
- ``GET /users/{user_id}``: the user's history, newest first, with titles and ratings;
- ``GET /report``: the committed offline evaluation report (``duorank eval``'s JSON), and
  ``GET /report/plots/{name}`` its PNG plots.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse

from serving.recommender import Recommender

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page's files."""
PLOTS = ("recall", "calibration")
"""The report's plots, written beside its JSON as ``<stem>-<name>.png``."""
PAGE_ROUTES = frozenset({"/", "/static/app.js", "/static/app.css"})
"""Open without the token: the page itself carries no data."""
DEMO_ROUTES = ("/recommend", "/items", "/users", "/report")
"""Paths (and their sub-paths) that ``--public-demo`` opens too."""
REPORT_METRICS = (
    "ndcg@10",
    "recall@10",
    "recall@100",
    "mrr@10",
    "auc",
    "coverage@10",
    "max_item_share@10",
    "cold_max_item_share@10",
    "cold_recall@100",
)
"""The report columns the page shows per method."""
METHOD_ORDER = (
    "popularity",
    "itemknn",
    "als",
    "bpr",
    "ease",
    "sasrec",
    "two_tower_zero_shot",
    "two_tower_finetuned",
    "two_tower_trained",
    "als+reranker",
    "two_tower_trained+reranker",
    "ranking_stage",
)
"""The report's rows from the simplest to what serves: baselines, first stages, second stages."""


def is_open(path: str, public_demo: bool) -> bool:
    """Whether ``path`` answers without the token (besides the probes)."""
    if path in PAGE_ROUTES:
        return True
    return public_demo and any(path == p or path.startswith(p + "/") for p in DEMO_ROUTES)


def explorer_routes(app: FastAPI, recommender: Recommender, report: Path | None) -> None:
    """Adds the page, its search and history routes, and the report's routes to ``app``."""
    _page_routes(app)
    _data_routes(app, recommender)
    _report_routes(app, recommender, report)


def _page_routes(app: FastAPI) -> None:
    """The page itself and its two files (open: they hold no data)."""

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if f"/static/{name}" not in PAGE_ROUTES:
            raise HTTPException(status_code=404, detail="not found")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=kind)


def only_params(*names: str) -> Callable[[Request], None]:
    """A dependency that refuses query parameters other than ``names`` (422 naming the first),
    as the bodies refuse unknown fields: a misspelt ``?limt=5`` must not pass silently."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        extra = [k for k in request.query_params if k not in allowed]
        if extra:
            error = {
                "type": "extra_forbidden",
                "loc": ("query", extra[0]),
                "msg": "Extra inputs are not permitted",
                "input": request.query_params[extra[0]],
            }
            raise RequestValidationError([error])

    return check


def _data_routes(app: FastAPI, recommender: Recommender) -> None:
    """Title search, user search and a user's history."""
    catalog = recommender.catalog
    titles = [(i, it.title.casefold()) for i, it in catalog.items.items()]
    users = sorted(set(catalog.users) | set(recommender.histories), key=_user_key)

    @app.get("/items", dependencies=[Depends(only_params("q", "limit"))])
    async def search_items(
        q: Annotated[str, Query(min_length=1, max_length=200)],
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> dict[str, Any]:
        """Catalog items whose title contains ``q`` (case-insensitive), catalog order."""
        needle = q.casefold()
        found = [i for i, t in titles if needle in t][:limit]
        return {"items": [_item(catalog.items[i]) for i in found]}

    @app.get("/users", dependencies=[Depends(only_params("q", "limit"))])
    async def search_users(
        q: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> dict[str, Any]:
        """User ids starting with ``q`` (all users for an empty ``q``), with history sizes:
        from the online user store's index when the server has one (byte order, live users
        included), else from the dataset's list (numeric ids in numeric order)."""
        store = recommender.users
        if store is not None:
            try:
                found = await anyio.to_thread.run_sync(lambda: store.search(q, limit))
                return {"users": [{"user_id": u, "events": n} for u, n in found]}
            except redis.RedisError as exc:
                log.warning("user search: the store does not answer (%s): the dataset's list", exc)
        listed = [u for u in users if u.startswith(q)][:limit]
        return {
            "users": [
                {"user_id": u, "events": len(recommender.histories.get(u, []))} for u in listed
            ]
        }

    @app.get(
        "/users/{user_id:path}",
        responses={404: {"description": "Unknown user id"}},
        dependencies=[Depends(only_params("limit"))],
    )
    async def user(
        user_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> dict[str, Any]:
        """The user's history, newest first (an id may hold ``/``: the route takes the rest of
        the path, since ``%2F`` arrives decoded)."""
        try:
            state = await anyio.to_thread.run_sync(
                lambda: recommender.user_state(user_id, None, None)
            )
        except KeyError:
            raise HTTPException(status_code=404, detail=f"unknown user id {user_id!r}") from None
        events = sorted(state.history, key=lambda e: -e.timestamp)
        return {
            "user_id": user_id,
            "events": len(events),
            "history": [
                {
                    **_item(catalog.items[e.item_id]),
                    "timestamp": e.timestamp,
                    "rating": e.rating,
                }
                for e in events[:limit]
                if e.item_id in catalog.items
            ],
        }


def _report_routes(app: FastAPI, recommender: Recommender, report: Path | None) -> None:
    """The offline evaluation report (with this server's side of it) and its plots."""
    catalog = recommender.catalog

    @app.get(
        "/report",
        responses={
            404: {"description": "No evaluation report configured"},
            503: {"description": "The report file changed and no longer reads as a report"},
        },
    )
    async def report_summary() -> dict[str, Any]:
        """The offline evaluation report's table, ranking-stage ablations and plots."""
        if report is None or not report.is_file():
            raise HTTPException(status_code=404, detail="no evaluation report (serve --report)")
        try:
            data = read_report(report)
        except ValueError as exc:
            log.warning("%s", exc)
            raise HTTPException(
                status_code=503, detail="the evaluation report is unreadable"
            ) from None
        stage = data.get("ranking_stage") or {}
        methods = data["methods"]
        order = [m for m in METHOD_ORDER if m in methods]
        methods = {m: methods[m] for m in [*order, *(m for m in methods if m not in order)]}
        dataset = data.get("dataset") or {}
        theirs = Path(str(dataset.get("path", ""))).name
        ours = Path(str((catalog.source or {}).get("path", ""))).name
        machine = data.get("machine") or {}
        return {
            "file": report.name,
            "dataset": dataset,
            "date": data.get("date"),
            "commit": data.get("commit"),
            "machine": machine.get("cpu"),
            "cores": machine.get("cores"),
            "best_baseline": data.get("best_baseline"),
            "server": {
                "dataset": ours or None,
                "same_dataset": bool(theirs) and theirs == ours,
                "index_version": recommender.index_version,
                "serves": "ranking_stage"
                if recommender.ranker is not None
                else ("two_tower_trained"),
            },
            "methods": [
                {
                    "method": name,
                    **{k: m.get(k) for k in REPORT_METRICS},
                    "ndcg@10_ci95": m.get("ndcg@10_ci95"),
                    "seeds_mean": (m.get("seeds") or {}).get("ndcg@10_mean"),
                }
                for name, m in methods.items()
            ],
            "ablation": [{"variant": k, **v} for k, v in stage.get("ablation", {}).items()],
            "plots": [p for p in PLOTS if _plot(report, p).is_file()],
        }

    @app.get("/report/plots/{name}", include_in_schema=False)
    async def report_plot(name: str) -> FileResponse:
        if report is None or name not in PLOTS or not _plot(report, name).is_file():
            raise HTTPException(status_code=404, detail="no such plot")
        return FileResponse(_plot(report, name), media_type="image/png")


REPORT_MAX_BYTES = 64 << 20


def read_report(path: Path) -> dict[str, Any]:
    """An evaluation report (``duorank eval``'s JSON): an object whose ``methods`` maps each
    method's name to an object of figures.

    Raises:
        ValueError: naming the file and what is wrong (a Markdown report, say).
    """
    try:
        if path.stat().st_size > REPORT_MAX_BYTES:
            raise ValueError(f"{path}: over {REPORT_MAX_BYTES >> 20} MiB; not a report")
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not an evaluation report (`duorank eval --output FILE.json` writes one): "
            f"{exc}"
        ) from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(m, dict) for m in methods.values()):
        raise ValueError(f"{path}: not an evaluation report (no 'methods' object of figures)")
    stage = data.get("ranking_stage") or {}
    ablation = stage.get("ablation", {}) if isinstance(stage, dict) else None
    machine = data.get("machine") or {}
    if (
        not isinstance(ablation, dict)
        or not all(isinstance(v, dict) for v in ablation.values())
        or not isinstance(machine, dict)
    ):
        raise ValueError(
            f"{path}: not an evaluation report ('ranking_stage' or 'machine' is malformed)"
        )
    report: dict[str, Any] = data
    return report


def _plot(report: Path, name: str) -> Path:
    return report.with_name(f"{report.stem}-{name}.png")


def _item(item: Any) -> dict[str, Any]:
    return {"item_id": item.id, "title": item.title, "genres": list(item.genres)}


def _user_key(user_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others."""
    return (0, int(user_id)) if user_id.isdigit() else (1, user_id)
