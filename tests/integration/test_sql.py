"""`queries.sql` on a real PostgreSQL: the shared `retry_backoff` fragment, as run by
`job_fail` and `job_rescue_expired`, computes what its Python mirror
`jobs.backoff_seconds` computes; `outage_backoff` (job_defer) what
`jobs.outage_backoff_seconds` computes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ai_service.jobs import (
    OUTAGE_BACKOFF_CAP,
    Job,
    JobStatus,
    backoff_seconds,
    outage_backoff_seconds,
)
from ai_service.store import Store
from tests.helpers import new_job

BASE = 3.0
CAP = 40.0  # reached from the 5th attempt (3 * 2**4 = 48)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """One connection: every statement runs in the session whose `setseed` we chose."""
    s = await Store.open(
        database_url, min_size=1, max_size=1, wait=True, backoff_base=BASE, backoff_max=CAP
    )
    yield s
    await s.close()


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def next_random(store: Store, seed: float) -> float:
    """The value the session's next `random()` will return (the seed is set again)."""
    await sql(store, "SELECT setseed(%s)", [seed])
    [row] = await sql(store, "SELECT random() AS r")
    await sql(store, "SELECT setseed(%s)", [seed])
    return float(row["r"])


def delay(job: Job) -> float:
    """The backoff the statement chose: run_after minus its own now() (= updated_at)."""
    return (job.run_after - job.updated_at).total_seconds()


async def claim(store: Store, job: Job) -> Job:
    await sql(store, "UPDATE jobs SET run_after = now() WHERE id = %s", [job.id])
    [claimed] = await store.claim("w", limit=1, lease_seconds=60)
    assert claimed.id == job.id
    return claimed


async def test_job_fail_backs_off_as_the_python_mirror_says(store: Store) -> None:
    [created] = await store.create_jobs([new_job(max_attempts=8)])
    job = created.job
    for attempt in range(1, 8):
        running = await claim(store, job)
        assert running.attempt == attempt
        jitter = await next_random(store, attempt / 10)
        failed = await store.fail(
            job.id, category="timeout", message="t", lease_token=running.lease_token, retryable=True
        )
        assert failed.status is JobStatus.PENDING
        assert delay(failed) == pytest.approx(backoff_seconds(attempt, BASE, CAP, jitter), abs=1e-5)


async def test_the_rescuer_backs_off_as_the_python_mirror_says(store: Store) -> None:
    [created] = await store.create_jobs([new_job(max_attempts=8)])
    job = created.job
    for attempt in range(1, 8):
        await claim(store, job)
        await sql(
            store,
            "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            [job.id],
        )
        jitter = await next_random(store, -attempt / 10)
        assert await store.rescue_expired() == [(job.id, JobStatus.PENDING)]
        rescued = await store.get_job(job.id)
        assert rescued.error_category == "lease_expired"
        assert delay(rescued) == pytest.approx(
            backoff_seconds(attempt, BASE, CAP, jitter), abs=1e-5
        )


async def test_job_defer_backs_off_as_the_python_mirror_says(store: Store) -> None:
    # The wait grows with the time since the outage began: the base at first, then about
    # that time, at most the cap (the lower of RETRY_BACKOFF_MAX and OUTAGE_BACKOFF_CAP).
    cap = min(CAP, OUTAGE_BACKOFF_CAP)
    [created] = await store.create_jobs([new_job()])
    job = created.job
    for outage_seconds, tolerance in ((None, 1e-5), (20.0, 0.5), (500.0, 1e-5)):
        running = await claim(store, job)
        if outage_seconds is not None:
            await sql(
                store,
                "UPDATE jobs SET outage_since = now() - make_interval(secs => %s) WHERE id = %s",
                [outage_seconds, job.id],
            )
        jitter = await next_random(store, 0.3)
        assert running.lease_token is not None
        deferred = await store.defer(
            job.id,
            category="provider_unavailable",
            message="down",
            lease_token=running.lease_token,
            outage_max=3600,
        )
        assert deferred.status is JobStatus.PENDING
        expected = outage_backoff_seconds(outage_seconds or 0.0, BASE, cap, jitter)
        assert delay(deferred) == pytest.approx(expected, abs=tolerance)
