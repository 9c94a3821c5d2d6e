"""API latency under 32 concurrent clients: create, get and a filtered list.

    uv run python -m bench.api_latency [--seconds 10] [--clients 32]

The API runs as its own process; 32 client coroutines each loop over their
request type for the given time. Prints p50/p99 per request type and the
request rate.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench._common import fresh_database, header, percentile, service_process, summary_ms
from bench._http import Pool

JOB = {"owner_service": "bench", "task_type": "noop", "model_profile": "none", "input": {"x": 1}}


async def run_kind(
    base: str, kind: str, clients: int, seconds: float, ids: list[str]
) -> list[float]:
    samples: list[float] = []
    pool = Pool(base, clients)

    async def loop(n: int) -> None:
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            if kind == "create":
                status, _ = await pool.request(
                    "POST", "/api/v1/jobs", JOB | {"owner_ref": f"c{n}-{i}"}
                )
            elif kind == "get":
                status, _ = await pool.request(
                    "GET", f"/api/v1/jobs/{ids[(n * 7919 + i) % len(ids)]}"
                )
            else:
                status, _ = await pool.request(
                    "GET", "/api/v1/jobs?owner_service=bench&status=pending&limit=20"
                )
            samples.append(time.perf_counter() - t0)
            if status >= 400:
                raise RuntimeError(f"{kind} answered {status}")
            i += 1

    try:
        await asyncio.gather(*(loop(n) for n in range(clients)))
    finally:
        pool.close()
    return samples


async def main(seconds: float, clients: int) -> dict[str, float]:
    header(f"API latency, {clients} concurrent clients, {seconds:g} s per request type")
    figures: dict[str, float] = {}
    with fresh_database("lat") as url, service_process("api", url, "HTTP_PORT") as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            body = {"defaults": JOB, "jobs": [{"owner_ref": f"seed-{i}"} for i in range(1000)]}
            seeded = (await client.post("/api/v1/jobs/batch", json=body)).json()["jobs"]
        ids = [j["id"] for j in seeded]
        for kind in ("create", "get", "list"):
            samples = await run_kind(base, kind, clients, seconds, ids)
            rate = len(samples) / seconds
            print(f"{kind:<7} {summary_ms(samples)}  {rate:7.0f} req/s")
            figures[f"{kind}_p50_ms"] = percentile(samples, 50) * 1000
            figures[f"{kind}_p99_ms"] = percentile(samples, 99) * 1000
            figures[f"{kind}_rps"] = rate
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.clients))
