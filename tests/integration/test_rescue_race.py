"""The rescuer and a late worker race for the same expired job.

A worker's lease expired but its `complete` (with the old lease token) arrives at the
same moment as the rescuer's pass. Exactly one of them may win, every time:

- complete won: the job is completed with the result, the rescuer did not touch it;
- the rescuer won: the job is pending again with a `lease_expired` history entry, and
  the late `complete` got `LeaseLost`.

The race runs a thousand times on one database, each time on two connections.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from ai_service import errors
from ai_service.jobs import JobStatus
from ai_service.store import Store
from tests.helpers import new_job

REPETITIONS = 1000


@pytest.fixture
async def rescuer(database_url: str) -> AsyncIterator[Store]:
    # Long backoff: a rescued job stays pending and out of later rounds' claims.
    s = await Store.open(database_url, min_size=1, max_size=1, wait=True, backoff_base=3600)
    yield s
    await s.close()


@pytest.fixture
async def worker(database_url: str) -> AsyncIterator[Store]:
    s = await Store.open(database_url, min_size=1, max_size=1, wait=True)
    yield s
    await s.close()


async def _outcome(task: Awaitable[Any]) -> Any:
    """The call's result, or the exception it raised."""
    try:
        return await task
    except errors.AIServiceError as exc:
        return exc


async def test_rescuer_and_late_complete_never_both_win(
    store: Store, rescuer: Store, worker: Store
) -> None:
    outcomes: Counter[str] = Counter()
    order = random.Random(REPETITIONS)
    for round_ in range(REPETITIONS):
        [created] = await store.create_jobs([new_job(owner_ref=f"race/{round_}", max_attempts=3)])
        job_id = created.job.id
        [claimed] = await worker.claim("late-worker", limit=1, lease_seconds=60)
        assert claimed.id == job_id
        assert claimed.lease_token is not None
        async with store.pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                [job_id],
            )

        rescue = _outcome(rescuer.rescue_expired())
        complete = _outcome(worker.complete(job_id, {"round": round_}, claimed.lease_token))
        # Alternate who is sent first so both interleavings get exercised.
        if order.random() < 0.5:
            rescued, completed = await asyncio.gather(rescue, complete)
        else:
            completed, rescued = await asyncio.gather(complete, rescue)
        assert isinstance(rescued, list), rescued
        final = await store.get_job(job_id)

        complete_won = not isinstance(completed, Exception)
        rescue_won = rescued == [(job_id, JobStatus.PENDING)]
        assert complete_won != rescue_won, (round_, completed, rescued, final)
        if complete_won:
            assert rescued == []
            assert completed.status is JobStatus.COMPLETED
            assert final == completed
            assert final.result == {"round": round_}
            assert final.errors == []
            assert final.error_category is None
            outcomes["complete"] += 1
        else:
            assert isinstance(completed, errors.LeaseLost), completed
            assert final.status is JobStatus.PENDING
            assert final.result is None
            assert final.lease_token is None
            assert final.error_category == "lease_expired"
            [entry] = final.errors
            assert (entry["attempt"], entry["category"], entry["worker"]) == (
                1,
                "lease_expired",
                "late-worker",
            )
            outcomes["rescue"] += 1

    assert outcomes["complete"] + outcomes["rescue"] == REPETITIONS
    # Nothing else may be left running or half-done.
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        by_status = {r["status"]: r["n"] for r in await cur.fetchall()}
    assert by_status == {
        k: v for k, v in (("completed", outcomes["complete"]), ("pending", outcomes["rescue"])) if v
    }
    print(f"rescue race: {dict(outcomes)}")
