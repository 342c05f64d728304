"""`duorank recommend`, `serve` and `recommend-all`: the online path, from a terminal or over
HTTP, and every user's list precomputed."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from duorank.cli.options import (
    backend_option,
    data_option,
    print_table,
    reranker_option,
    root_option,
)
from duorank.settings import Settings

if TYPE_CHECKING:  # `--help` loads none of serving
    from duorank.jobs import ServingJob
    from serving.recommender import Recommendation

log = logging.getLogger("duorank")
F = TypeVar("F", bound=Callable[..., Any])


def idle_threads_sleep() -> None:
    """A serving process runs three OpenMP pools (torch's, FAISS's, LightGBM's) one after the
    other on the same cores; by default each spins after its work, on the cores the next
    stage needs (a served call's p95 was 5x its median from it). Idle threads sleep instead,
    unless the environment says otherwise. OpenMP reads this when it loads: call it before
    anything imports torch, FAISS or LightGBM."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores for its OpenMP and BLAS pools (torch, FAISS,
    LightGBM), set in the environment the workers inherit unless it already says. Left at
    every core, N workers run N pools of that many threads on the same cores: a parallel
    region waits for a thread the other worker's holds, and on 2 cores two workers served
    fewer calls than one (27 against 64 a second at 16 clients, `bench serving`)."""
    share = max(1, (os.cpu_count() or 1) // workers)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(share))
    return share


def serving_options(fn: F) -> F:
    """--data, --root, --reranker, --ranker, --backend and --text-users, shared by both
    commands."""
    for option in reversed(
        (
            data_option(
                required=False, help="Dataset folder (default: HOME/datasets/ml-latest-small)."
            ),
            root_option("Index root."),
            reranker_option,
            click.option(
                "--ranker",
                "ranker_path",
                type=click.Path(path_type=Path, exists=True, file_okay=False),
                default=None,
                help="Ranking stage folder (`train ranker`; default: HOME/models/ranker when "
                "present). It orders every source's candidates where its card chose it on "
                "validation; the reranker then only scores P(like) of the k returned.",
            ),
            click.option("--no-ranker", is_flag=True, help="Serve without the ranking stage."),
            backend_option(),
            click.option(
                "--user-store",
                is_flag=True,
                help="Read each user's profile and newest events from the online user store in "
                "Redis (`users publish`; DUORANK_REDIS_URL, else the embedded server) and take "
                "live events (POST /events, `events ingest`).",
            ),
            click.option(
                "--text-users",
                is_flag=True,
                help="For index versions without a trained tower: embed users from their "
                "profile and history text with the index's text model (DUORANK_MODEL), "
                "through the Redis cache, instead of pooling item vectors.",
            ),
        )
    ):
        fn = option(fn)
    return fn


def list_size_options(fn: F) -> F:
    """-k and --candidates, shared by `recommend` and `recommend-all`."""
    fn = click.option(
        "--candidates",
        type=click.IntRange(min=1, max=5000),
        default=100,
        show_default=True,
        help="The tower's candidates per user (the ranking stage adds the other sources').",
    )(fn)
    return click.option(
        "-k", "k", type=click.IntRange(min=1, max=1000), default=10, show_default=True
    )(fn)


def serving_job(*, fallback: bool = False, **options: Any) -> ServingJob:
    """The :class:`duorank.jobs.ServingJob` of :func:`serving_options`' values."""
    from duorank.jobs import ServingJob

    return ServingJob(
        options["data_path"],
        options["root"],
        options["reranker_path"],
        options["backend"],
        options["text_users"],
        fallback=fallback,
        ranker=options["ranker_path"],
        use_ranker=not options["no_ranker"],
        user_store=options["user_store"],
    )


@click.command()
@click.option("--user", "user_id", required=True, help="User id from the dataset.")
@list_size_options
@serving_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def recommend(
    settings: Settings,
    /,
    user_id: str,
    k: int,
    candidates: int,
    as_json: bool,
    **serving: Any,
) -> None:
    """Recommend items for a user: retrieve candidates, rerank, print a table."""
    idle_threads_sleep()
    from dataclasses import asdict

    from duorank.jobs import open_recommender

    job = serving_job(**serving)
    with open_recommender(settings, job) as recommender:
        result = recommender.recommend(user_id, k=k, candidates=max(candidates, k))
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    print_recommendation(result)


def print_recommendation(result: Recommendation) -> None:
    """A recommendation as a table (sorted by its ranking score, the first column of scores)
    with which part served it and why, the version, fallback and stage timings."""
    click.echo(
        f"index version {result.index_version}; served by the {result.served_by}: "
        f"{result.served_because}" + (f"; fallback: {result.fallback}" if result.fallback else "")
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    print_table(
        [
            {
                "rank": n + 1,
                "item": it.item_id,
                "title": it.title[:50],
                "ranking score": it.ranking_score,
                "first stage": it.first_stage_score,
                "P(like)": it.p_like,
            }
            for n, it in enumerate(result.items)
        ]
    )
    click.echo(
        "timings (ms): " + ", ".join(f"{name} {ms:.1f}" for name, ms in result.timings_ms.items())
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@serving_options
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Model calls running at once.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Calls waiting beyond that; more get 429.",
)
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0, max=86_400, min_open=True),
    callback=lambda ctx, param, value: _finite(ctx, param, value),
    default=5.0,
    show_default=True,
    help="Seconds between checks of the index root's CURRENT (above 0).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse to start when the CURRENT version fails verification (exit 4) instead of "
    "serving the newest version that verifies (logged, /readyz and a metric say so).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The evaluation report (`duorank eval` JSON) the explorer page shows "
    "(default: the committed ml-latest-small report, when installed from a checkout).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Worker processes behind the one port, each with its own Recommender; they share "
    "Redis, the index files and the metrics (/metrics sums them).",
)
@click.option(
    "--public-demo",
    is_flag=True,
    help="The explorer page's data and /recommend answer without the token (a read-only "
    "demo); /score, /metrics and /docs still need it, so DUORANK_API_TOKEN must be set.",
)
@click.pass_obj
def serve(
    settings: Settings,
    /,
    host: str,
    port: int,
    max_in_flight: int,
    max_queue: int,
    reload_interval: float,
    strict: bool,
    report: Path | None,
    workers: int,
    public_demo: bool,
    **serving: Any,
) -> None:
    """Serve the HTTP API and the explorer page at / (token from DUORANK_API_TOKEN, if set)."""
    idle_threads_sleep()
    import uvicorn

    import benchmarks
    from duorank.jobs import open_recommender
    from serving.explorer import read_report
    from serving.http import create_app
    from serving.schemas import ServerLimits

    if public_demo and not settings.api_token:
        raise click.UsageError(
            "--public-demo opens the page's routes without the token and needs one to keep "
            "/score, /metrics and /docs closed: set DUORANK_API_TOKEN"
        )
    if report is not None:
        try:
            read_report(report)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--report") from None

    # before loading anything: a port in use fails in a second (with workers, only reserved
    # here: each worker listens on a socket of its own on this port)
    if workers > 1:  # refused while any server holds the port, one sharing it so included
        probe = bind(host, port, listen=False)
        port = probe.getsockname()[1]
        probe.close()
    sock = bind(host, port, listen=workers == 1, reuse_port=workers > 1)
    if not settings.api_token and not is_loopback(host):
        message = (
            f"WARNING: serving on {host} with no token: anyone who can reach this host can "
            "call every route; set DUORANK_API_TOKEN"
        )
        click.secho(message, err=True, fg="red", bold=True)
        log.warning(message)
    job = serving_job(fallback=not strict, **serving)
    limits = ServerLimits(
        max_in_flight=max_in_flight, max_queue=max_queue, reload_interval_s=reload_interval
    )
    report = report or _committed_report(Path(benchmarks.__file__).parent)
    if workers > 1:
        with sock:
            _serve_workers(settings, job, limits, report, public_demo, workers, sock)
        return
    with sock, open_recommender(settings, job) as recommender:
        app = create_app(
            recommender,
            token=settings.api_token,
            limits=limits,
            report=report,
            public_demo=public_demo,
        )
        log.info(
            "serving index %s on http://%s:%d (auth: %s); the explorer page is at /",
            recommender.index_version,
            host,
            sock.getsockname()[1],
            ("bearer token" if settings.api_token else "off")
            + (", public demo" if public_demo else ""),
        )
        config = uvicorn.Config(app, log_level=settings.log_level.lower())
        uvicorn.Server(config).run(sockets=[sock])


def _serve_workers(
    settings: Settings,
    job: Any,
    limits: Any,
    report: Path | None,
    public_demo: bool,
    workers: int,
    sock: socket.socket,
) -> None:
    """``workers`` fresh processes on ``sock`` under uvicorn's supervisor (it restarts a worker
    that dies); their metrics in a folder of their own, removed afterwards."""
    import dataclasses
    import shutil
    import tempfile

    import uvicorn

    from duorank.workers import METRICS_ENV, SPEC_ENV, SpreadSupervisor, spec
    from indexer import IndexRoot, VerifyError

    # What one process would refuse at start-up, refused here once: a worker that cannot
    # start would be restarted by the supervisor for ever.
    try:
        IndexRoot(job.root or settings.layout.index).require_current()
    except VerifyError:
        if not job.fallback:  # --strict; without it each worker serves the newest that verifies
            raise

    threads_per_worker(workers)
    own_dir = METRICS_ENV not in os.environ
    shared = os.environ.get(METRICS_ENV) or tempfile.mkdtemp(prefix="duorank-metrics-")
    os.environ[METRICS_ENV] = shared
    os.environ[SPEC_ENV] = spec(settings, job, dataclasses.asdict(limits), report, public_demo)
    config = uvicorn.Config(
        "duorank.workers:app",
        factory=True,
        workers=workers,
        log_level=settings.log_level.lower(),
    )
    log.info(
        "serving on http://%s:%d with %d workers (auth: %s)",
        *sock.getsockname()[:2],
        workers,
        "bearer token" if settings.api_token else "off",
    )
    try:
        host, port = sock.getsockname()[:2]
        SpreadSupervisor(config, lambda: bind(host, port, reuse_port=True)).run()
    finally:
        if own_dir:
            shutil.rmtree(shared, ignore_errors=True)


@click.command(name="recommend-all")
@click.option(
    "--users",
    "users_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="A file of user ids, one per line (default: every user of the dataset, or with "
    "--user-store every user of the store).",
)
@list_size_options
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write OUT/recommendations.parquet and OUT/manifest.json (replaced atomically).",
)
@click.option(
    "--to-redis",
    is_flag=True,
    help="Write each user's list to Redis (--redis-url) as JSON under duorank:recs:<user>.",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=86_400 * 2,
    show_default=True,
    help="Seconds before a list written with --to-redis expires (two nightly runs).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where users are served: this process, or Ray actors (each opens the Recommender once).",
)
@click.option("--ray-address", default=None, help="With --engine ray: 'auto' joins a cluster.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=2, show_default=True)
@serving_options
@click.pass_obj
def recommend_all_cmd(
    settings: Settings,
    /,
    users_path: Path | None,
    k: int,
    candidates: int,
    out: Path | None,
    to_redis: bool,
    ttl: int,
    engine: str,
    ray_address: str | None,
    ray_workers: int,
    **serving: Any,
) -> None:
    """Precompute every user's top k (nightly), as Parquet and/or Redis keys with a TTL."""
    idle_threads_sleep()
    from catalog import load_catalog
    from catalog.fsutil import RECOMMENDATIONS, check_replaceable
    from catalog.progress import Progress
    from duorank.batch import manifest_of, recommend_all, user_ids, write_parquet, write_redis
    from retrieval.redis_client import connect

    if out is None and not to_redis:
        raise click.UsageError("give --out DIR, --to-redis, or both")
    if to_redis and not settings.redis_url:
        raise click.UsageError("--to-redis needs --redis-url (a Redis the site reads)")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.UsageError("--engine ray needs Ray: pip install 'duorank[ray]'") from None
    job = serving_job(**serving)
    data = serving["data_path"] or settings.layout.dataset()
    if out is not None:  # before hours of work: never a folder that is not ours to replace
        inputs = [data, serving["root"] or settings.layout.index]
        check_replaceable(out, RECOMMENDATIONS, [*inputs, *([users_path] if users_path else [])])
    if serving["user_store"]:  # the store's users, live-only ones too; no log read
        from duorank.app import runtime
        from online import UserStore

        with runtime(settings) as rt:
            everyone = list(UserStore(rt.cache.client, settings.users_namespace).ids())
    else:
        catalog = load_catalog(data)
        everyone = sorted(set(catalog.interactions.user_ids.tolist()) | set(catalog.users))
    users = user_ids(users_path, everyone)
    with Progress("recommending", len(users), "users") as progress:
        rows, version = recommend_all(
            settings,
            job,
            users,
            k=k,
            candidates=candidates,
            engine=engine,
            workers=ray_workers,
            address=ray_address,
            progress=progress,
        )
    click.echo(progress.summary(rows=len(rows)), err=True)
    manifest = manifest_of(version, len(users), k, candidates, engine)
    if out is not None:
        click.echo(f"wrote {write_parquet(rows, out, manifest)} ({len(rows)} rows)")
    if to_redis:
        written = write_redis(connect(settings.redis_url), rows, ttl)
        click.echo(f"wrote {written} lists to Redis (TTL {ttl} s)")


def bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``host``:``port``, or a usage error (exit 2) that says why.

    ``reuse_port``: bound with ``SO_REUSEPORT``, so that every worker can listen on a socket
    of its own on the same port (the kernel spreads new connections over them); ``listen``
    False only reserves the port (a socket that does not listen is handed no connection).

    Raises:
        click.UsageError: the port is in use, not ours to take, or the host is unknown.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise click.UsageError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        if not hasattr(socket, "SO_REUSEPORT"):
            sock.close()
            raise click.UsageError("--workers needs SO_REUSEPORT (Linux); serve one process")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise click.UsageError(
                f"port {port} is in use on {host} (another server?); choose one with --port"
            ) from None
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Refuses nan, which passes every range check."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
    return value


def _committed_report(benchmarks_dir: Path) -> Path | None:
    """The committed ml-latest-small report, where the benchmarks' results folder exists (an
    install from a checkout)."""
    path = benchmarks_dir / "results" / "eval-ml-latest-small.json"
    return path if path.is_file() else None


COMMANDS = [recommend, serve, recommend_all_cmd]
