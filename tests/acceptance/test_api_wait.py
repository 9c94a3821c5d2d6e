"""`GET /api/v1/jobs/{id}?wait_seconds=N`: the answer comes as soon as the job is
completed, failed or cancelled (woken by the finished-jobs notification), else with
the current state once N seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.helpers import job_body

API = "/api/v1"


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def timed_get(
    client: httpx.AsyncClient, job_id: str, wait_seconds: float
) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await client.get(f"{API}/jobs/{job_id}", params={"wait_seconds": wait_seconds})
    return response, time.monotonic() - start


async def claim(client: httpx.AsyncClient, task_type: str) -> dict[str, Any]:
    response = await client.post(
        f"{API}/jobs/claim", json={"worker_id": "w", "task_types": [task_type]}
    )
    [job] = response.json()["jobs"]
    return job  # type: ignore[no-any-return]


async def test_a_wait_answers_as_soon_as_the_job_completes(api: httpx.AsyncClient) -> None:
    job = await create(api, task_type="wait-complete")
    claimed = await claim(api, "wait-complete")
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as other:
        waiting = asyncio.create_task(timed_get(other, job["id"], 20))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # a running job keeps the wait open
        done = await api.post(
            f"{API}/jobs/{job['id']}/complete",
            json={"result": {"text": "hi"}, "lease_token": claimed["lease_token"]},
        )
        completed_at = time.monotonic()
        assert done.status_code == 200, done.text
        response, elapsed = await waiting
    answered_after = time.monotonic() - completed_at
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["result"] == {"text": "hi"}
    # Woken by the notification, not by the 20 s deadline.
    assert answered_after < 1.0, answered_after
    assert elapsed < 5, elapsed


async def test_a_wait_on_an_unfinished_job_answers_its_state_after_the_wait(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api, task_type="wait-idle")
    response, elapsed = await timed_get(api, job["id"], 1.2)
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert 1.1 <= elapsed < 3.0, elapsed


async def test_a_finished_job_answers_at_once(api: httpx.AsyncClient) -> None:
    job = await create(api, task_type="wait-done")
    await api.post(f"{API}/jobs/{job['id']}/cancel")
    response, elapsed = await timed_get(api, job["id"], 20)
    assert response.json()["status"] == "cancelled"
    assert elapsed < 2, elapsed


async def test_a_wait_of_zero_answers_at_once(api: httpx.AsyncClient) -> None:
    job = await create(api, task_type="wait-zero")
    response, _ = await timed_get(api, job["id"], 0)
    assert response.status_code == 200
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize("ending", ["fail", "cancel", "bulk-cancel", "mirror-complete"])
async def test_every_final_transition_wakes_the_waiter(api: httpx.AsyncClient, ending: str) -> None:
    task_type = f"wait-{ending}"
    job = await create(api, task_type=task_type, max_attempts=1)
    if ending == "fail":
        claimed = await claim(api, task_type)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as other:
        waiting = asyncio.create_task(timed_get(other, job["id"], 20))
        await asyncio.sleep(0.5)
        if ending == "fail":
            ended = await api.post(
                f"{API}/jobs/{job['id']}/fail",
                json={
                    "category": "bad_input",
                    "message": "no",
                    "lease_token": claimed["lease_token"],
                },
            )
            expected = "failed"
        elif ending == "cancel":
            ended = await api.post(f"{API}/jobs/{job['id']}/cancel")
            expected = "cancelled"
        elif ending == "bulk-cancel":
            # A bulk action reports a sample of ids: every waiter looks again.
            ended = await api.post(f"{API}/jobs/cancel", json={"task_type": task_type})
            expected = "cancelled"
        else:  # the mirror path: the caller did the work itself
            ended = await api.post(f"{API}/jobs/{job['id']}/complete", json={"result": {}})
            expected = "completed"
        ended_at = time.monotonic()
        assert ended.status_code == 200, ended.text
        response, _ = await waiting
    assert response.json()["status"] == expected
    assert time.monotonic() - ended_at < 1.0


async def test_a_retried_job_keeps_the_wait_open(api: httpx.AsyncClient) -> None:
    # A failed attempt with attempts left goes back to pending: not final, still waiting.
    job = await create(api, task_type="wait-retry", max_attempts=3)
    claimed = await claim(api, "wait-retry")
    waiting = asyncio.create_task(timed_get(api, job["id"], 1.5))
    await asyncio.sleep(0.3)
    failed = await api.post(
        f"{API}/jobs/{job['id']}/fail",
        json={
            "category": "timeout",
            "message": "slow",
            "lease_token": claimed["lease_token"],
        },
    )
    assert failed.json()["status"] == "pending"
    response, elapsed = await waiting
    assert response.json()["status"] == "pending"
    assert elapsed >= 1.4


async def test_many_waiters_hold_no_database_connection(api: httpx.AsyncClient) -> None:
    # 200 waiting requests, a pool of 10 connections: other calls are served at once,
    # and one completion answers exactly its own waiters.
    jobs = [await create(api, task_type="wait-many", owner_ref=f"m{i}") for i in range(20)]
    limits = httpx.Limits(max_connections=250)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=limits) as waiters:
        waits = [asyncio.create_task(timed_get(waiters, jobs[i % 20]["id"], 4)) for i in range(200)]
        await asyncio.sleep(1.0)
        start = time.monotonic()
        stats = await api.get(f"{API}/stats")
        assert stats.status_code == 200
        assert time.monotonic() - start < 1.0
        target = jobs[0]["id"]
        await api.post(f"{API}/jobs/{target}/cancel")
        results = await asyncio.gather(*waits)
    for i, (response, elapsed) in enumerate(results):
        if jobs[i % 20]["id"] == target:
            assert response.json()["status"] == "cancelled"
            assert elapsed < 3.5
        else:
            assert response.json()["status"] == "pending"
            assert elapsed >= 3.9


@pytest.mark.parametrize("value", ["31", "-1", "abc", "nan", "inf", ""])
async def test_a_bad_wait_is_refused_naming_the_parameter(
    api: httpx.AsyncClient, value: str
) -> None:
    job = await create(api, task_type="wait-bad")
    response = await api.get(f"{API}/jobs/{job['id']}", params={"wait_seconds": value})
    assert response.status_code == 422, response.text
    assert "wait_seconds" in response.text


async def test_a_wait_for_an_unknown_job_is_a_404_at_once(api: httpx.AsyncClient) -> None:
    start = time.monotonic()
    response = await api.get(
        f"{API}/jobs/00000000-0000-7000-8000-000000000000", params={"wait_seconds": 10}
    )
    assert response.status_code == 404
    assert time.monotonic() - start < 2
