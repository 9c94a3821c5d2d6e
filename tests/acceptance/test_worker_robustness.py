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
