"""LLM backend saturation: can one worker keep a bounded backend fully busy?

    uv run python -m bench.llm_saturation [--jobs 3000] [--capacity 64] [--latency 0.2]

A stub OpenAI-compatible server on loopback serves at most `capacity`
concurrent requests, each taking `latency` seconds (more queue up), so its
maximum is capacity / latency requests per second. One `ai-service worker`
process with WORKER_CONCURRENCY=capacity drains a backlog of llm_chat jobs;
achieved throughput is jobs / (last finished_at - first started_at).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import psycopg

from bench._common import fresh_database, header, service_process
from tests.stubs.openai_server import OpenAIStub


async def main(jobs: int, capacity: int, latency: float) -> float:
    header(f"LLM backend saturation: {capacity} concurrent x {latency * 1000:.0f} ms stub")
    ideal = capacity / latency
    with (
        fresh_database("llm") as url,
        OpenAIStub(models=["qwen2.5-14b"], latency=latency, max_concurrency=capacity) as stub,
    ):
        with service_process("api", url, "HTTP_PORT") as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                for start in range(0, jobs, 1000):
                    batch = {
                        "defaults": {
                            "owner_service": "bench",
                            "task_type": "llm_chat",
                            "model_profile": "qwen2.5-14b",
                        },
                        "jobs": [
                            {"owner_ref": f"r{i}", "input": {"user": f"job:r{i} hello"}}
                            for i in range(start, min(start + 1000, jobs))
                        ],
                    }
                    (await client.post("/api/v1/jobs/batch", json=batch)).raise_for_status()
        t0 = time.perf_counter()
        with (
            service_process(
                "worker",
                url,
                "WORKER_HTTP_PORT",
                LLM_BASE_URL=stub.base_url,
                WORKER_CONCURRENCY=str(capacity),
                WORKER_ID="bench-llm",
            ),
            psycopg.connect(url) as conn,
        ):
            while True:
                left = conn.execute(
                    "SELECT count(*) FROM jobs WHERE status <> 'completed'"
                ).fetchone()
                if left is not None and left[0] == 0:
                    break
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("jobs did not finish in 10 minutes")
                await asyncio.sleep(0.2)
            row = conn.execute(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs"
            ).fetchone()
        assert row is not None
        span = float(row[0])
        achieved = jobs / span
        once = all(n == 1 for n in stub.deliveries.values()) and len(stub.deliveries) == jobs
        print(
            f"jobs {jobs}, backend max {ideal:.0f} req/s, stub peak concurrency "
            f"{stub.max_in_flight}, each job delivered once: {once}"
        )
        ratio = achieved / ideal
        print(
            f"achieved {achieved:.0f} jobs/s = {ratio:.1%} of the backend maximum "
            f"(target >= 90%): {'OK' if ratio >= 0.9 else 'MISSED'}"
        )
        return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.capacity, args.latency))
