"""Pickup latency: create -> claimed, with an idle claimer already waiting.

    uv run python -m bench.pickup [--jobs 300]

(a) an external worker long-polling `POST /api/v1/jobs/claim` (`wait_seconds`);
(b) the built-in worker (`ai-service worker`, LISTEN/NOTIFY), create -> running,
    read from the job's `started_at` minus the moment the create was sent.
The API and the worker run as their own processes, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime

import httpx

from bench._common import fresh_database, header, service_process, summary_ms

JOB = {
    "owner_service": "bench",
    "task_type": "noop",
    "model_profile": "none",
    "input": {},
}


async def long_poll(base: str, jobs: int) -> list[float]:
    latencies: list[float] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=60) as creator,
        httpx.AsyncClient(base_url=base, timeout=60) as claimer,
    ):
        sent_at: dict[str, float] = {}

        async def claim_loop() -> None:
            while len(latencies) < jobs:
                r = await claimer.post(
                    "/api/v1/jobs/claim",
                    json={"worker_id": "bench", "wait_seconds": 10, "task_types": ["noop"]},
                )
                now = time.perf_counter()
                for job in r.json()["jobs"]:
                    latencies.append(now - sent_at[job["owner_ref"]])

        task = asyncio.create_task(claim_loop())
        await asyncio.sleep(0.3)  # the claimer is now waiting
        for i in range(jobs):
            await asyncio.sleep(random.uniform(0.01, 0.03))
            ref = f"lp-{i}"
            sent_at[ref] = time.perf_counter()
            (await creator.post("/api/v1/jobs", json=JOB | {"owner_ref": ref})).raise_for_status()
            while len(latencies) <= i:  # noqa: ASYNC110 - a busy wait keeps the timing tight
                await asyncio.sleep(0.001)
        await task
    return latencies


async def built_in(base: str, jobs: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(jobs):
            await asyncio.sleep(random.uniform(0.01, 0.03))
            sent = datetime.now(UTC)
            r = await client.post("/api/v1/jobs", json=JOB | {"owner_ref": f"bi-{i}"})
            job_id = r.json()["id"]
            while True:
                job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                if job["started_at"]:
                    started = datetime.fromisoformat(job["started_at"])
                    latencies.append((started - sent).total_seconds())
                    break
                await asyncio.sleep(0.005)
    return latencies


async def main(jobs: int) -> dict[str, float]:
    header("Pickup latency (create -> claimed), idle claimers")
    with fresh_database("pickup") as url, service_process("api", url, "HTTP_PORT") as base:
        lp = await long_poll(base, jobs)
        print(f"long-poll claimer (HTTP)    {summary_ms(lp)}")
        with service_process("worker", url, "WORKER_HTTP_PORT", WORKER_ID="bench-w"):
            bi = await built_in(base, jobs)
        print(f"built-in worker (NOTIFY)    {summary_ms(bi)}")
    from bench._common import percentile

    p50 = percentile(lp, 50) * 1000
    print(f"long-poll p50 {p50:.1f} ms (target < 20 ms): {'OK' if p50 < 20 else 'MISSED'}")
    return {"long_poll_p50_ms": p50, "built_in_p50_ms": percentile(bi, 50) * 1000}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    asyncio.run(main(parser.parse_args().jobs))
