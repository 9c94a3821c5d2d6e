"""Waiting for results: `GET /api/v1/jobs/{id}?wait_seconds=30` by 1,000 callers at once.

    uv run python -m bench.wait [--waiters 1000] [--batch 20] [--interval 0.02]

One API process (its own process, as in production) holds 1,000 waiting
requests, one per job. This process then finishes the jobs as a worker would
(claimed, then completed `--batch` at a time every `--interval` seconds, and
once more all at once) and measures, for each waiter, the time from the
commit of its job's completion to the answer in hand. Target: p99 <= 50 ms.
The API's database connections are counted while the waiters wait: a waiter
holds none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import psycopg

from ai_service.store import Completion, Store
from bench._common import fresh_database, header, percentile, service_process, summary_ms

TARGET_P99 = 0.050
JOB = {"owner_service": "bench", "task_type": "wait", "model_profile": "none", "input": {}}


async def _create(client: httpx.AsyncClient, count: int, tag: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        body = {"defaults": JOB, "jobs": [{"owner_ref": f"{tag}-{start + i}"} for i in range(n)]}
        response = await client.post("/api/v1/jobs/batch", json=body)
        response.raise_for_status()
        ids.extend(item["id"] for item in response.json()["jobs"])
    return ids


async def _api_connections(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'active'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _raw_get(host: str, port: int, path: str) -> bytes:
    """One HTTP/1.1 GET on its own connection, read to the end of the body.

    A thousand connections in one httpx pool cost the client more than the
    server (the pool walks its connections on every request): plain streams
    keep the figure the server's.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return await reader.readexactly(length)
    finally:
        writer.close()


async def run(
    base: str, database_url: str, waiters: int, batch: int, interval: float, tag: str
) -> tuple[list[float], int, int]:
    """Latencies (s) from commit to answer; active database sessions while waiting;
    answers that came before their job finished (must be 0)."""
    url = httpx.URL(base)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        ids = await _create(client, waiters, tag)
    answered: dict[str, float] = {}
    statuses: dict[str, str] = {}

    async def wait(job_id: str) -> None:
        path = f"/api/v1/jobs/{job_id}?wait_seconds=30"
        body = await _raw_get(url.host, url.port or 80, path)
        answered[job_id] = time.perf_counter()
        statuses[job_id] = json.loads(body)["status"]

    tasks = [asyncio.create_task(wait(job_id)) for job_id in ids]
    await asyncio.sleep(3.0)  # every request has arrived and read its job
    active = await _api_connections(database_url)
    store = await Store.open(database_url, min_size=1, max_size=2, wait=True)
    try:
        claimed = await store.claim("bench", limit=waiters, lease_seconds=600, task_types=["wait"])
        committed: dict[str, float] = {}
        for start in range(0, len(claimed), batch):
            chunk = claimed[start : start + batch]
            await store.complete_many(
                [Completion(j.id, j.lease_token, {"n": 1}) for j in chunk if j.lease_token]
            )
            now = time.perf_counter()
            committed.update((str(j.id), now) for j in chunk)
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    early = sum(1 for job_id in ids if statuses[job_id] != "completed")
    latencies = [answered[job_id] - committed[job_id] for job_id in ids if job_id in committed]
    return latencies, active, early


async def main(waiters: int, batch: int, interval: float) -> None:
    header(f"Wait for results: {waiters} concurrent GET ?wait_seconds=30 on one API process")
    with (
        fresh_database("wait") as database_url,
        service_process("api", database_url, "HTTP_PORT", DB_POOL_MAX="10") as base,
    ):
        rows = []
        for label, size, pause in (
            (f"{batch} every {interval * 1000:.0f} ms", batch, interval),
            ("all at once", waiters, 0.0),
        ):
            latencies, active, early = await run(
                base, database_url, waiters, size, pause, label.replace(" ", "")
            )
            p99 = percentile(latencies, 99)
            rows.append((label, latencies, active, early, p99))
        for label, latencies, active, early, p99 in rows:
            verdict = "meets" if p99 <= TARGET_P99 else "MISSES"
            print(
                f"  completions {label:>16}: commit -> answer {summary_ms(latencies)}; "
                f"p99 {p99 * 1000:.1f} ms {verdict} the {TARGET_P99 * 1000:.0f} ms target; "
                f"active database sessions while waiting: {active}; early answers: {early}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    asyncio.run(main(args.waiters, args.batch, args.interval))
