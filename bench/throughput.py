"""Lifecycle throughput of no-op jobs, side by side with a peer and the hardware limit.

    uv run python -m bench.throughput [--jobs 20000] [--workers 2]

On one PostgreSQL, in one run:
  1. HTTP batch create (1000 per request) of N jobs: jobs/s;
  2. the built-in worker path: `ai-service worker` processes drain the backlog
     (claim + complete, group-committed and fenced): jobs/s from the first
     claim to the last completion (database timestamps), this code and the
     code before this round (`bench._baseline`) alternating, medians of 3;
  3. external workers over HTTP: N jobs claimed (`POST /jobs/claim`, 50 at a
     time) and completed one `POST /jobs/{id}/complete` each, by 16 concurrent
     clients (API with HTTP_WORKERS=1 and =2), and with one batched
     `POST /jobs/complete` per claim: jobs/s;
  4. Procrastinate (bench-only dependency): the same N no-op jobs deferred in
     batches and drained by its async worker;
  5. `pgbench -N` (one-row updates per commit): the commit-rate limit of this
     server.
Ratios: ours / Procrastinate and ours / pgbench TPS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from ai_service.embedded_db import POSTGRES_BIN_PATH
from bench import drain
from bench._baseline import BASELINE, baseline_source, migrate_with
from bench._common import fresh_database, header, service_process
from bench._http import Pool

START_GRACE = 6  # seconds per worker process to start before the backlog is runnable
NOOP = {"owner_service": "bench", "task_type": "noop", "model_profile": "none", "input": {}}


async def create_backlog(
    base: str,
    jobs: int,
    parallel: int = 4,
    headers: dict[str, str] | None = None,
    task_type: str = "noop",
) -> float:
    """Create `jobs` no-op jobs with batch requests; returns jobs/s."""
    batches = [range(start, min(start + 1000, jobs)) for start in range(0, jobs, 1000)]
    queue = list(batches)
    defaults = NOOP | {"task_type": task_type}

    async def sender(client: httpx.AsyncClient) -> None:
        while queue:
            refs = queue.pop()
            body = {"defaults": defaults, "jobs": [{"owner_ref": f"r{i}"} for i in refs]}
            (await client.post("/api/v1/jobs/batch", json=body)).raise_for_status()

    async with httpx.AsyncClient(base_url=base, timeout=120, headers=headers) as client:
        start = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(parallel)))
        return jobs / (time.perf_counter() - start)


async def wait_all_completed(url: str, jobs: int, timeout: float = 900) -> float:
    """Wait until every job is completed; returns jobs/s between first claim and last finish."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            row = await (
                await conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'")
            ).fetchone()
            if row is not None and row[0] >= jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not complete in time")
            await asyncio.sleep(0.1)
        span = await (
            await conn.execute(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs"
            )
        ).fetchone()
    assert span is not None
    return jobs / float(span[0])


async def built_in(
    url: str, jobs: int, workers: int, source: Path | None = None, poll: str | None = None
) -> float:
    """`workers` worker processes drain the backlog; `source`: run that code instead.

    `poll`: their `WORKER_POLL_INTERVAL` (a backlog that becomes runnable later
    wakes no one: it is found by polling).
    """
    env = {"PYTHONPATH": str(source)} if source is not None else {}
    if poll is not None:
        env["WORKER_POLL_INTERVAL"] = poll
    with contextlib.ExitStack() as stack:
        for i in range(workers):
            stack.enter_context(
                service_process(
                    "worker",
                    url,
                    "WORKER_HTTP_PORT",
                    WORKER_ID=f"bench-{i}",
                    WORKER_CLAIM_LIMIT="100",
                    WORKER_CONCURRENCY="400",
                    **env,
                )
            )
        return await wait_all_completed(url, jobs)


async def built_in_beside_old(jobs: int, workers: int, rounds: int) -> tuple[float, float]:
    """The built-in path of this code and of `BASELINE`, alternating: medians (new, old).

    Each round drains the same SQL-seeded backlog on a fresh database (the old
    one with the old schema), so that neither side's API is part of the figure.
    """
    rates: dict[str, list[float]] = {"new": [], "old": []}
    with baseline_source() as old:
        for n in range(rounds):
            # Alternating which goes first: the second of a pair inherits the
            # first's checkpoint and vacuum work.
            pair: list[tuple[str, Path | None]] = [("new", None), ("old", old)]
            for label, source in pair if n % 2 == 0 else pair[::-1]:
                with fresh_database("tp", migrate=source is None) as url:
                    if source is not None:
                        migrate_with(source, url)
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute(drain.SEED, {"jobs": jobs})
                        # Runnable only once every worker is up: the processes start
                        # one after another (each waited for), and a drain that
                        # begins while the others still import measures one worker.
                        conn.execute(
                            "UPDATE jobs SET run_after = now() + make_interval(secs => %s)",
                            [START_GRACE * workers],
                        )
                        conn.execute("VACUUM ANALYZE jobs")
                        conn.execute("CHECKPOINT")
                    rate = await built_in(url, jobs, workers, source, poll="0.05")
                rates[label].append(rate)
                name = "new" if source is None else f"old {BASELINE[:7]}"
                print(f"  round {n + 1} {name:>11}  built-in {rate:8.0f} jobs/s", flush=True)
    return statistics.median(rates["new"]), statistics.median(rates["old"])


async def external_http(
    base: str,
    jobs: int,
    clients: int = 16,
    parallel: int = 4,
    batched: bool = False,
    headers: dict[str, str] | None = None,
) -> float:
    """`clients` external workers, each: claim 50, then complete them one request per
    job (`parallel` at a time), or all 50 in one `POST /jobs/complete` (`batched`)."""
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        pool = Pool(base, parallel, headers)
        try:
            while True:
                status, answer = await pool.request(
                    "POST",
                    "/api/v1/jobs/claim",
                    {"worker_id": f"ext-{n}", "limit": 50, "task_types": ["noop"]},
                )
                if status != 200:
                    raise RuntimeError(f"claim answered {status}")
                claimed = answer["jobs"]
                if not claimed:
                    return
                if batched:
                    await complete_batch(pool, claimed)
                else:
                    await asyncio.gather(*(complete(pool, job) for job in claimed))
                done += len(claimed)
        finally:
            pool.close()

    async def complete(pool: Pool, job: dict[str, str]) -> None:
        status, _ = await pool.request(
            "POST",
            f"/api/v1/jobs/{job['id']}/complete",
            {"lease_token": job["lease_token"], "result": {"ok": True}},
        )
        if status != 200:
            raise RuntimeError(f"complete answered {status}")

    async def complete_batch(pool: Pool, claimed: list[dict[str, str]]) -> None:
        items = [
            {"id": j["id"], "lease_token": j["lease_token"], "result": {"ok": True}}
            for j in claimed
        ]
        status, answer = await pool.request("POST", "/api/v1/jobs/complete", {"jobs": items})
        if status != 200 or answer["rejected"]:
            raise RuntimeError(f"batch complete answered {status}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    elapsed = time.perf_counter() - start
    if done != jobs:
        raise RuntimeError(f"external workers completed {done} of {jobs}")
    return jobs / elapsed


async def procrastinate_rate(url: str, jobs: int) -> float:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(queue="bench", name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, jobs - start))))
        began = time.perf_counter()
        await app.run_worker_async(queues=["bench"], concurrency=32, wait=False)
        elapsed = time.perf_counter() - began
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        ).fetchone()
    if row is None or row[0] != jobs:
        raise RuntimeError(f"procrastinate finished {row} of {jobs} jobs")
    return jobs / elapsed


def pgbench_tps(url: str, seconds: int = 10) -> float:
    parts = urlsplit(url)
    env = dict(os.environ, PGHOST=parts.hostname or "127.0.0.1", PGPORT=str(parts.port or 5432))
    env["PGUSER"] = parts.username or "postgres"
    if parts.password:
        env["PGPASSWORD"] = parts.password
    db = parts.path.lstrip("/")
    bench = str(POSTGRES_BIN_PATH / "pgbench")
    subprocess.run([bench, "-i", "-q", "-s", "10", db], env=env, check=True, capture_output=True)
    out = subprocess.run(
        [bench, "-N", "-c", "8", "-j", "2", "-T", str(seconds), db],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected pgbench output: {out}")
    return float(match.group(1))


async def main(jobs: int, workers: int) -> dict[str, float]:
    header(f"Lifecycle throughput, {jobs:,} no-op jobs, same PostgreSQL")
    figures: dict[str, float] = {}
    with fresh_database("tp") as url, service_process("api", url, "HTTP_PORT") as base:
        figures["create"] = await create_backlog(base, jobs)
        print(f"HTTP batch create              {figures['create']:9.0f} jobs/s")
    figures["built_in"], figures["built_in_old"] = await built_in_beside_old(jobs, workers, 3)
    ratio = figures["built_in"] / figures["built_in_old"]
    print(
        f"built-in workers ({workers} procs)     {figures['built_in']:9.0f} jobs/s "
        f"(old {BASELINE[:7]}: {figures['built_in_old']:.0f}; new / old {ratio:.2f}, "
        f"target >= 0.95: {'OK' if ratio >= 0.95 else 'MISSED'})"
    )
    with fresh_database("tp") as url, service_process("api", url, "HTTP_PORT") as base:
        await create_backlog(base, jobs)
        figures["external_1"] = await external_http(base, jobs)
        print(
            f"external HTTP, complete per job, 1 API process  {figures['external_1']:8.0f} jobs/s"
        )
        await create_backlog(base, jobs)
        figures["external_batched"] = await external_http(base, jobs, batched=True)
        print(
            "external HTTP, batch complete,   1 API process  "
            f"{figures['external_batched']:8.0f} jobs/s"
        )
    with (
        fresh_database("tp") as url,
        service_process("api", url, "HTTP_PORT", HTTP_WORKERS="2") as base,
    ):
        await create_backlog(base, jobs)
        figures["external"] = await external_http(base, jobs)
        print(f"external HTTP, complete per job, 2 API processes {figures['external']:7.0f} jobs/s")
    with fresh_database("proc") as url:
        figures["procrastinate"] = await procrastinate_rate(url, jobs)
        print(f"Procrastinate (async worker)   {figures['procrastinate']:9.0f} jobs/s")
    with fresh_database("pgb") as url:
        figures["pgbench"] = pgbench_tps(url)
        print(f"pgbench -N (commit limit)      {figures['pgbench']:9.0f} TPS")
    print(
        f"built-in / Procrastinate {figures['built_in'] / figures['procrastinate']:.1f}x, "
        f"built-in / pgbench TPS {figures['built_in'] / figures['pgbench']:.2f}, "
        f"external HTTP / Procrastinate {figures['external'] / figures['procrastinate']:.1f}x"
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.workers))
