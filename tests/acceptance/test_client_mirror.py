"""Mirror mode (`Client.run`, `AsyncClient.run`) against the real API.

Local (task type not in AI_SERVICE_REMOTE_TASK_TYPES): the job is created not
runnable for `local_timeout`, the local function runs, its result completes
the still-pending job through the mirror path (no lease token); a local
exception is recorded with `fail` and raised again. Remote: the job is created
and its result, from a worker, is returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import ai_service_client as sdk
from tests.conftest import ApiFactory

TASK = "call_analysis"
RUN: dict[str, Any] = {"owner_ref": "call-1", "model_profile": "m", "input": {"text": "hi"}}


@pytest.fixture
async def base_url(api_factory: ApiFactory) -> AsyncIterator[str]:
    async with api_factory() as http:
        yield str(http.base_url)


def local(input: dict[str, Any]) -> dict[str, Any]:
    return {"echo": input["text"], "by": "local"}


async def test_local_run_mirrors_the_job_and_completes_it_without_a_lease(base_url: str) -> None:
    def scenario() -> tuple[dict[str, Any], sdk.Job]:
        with sdk.Client(base_url, owner_service="telephony", remote_task_types=[]) as client:
            result = client.run(TASK, **RUN, local=local, local_timeout=600)
            [summary] = list(client.iter_jobs())
            return result, client.get(summary.id)

    result, job = await asyncio.to_thread(scenario)
    assert result == {"echo": "hi", "by": "local"}
    assert job.status == "completed"
    assert job.result == result
    assert job.worker_id is None  # no worker ever claimed it
    assert job.attempt == 0
    assert job.run_after - job.created_at >= timedelta(seconds=590)


async def test_local_exception_is_recorded_as_a_failure_and_raised(base_url: str) -> None:
    def broken(input: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("the local model crashed")

    async with sdk.AsyncClient(base_url, owner_service="telephony") as client:
        with pytest.raises(ValueError, match="local model crashed"):
            await client.run(TASK, **RUN, local=broken)
        [job] = [j async for j in client.iter_jobs()]
    assert job.status == "failed"
    assert job.error_category == "local_error"
    assert job.error_message == "ValueError: the local model crashed"


async def test_async_local_function_and_an_idempotent_rerun(base_url: str) -> None:
    calls = 0

    async def analyse(input: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return {"n": calls}

    async with sdk.AsyncClient(base_url, owner_service="telephony") as client:
        first = await client.run(TASK, **RUN, local=analyse, idempotency_key="call-1")
        again = await client.run(TASK, **RUN, local=analyse, idempotency_key="call-1")
        jobs = [j async for j in client.iter_jobs()]
        other = {**RUN, "input": {"text": "another call"}}
        with pytest.raises(sdk.IdempotencyConflict):
            await client.run(TASK, **other, local=analyse, idempotency_key="call-1")
    assert first == again == {"n": 1}
    assert calls == 1  # the rerun returned the stored result
    assert len(jobs) == 1


async def test_remote_run_returns_the_workers_result(base_url: str) -> None:
    async def handle(job: sdk.ClaimedJob) -> dict[str, Any]:
        return {"echo": job.input["text"], "by": "remote"}

    async with sdk.AsyncClient(
        base_url, owner_service="telephony", remote_task_types=[TASK]
    ) as client:
        worker = sdk.Worker([TASK], handle, 1, client=client, wait_seconds=1)
        serving = asyncio.create_task(worker.serve())
        try:
            result = await client.run(TASK, **RUN, local=local, wait_timeout=20)
        finally:
            worker.stop()
            await asyncio.wait_for(serving, 10)
    assert result == {"echo": "hi", "by": "remote"}


async def test_remote_failure_raises_job_failed(base_url: str) -> None:
    async def handle(job: sdk.ClaimedJob) -> dict[str, Any]:
        raise sdk.WorkerError("unusable audio", category="bad_input", retryable=False)

    async with sdk.AsyncClient(
        base_url, owner_service="telephony", remote_task_types=[TASK]
    ) as client:
        worker = sdk.Worker([TASK], handle, 1, client=client, wait_seconds=1)
        serving = asyncio.create_task(worker.serve())
        try:
            with pytest.raises(sdk.JobFailed) as caught:
                await client.run(TASK, **RUN, local=local, wait_timeout=20)
        finally:
            worker.stop()
            await asyncio.wait_for(serving, 10)
    assert caught.value.job.status == "failed"
    assert caught.value.job.error_category == "bad_input"
