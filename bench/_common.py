"""Shared bench plumbing: a PostgreSQL to measure on, an API to talk to, figures.

By default an embedded PostgreSQL runs from `.data/bench-pg` with its normal
durability settings (fsync on), so figures are honest for a single server.
`BENCH_DATABASE_URL` points at another server instead (needs CREATEDB).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import psycopg

from ai_service import embedded_db
from ai_service import migrate as _migrate
from ai_service.api.app import create_app
from tests.helpers import free_port, make_settings, serve, url_for_database

DATA_DIR = Path(__file__).resolve().parent.parent / ".data" / "bench-pg"


def admin_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        return url
    return embedded_db.ensure_running(DATA_DIR).url


@contextmanager
def fresh_database(prefix: str = "bench", *, migrate: bool = True) -> Iterator[str]:
    """A new database (migrated unless `migrate` is false), dropped afterwards."""
    admin = admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = url_for_database(admin, name)
    try:
        if migrate:
            _migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@asynccontextmanager
async def running_api(database_url: str, **env: str) -> AsyncIterator[str]:
    """The real API app served by uvicorn on loopback; yields its base URL."""
    env.setdefault("RESCUE_INTERVAL", "3600")
    async with serve(create_app(make_settings(database_url, **env))) as base_url:
        yield base_url


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    """p50/p95/p99/max of durations given in seconds, printed in ms."""
    ms = [v * 1000 for v in values]
    return (
        f"p50 {percentile(ms, 50):7.2f} ms  p95 {percentile(ms, 95):7.2f} ms  "
        f"p99 {percentile(ms, 99):7.2f} ms  max {max(ms):7.2f} ms  (n={len(ms)}, "
        f"mean {statistics.fmean(ms):.2f})"
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def header(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


@contextmanager
def service_process(
    command: str,
    database_url: str,
    port_var: str,
    *,
    src: Path | None = None,
    log: Path | None = None,
    pids: list[int] | None = None,
    **env: str,
) -> Iterator[str]:
    """Run `ai-service <command>` as its own process; yields its base URL once ready.

    `src`: run the `ai_service` package found there instead of this checkout's
    (another commit's `src/`, same virtual environment). `log`: the file that
    receives the process's output (else it shares the bench's). `pids`: gets the
    process id appended.
    """
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(
        {
            "DATABASE_URL": database_url,
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "warning",
            "HTTP_HOST": "127.0.0.1",
            "WORKER_HTTP_HOST": "127.0.0.1",
            port_var: str(port),
        }
    )
    full_env.update(env)
    if src is not None:
        full_env["PYTHONPATH"] = str(src)
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "ai_service", command],
            env=full_env,
            stdout=output,
            stderr=output,
        )
    if pids is not None:
        pids.append(proc.pid)
    with running_process(
        proc, f"http://127.0.0.1:{port}", "/readyz", f"ai-service {command}", stop_wait=30
    ) as base:
        yield base


@contextmanager
def running_process(
    proc: subprocess.Popen[bytes], base: str, ready_path: str, what: str, *, stop_wait: float
) -> Iterator[str]:
    """Yield `base` once `GET {base}{ready_path}` answers 200 (30 s at most); then stop
    `proc` with SIGTERM, killing it after `stop_wait` seconds."""
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            try:
                if httpx.get(f"{base}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become ready")
            time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
