"""The runner survives results and messages the database refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ai_service.jobs import Job, JobStatus
from ai_service.metrics import Metrics
from ai_service.store import Store
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.runner import Runner
from tests.helpers import make_settings, new_job


async def _echo_handler(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    # A provider answer PostgreSQL cannot store (NUL) for one job, normal for the rest.
    if job.owner_ref == "bad":
        return {"text": "before\x00after"}
    await asyncio.sleep(0.05)  # finish together, so that all land in one batch
    return {"text": "fine"}


async def test_a_refused_result_fails_its_job_and_the_rest_of_the_batch_completes(
    store: Store, database_url: str
) -> None:
    created = await store.create_jobs(
        [new_job(task_type="echo", owner_ref=ref) for ref in ("a", "bad", "b", "c")]
    )
    settings = make_settings(database_url, WORKER_CONCURRENCY="8", WORKER_CLAIM_LIMIT="8")
    spec = HandlerSpec(
        name="echo", task_types=frozenset({"echo"}), model_profiles=None, handle=_echo_handler
    )
    async with httpx.AsyncClient() as http:
        runner = Runner(
            store, HandlerContext(settings=settings, http=http), [spec], metrics=Metrics()
        )
        runner.start()
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            jobs = {c.job.owner_ref: await store.get_job(c.job.id) for c in created}
            if all(j.status.is_terminal for j in jobs.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, jobs
            await asyncio.sleep(0.05)
        await runner.shutdown()
    assert jobs["bad"].status is JobStatus.FAILED
    assert jobs["bad"].error_category == "internal"
    assert "refused by the database" in (jobs["bad"].error_message or "")
    for ref in ("a", "b", "c"):
        assert jobs[ref].status is JobStatus.COMPLETED
        assert jobs[ref].result == {"text": "fine"}
    assert runner.in_flight == {}


async def _hang(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    await asyncio.sleep(60)
    return {"never": True}


async def _own_timeout(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    raise TimeoutError("the handler's own time-out")


async def _run_until_finished(
    store: Store, database_url: str, spec: HandlerSpec, ids: list[Any], **env: str
) -> tuple[dict[Any, Job], Runner]:
    # A short lease, heartbeats every 0.1 s: the attempt stays alive by its leases,
    # so only the deadline can end it.
    settings = make_settings(
        database_url, WORKER_LEASE_TIMEOUT="2s", RETRY_BACKOFF_BASE="60s", **env
    )
    async with httpx.AsyncClient() as http:
        runner = Runner(
            store,
            HandlerContext(settings=settings, http=http),
            [spec],
            metrics=Metrics(),
            heartbeat_interval=0.1,
        )
        runner.start()
        deadline = asyncio.get_running_loop().time() + 20
        try:
            while True:
                jobs = {i: await store.get_job(i) for i in ids}
                if all(j.attempt >= 1 and j.status is not JobStatus.RUNNING for j in jobs.values()):
                    return jobs, runner
                assert asyncio.get_running_loop().time() < deadline, jobs
                await asyncio.sleep(0.05)
        finally:
            await runner.shutdown()


async def test_a_job_past_its_deadline_is_ended_although_it_keeps_heartbeating(
    store: Store, database_url: str
) -> None:
    created = await store.create_jobs(
        [new_job(task_type="slow", owner_ref="own"), new_job(task_type="slow", owner_ref="spec")]
    )
    own, by_spec = (c.job.id for c in created)
    async with store.pool.connection() as conn:
        await conn.execute("UPDATE jobs SET timeout_seconds = 1 WHERE id = %s", [own])
    spec = HandlerSpec(
        name="slow",
        task_types=frozenset({"slow"}),
        model_profiles=None,
        handle=_hang,
        timeout=1.5,
    )
    started = asyncio.get_running_loop().time()
    jobs, _ = await _run_until_finished(store, database_url, spec, [own, by_spec])
    assert asyncio.get_running_loop().time() - started < 10
    for job_id, seconds in ((own, "1"), (by_spec, "1.5")):
        job = jobs[job_id]
        assert job.status is JobStatus.PENDING  # timeouts are retried (backoff 60 s)
        assert job.error_category == "timeout"
        assert f"deadline of {seconds}s" in (job.error_message or "")


async def test_a_handlers_own_timeout_error_is_an_internal_failure(
    store: Store, database_url: str
) -> None:
    [created] = await store.create_jobs([new_job(task_type="own")])
    spec = HandlerSpec(
        name="own", task_types=frozenset({"own"}), model_profiles=None, handle=_own_timeout
    )
    jobs, runner = await _run_until_finished(store, database_url, spec, [created.job.id])
    job = jobs[created.job.id]
    assert job.status is JobStatus.FAILED
    assert job.error_category == "internal"
    assert "TimeoutError" in (job.error_message or "")
    assert runner.in_flight == {}
