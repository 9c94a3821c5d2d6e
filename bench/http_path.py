"""The external-HTTP path of this code against an older commit's, side by side.

    uv run python -m bench.http_path [--old 0db68c5] [--rounds 3] [--jobs 10000]

The older code is exported from git (`git archive <commit> src`) into a
temporary directory and run with this virtual environment (its `src` first on
PYTHONPATH). In each round both APIs run, one after the other (which one goes
first alternates), each as its own `ai-service api` process with
`HTTP_WORKERS=1`, on a fresh database migrated by its own code, on the same
PostgreSQL, with an admin token and the default log level (so the access log
is written, to a file), driven by the same load generator:

  - HTTP batch create: `--create-jobs` jobs in requests of 1,000 (4 in
    flight): jobs/s (they are then cancelled, so that they stay out of the
    claims' way);
  - external workers: `--jobs` no-op jobs, 16 clients each claiming 50 and
    completing them with one `POST /jobs/{id}/complete` per job (4 in flight
    per client): jobs/s from the first claim to the last completion.

Prints every round, the medians and the ratios this code / older code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

from bench._common import admin_url, cpu_seconds, header, service_process
from bench.throughput import create_backlog, external_http
from tests.helpers import url_for_database

OLD_COMMIT = "0db68c5"  # the code before issue 12
REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-http-path-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def exported_source(commit: str) -> Iterator[Path]:
    """`src/` of `commit`, exported into a temporary directory; yields that `src`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="ai-old-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


@contextlib.contextmanager
def database_migrated_by(src: Path | None) -> Iterator[str]:
    """A new database migrated by the code in `src` (None: this checkout), dropped after."""
    admin = admin_url()
    name = f"http_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = url_for_database(admin, name)
    try:
        env = dict(os.environ, DATABASE_URL=url)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        command = [sys.executable, "-m", "ai_service", "migrate"]
        subprocess.run(command, env=env, check=True, capture_output=True)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def measure(src: Path | None, create_jobs: int, jobs: int, log: Path) -> dict[str, float]:
    """Batch create and per-job claim+complete against one API process of the code in `src`.

    Besides jobs/s: the API process's CPU milliseconds per job in each phase.
    """
    pids: list[int] = []
    with (
        database_migrated_by(src) as url,
        service_process(
            "api",
            url,
            "HTTP_PORT",
            src=src,
            log=log,
            pids=pids,
            HTTP_WORKERS="1",
            LOG_LEVEL="info",
            AI_SERVICE_TOKEN=TOKEN,
        ) as base,
    ):
        [pid] = pids
        cpu = cpu_seconds(pid)
        create = await create_backlog(base, create_jobs, headers=AUTH, task_type="bench_create")
        create_cpu = (cpu_seconds(pid) - cpu) * 1000 / create_jobs
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=300) as client:
            answer = await client.post("/api/v1/jobs/cancel", json={"task_type": "bench_create"})
            answer.raise_for_status()
        await create_backlog(base, jobs, headers=AUTH)
        cpu = cpu_seconds(pid)
        complete = await external_http(base, jobs, headers=AUTH)
        complete_cpu = (cpu_seconds(pid) - cpu) * 1000 / jobs
    return {
        "create": create,
        "create_cpu": create_cpu,
        "complete": complete,
        "complete_cpu": complete_cpu,
    }


async def main(old: str, rounds: int, create_jobs: int, jobs: int) -> dict[str, float]:
    header(f"External HTTP path: this code vs {old}, 1 API process, {rounds} rounds")
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with exported_source(old) as old_src, tempfile.TemporaryDirectory() as logs:
        for n in range(rounds):
            order = [("old", old_src), ("new", None)]
            if n % 2:
                order.reverse()
            for name, src in order:
                figures = await measure(src, create_jobs, jobs, Path(logs) / f"{name}.log")
                results[name].append(figures)
                print(
                    f"round {n + 1} {name:3}  batch create {figures['create']:8.0f} jobs/s "
                    f"({figures['create_cpu']:.3f} ms API CPU/job)   claim + complete per job "
                    f"{figures['complete']:6.0f} jobs/s ({figures['complete_cpu']:.3f} ms)",
                    flush=True,
                )
    summary: dict[str, float] = {}
    for kind, label in (("create", "HTTP batch create"), ("complete", "claim + complete/job")):
        for figure, unit in ((kind, "jobs/s"), (f"{kind}_cpu", "ms API CPU/job")):
            old_median = statistics.median(r[figure] for r in results["old"])
            new_median = statistics.median(r[figure] for r in results["new"])
            summary[f"{figure}_old"], summary[f"{figure}_new"] = old_median, new_median
            summary[f"{figure}_ratio"] = new_median / old_median
            print(
                f"{label:22} median: {old} {old_median:9.3f}, this code {new_median:9.3f} "
                f"{unit}: ratio {new_median / old_median:.2f}x"
            )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", default=OLD_COMMIT, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--create-jobs", type=int, default=40_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.old, args.rounds, args.create_jobs, args.jobs))
