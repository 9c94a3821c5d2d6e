"""Long-poll claims (`wait_seconds`) over HTTP: an idle external worker gets a new job
as soon as it exists, and an empty answer only after the wait ran out.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.helpers import job_body

API = "/api/v1"


async def long_claim(
    client: httpx.AsyncClient, wait_seconds: float, **fields: Any
) -> tuple[list[dict[str, Any]], float]:
    """Claim with a wait; returns the jobs and the seconds the call took."""
    start = time.monotonic()
    response = await client.post(
        f"{API}/jobs/claim",
        json={"worker_id": "poller", "wait_seconds": wait_seconds, **fields},
    )
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs, elapsed


async def create(client: httpx.AsyncClient, **overrides: Any) -> tuple[dict[str, Any], float]:
    response = await client.post(f"{API}/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    return response.json(), time.monotonic()


async def test_long_poll_returns_a_job_created_by_another_client_at_once(
    api: httpx.AsyncClient,
) -> None:
    # The waiting claim re-checks the queue once a second anyway; a job created 0.2 s
    # into the wait would then be found only ~0.8 s later. Answering within 0.5 s shows
    # the claim was woken by the new job itself.
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as other:
        for _ in range(3):
            poll = asyncio.create_task(long_claim(api, 5))
            await asyncio.sleep(0.2)
            assert not poll.done()  # the claim is waiting on an empty queue
            job, created_at = await create(other)
            jobs, elapsed = await poll
            answered_after = time.monotonic() - created_at
            assert [j["id"] for j in jobs] == [job["id"]]
            assert jobs[0]["status"] == "running"
            assert jobs[0]["lease_token"]
            assert answered_after < 0.5, answered_after
            assert elapsed < 1.5, elapsed  # well before the 5 s wait ran out


async def test_long_poll_on_an_empty_queue_returns_nothing_after_the_wait(
    api: httpx.AsyncClient,
) -> None:
    jobs, elapsed = await long_claim(api, 1.5)
    assert jobs == []
    assert 1.4 <= elapsed < 3.0, elapsed


async def test_long_poll_picks_up_a_job_whose_run_after_comes_due(
    api: httpx.AsyncClient,
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=1)
    job, _ = await create(api, run_after=due.isoformat())
    jobs, elapsed = await long_claim(api, 5)
    assert [j["id"] for j in jobs] == [job["id"]]
    started = datetime.fromisoformat(jobs[0]["started_at"].replace("Z", "+00:00"))
    assert started >= due - timedelta(milliseconds=50)  # never before its time
    assert 0.5 <= elapsed < 3.0, elapsed


async def test_long_poll_ignores_jobs_of_other_task_types(api: httpx.AsyncClient) -> None:
    poll = asyncio.create_task(long_claim(api, 5, task_types=["transcribe"]))
    await asyncio.sleep(0.2)
    await create(api, task_type="llm_chat")
    await asyncio.sleep(0.9)
    assert not poll.done()  # a job of another type does not end the wait
    # Created just after a once-a-second re-check: only a wake-up answers within 0.5 s.
    wanted, created_at = await create(api, task_type="transcribe", model_profile="whisperx")
    jobs, _ = await poll
    assert [j["id"] for j in jobs] == [wanted["id"]]
    assert time.monotonic() - created_at < 0.5


async def test_one_new_job_goes_to_exactly_one_of_several_long_polls(
    api: httpx.AsyncClient,
) -> None:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=limits) as pollers:
        polls = [asyncio.create_task(long_claim(pollers, 2)) for _ in range(5)]
        await asyncio.sleep(0.3)
        job, _ = await create(api)
        results = await asyncio.gather(*polls)
    winners = [jobs for jobs, _ in results if jobs]
    assert len(winners) == 1
    assert [j["id"] for j in winners[0]] == [job["id"]]
    # The others kept waiting for the rest of their wait, then gave up empty-handed.
    assert all(elapsed >= 1.9 for jobs, elapsed in results if not jobs)


async def test_long_polls_do_not_hold_database_connections(api: httpx.AsyncClient) -> None:
    # More waiting claims than the pool has connections (DB_POOL_MAX=10): other
    # requests must still be served at once.
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=limits) as pollers:
        polls = [
            asyncio.create_task(long_claim(pollers, 3, task_types=["never"])) for _ in range(30)
        ]
        await asyncio.sleep(0.5)
        start = time.monotonic()
        stats = await api.get(f"{API}/stats")
        job, _ = await create(api)
        got = await api.get(f"{API}/jobs/{job['id']}")
        elapsed = time.monotonic() - start
        assert stats.status_code == 200
        assert got.status_code == 200
        assert elapsed < 1.0, elapsed
        results = await asyncio.gather(*polls)
    assert all(jobs == [] for jobs, _ in results)


async def test_a_long_poll_whose_caller_left_takes_no_job(api: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await api.post(
            "/api/v1/jobs/claim",
            json={"worker_id": "gone", "wait_seconds": 3},
            timeout=0.5,
        )
    created = await api.post("/api/v1/jobs", json=job_body(owner_ref="after-leaving"))
    await asyncio.sleep(2)  # longer than the claim loop's 1 s re-check
    job = (await api.get(f"/api/v1/jobs/{created.json()['id']}")).json()
    assert job["status"] == "pending"
    assert job["attempt"] == 0
