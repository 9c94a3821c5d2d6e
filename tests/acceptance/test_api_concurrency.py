"""Many HTTP workers claiming from one queue at once: every job goes to exactly one."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from tests.helpers import job_body

API = "/api/v1"
JOBS = 10_000
BATCH = 1_000
CLAIMERS = 200
CLAIM_LIMIT = 5
MAX_503 = 2_000


async def test_200_concurrent_http_claimers_over_10000_jobs_claim_every_job_exactly_once(
    api: httpx.AsyncClient,
) -> None:
    # Up to 200 connections at once, none kept alive between requests: httpcore scans
    # every pooled connection on each request (quadratic at 200), and an idle pooled
    # connection can race the server's 5 s keep-alive close on a busy machine.
    limits = httpx.Limits(max_connections=CLAIMERS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=api.base_url, limits=limits, timeout=60) as client:
        defaults = {k: v for k, v in job_body().items() if k != "owner_ref"}
        created: set[str] = set()
        for batch in range(JOBS // BATCH):
            items = [{"owner_ref": f"call/{batch}/{i}"} for i in range(BATCH)]
            response = await client.post(
                f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items}
            )
            assert response.status_code == 201, response.text
            assert response.json()["created"] == BATCH
            created.update(item["id"] for item in response.json()["jobs"])
        assert len(created) == JOBS

        claims: list[tuple[str, str]] = []  # (job id, claimer)
        failures: list[str] = []
        calls = 0
        overloaded = [0]  # 503 answers retried

        async def claimer(n: int) -> None:
            nonlocal calls
            worker = f"claimer-{n}"
            while True:
                calls += 1
                response = await client.post(
                    f"{API}/jobs/claim", json={"worker_id": worker, "limit": CLAIM_LIMIT}
                )
                if response.status_code == 503 and overloaded[0] < MAX_503:
                    # Pool exhausted on a loaded machine: nothing was claimed; a worker
                    # retries. (Exiting instead would leave idle keep-alive connections
                    # that the server closes under other claimers' feet.)
                    overloaded[0] += 1
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code != 200:
                    failures.append(f"{worker}: {response.status_code} {response.text[:200]}")
                    return
                jobs: list[dict[str, Any]] = response.json()["jobs"]
                if not jobs:
                    return
                assert len(jobs) <= CLAIM_LIMIT
                for job in jobs:
                    assert job["status"] == "running"
                    assert job["worker_id"] == worker
                    claims.append((job["id"], worker))

        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(claimer(n) for n in range(CLAIMERS))), 120)
        elapsed = time.monotonic() - start

        assert not failures, failures[:10]
        ids = Counter(job_id for job_id, _ in claims)
        twice = [job_id for job_id, n in ids.items() if n > 1]
        assert not twice, f"{len(twice)} jobs claimed more than once"
        assert len(claims) == JOBS
        assert set(ids) == created
        # Work spread over many claimers, not one winner.
        assert len({worker for _, worker in claims}) > CLAIMERS // 2
        stats = (await client.get(f"{API}/stats")).json()
        assert stats["by_status"]["running"] == JOBS
        assert stats["by_status"]["pending"] == 0
        # The database agrees on who holds each job.
        sample = [job_id for job_id, _ in claims[:: JOBS // 20]]
        holders = dict(claims)
        for job_id in sample:
            job = (await client.get(f"{API}/jobs/{job_id}")).json()
            assert job["worker_id"] == holders[job_id]
            assert job["attempt"] == 1
        print(
            f"\n{JOBS} jobs claimed by {CLAIMERS} HTTP claimers in {elapsed:.2f} s"
            f" ({calls} calls, {overloaded[0]} answered 503 and were retried)"
        )
