"""`ai-service` command line: api, worker, migrate, maintenance, sidecar, dev, jobs."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ai_service import errors
from ai_service.config import Settings, load_settings

DEV_DATA_DIR = Path(".data/pg")
# prometheus_client's variable (`metrics.MULTIPROC_DIR_VARIABLE`): named here so that
# setting it does not import prometheus_client first.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def _settings() -> Settings:
    try:
        return load_settings(os.environ)
    except errors.ConfigError as exc:
        print(f"ai-service: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def metrics_dir(processes: int) -> Iterator[None]:
    """Prometheus multiprocess mode for several API processes, none for one.

    With `processes` > 1: a fresh directory for this run (inside
    PROMETHEUS_MULTIPROC_DIR when that is set, else in the temporary
    directory), named by PROMETHEUS_MULTIPROC_DIR for the processes to come
    and removed when they are done, so that no value of an earlier run is
    added in. Must run before prometheus_client is imported.
    """
    if processes <= 1:
        # One process keeps its metrics in memory; files would only go stale.
        os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
        yield
        return
    parent = os.environ.get(MULTIPROC_DIR_VARIABLE) or None
    path = tempfile.mkdtemp(prefix="ai-service-metrics-", dir=parent)
    os.environ[MULTIPROC_DIR_VARIABLE] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if parent is None:
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
        else:
            os.environ[MULTIPROC_DIR_VARIABLE] = parent


def cmd_api(settings: Settings) -> None:
    with metrics_dir(settings.http_workers):
        _serve_api(settings)


def _serve_api(settings: Settings) -> None:
    import uvicorn

    from ai_service import heap, logs
    from ai_service.api.app import create_app
    from ai_service.api.server import HttpProtocol

    logs.configure(settings)
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        # Over-long URLs get the 414 envelope instead of uvicorn's plain-text 400.
        "http": HttpProtocol,
        "log_config": None,
        "access_log": False,
        # Longer than the longest claim long-poll (30 s), so none is cut off mid-claim.
        "timeout_graceful_shutdown": 35,
    }
    if settings.http_workers > 1:
        # Several processes on one port; each builds its app from the environment.
        if settings.migrate_on_start:
            from ai_service import migrate

            migrate.upgrade(settings.require_database_url())
            os.environ["MIGRATE_ON_START"] = "false"
        uvicorn.run(
            "ai_service.api.app:create_app_from_env",
            factory=True,
            workers=settings.http_workers,
            **options,
        )
    else:
        app = create_app(settings)
        heap.freeze()
        uvicorn.run(app, **options)


def cmd_migrate(settings: Settings) -> None:
    from ai_service import migrate

    migrate.upgrade(settings.require_database_url())
    print("migrations applied", file=sys.stderr)


MAINTENANCE_ACTIONS = {
    "recount": "rebuild the job counters from the jobs table (safe while the service runs)",
}


def cmd_maintenance(settings: Settings, action: str) -> None:
    """Operator actions on a running service's database (see MAINTENANCE_ACTIONS)."""
    import asyncio

    import psycopg

    from ai_service.store import Recount, Store

    async def recount() -> Recount:
        store = await Store.open(settings.require_database_url(), min_size=1, max_size=1, wait=True)
        try:
            return await store.recount_counts()
        finally:
            await store.close()

    started = time.monotonic()
    try:
        result = asyncio.run(recount())
    except errors.AIServiceError as exc:
        print(f"ai-service maintenance {action}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except psycopg.Error as exc:  # e.g. no connection within the pool's timeout
        print(
            f"ai-service maintenance {action}: database unavailable ({type(exc).__name__})",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    lines = [
        f"  {status} {task_type} {model_profile}{f' {category}' if category else ''}: "
        f"{before} -> {after} ({after - before:+d})"
        for (status, task_type, model_profile, category), before, after in result.changes
    ] or [
        # Only the split between owners was off (every total was right).
        f"  owner_service {owner} {status}: {before} -> {after} ({after - before:+d})"
        for (owner, status), before, after in result.owner_changes
    ]
    took = time.monotonic() - started
    print(
        f"recount: {len(result.after)} counters rebuilt from the jobs table "
        f"({sum(result.after.values())} jobs) in {took:.2f} s; {len(lines)} changed"
    )
    for line in lines:
        print(line)


def cmd_worker(settings: Settings) -> None:
    import ai_service.worker.main as worker_main
    from ai_service import heap, logs

    logs.configure(settings)
    heap.freeze()
    worker_main.run(settings)


def cmd_sidecar(settings: Settings) -> None:
    import ai_service.sidecar.main as sidecar_main
    from ai_service import logs

    logs.configure(settings)
    sidecar_main.run(settings)


def cmd_dev(settings: Settings) -> None:
    """Embedded PostgreSQL (when DATABASE_URL is unset) + API + worker in one terminal."""
    from ai_service import embedded_db, migrate

    env = dict(os.environ)
    server = None
    if not settings.database_url:
        print(f"starting embedded PostgreSQL in {DEV_DATA_DIR}/ ...", file=sys.stderr)
        try:
            server = embedded_db.ensure_running(DEV_DATA_DIR)
            env["DATABASE_URL"] = server.url
            print(f"embedded PostgreSQL ready at {server.url}", file=sys.stderr)
            migrate.upgrade(env["DATABASE_URL"])
        except KeyboardInterrupt:
            # pg_ctl starts the server in a session of its own, so Ctrl-C does not reach it.
            embedded_db.EmbeddedPostgres(DEV_DATA_DIR.absolute(), 0).stop()
            raise
    else:
        migrate.upgrade(env["DATABASE_URL"])
    children = [
        subprocess.Popen([sys.executable, "-m", "ai_service", "api"], env=env),
        subprocess.Popen([sys.executable, "-m", "ai_service", "worker"], env=env),
    ]
    print(
        f"API on {settings.http_host}:{settings.http_port}, worker status on "
        f"{settings.worker_http_host}:{settings.worker_http_port}/worker/status "
        "(Ctrl-C stops all)",
        file=sys.stderr,
    )

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.worker_shutdown_timeout + 5
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            server.stop()
            print("embedded PostgreSQL stopped", file=sys.stderr)
    failed = [c.returncode for c in children if c.returncode not in (0, -signal.SIGTERM)]
    if failed and not stopping:
        raise SystemExit(1)


COMMANDS = {
    "api": (cmd_api, "run the HTTP API"),
    "worker": (cmd_worker, "run the built-in workers"),
    "migrate": (cmd_migrate, "apply database migrations and exit"),
    "sidecar": (cmd_sidecar, "run the AI-server telemetry sidecar"),
    "dev": (cmd_dev, "embedded PostgreSQL + API + worker in one terminal"),
}


def version() -> str:
    """The installed package's version (its metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("ai-service")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ai-service", description="Job service for AI workloads. Configured by environment."
    )
    parser.add_argument("--version", action="version", version=f"ai-service {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    maintenance = sub.add_parser("maintenance", help="operator actions on the database")
    actions = maintenance.add_subparsers(dest="action", required=True)
    for name, help_text in MAINTENANCE_ACTIONS.items():
        actions.add_parser(name, help=help_text)
    from ai_service import cli_jobs

    cli_jobs.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "jobs":
        # A client of the API: the service's own settings play no part.
        raise SystemExit(cli_jobs.run(args))
    settings = _settings()
    if args.command in ("api", "worker", "migrate", "maintenance"):
        try:
            settings.require_database_url()
        except errors.ConfigError as exc:
            print(f"ai-service: configuration error: {exc.message}", file=sys.stderr)
            raise SystemExit(2) from None
    try:
        if args.command == "maintenance":
            cmd_maintenance(settings, args.action)
        else:
            COMMANDS[args.command][0](settings)
    except KeyboardInterrupt:
        print(f"ai-service {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
