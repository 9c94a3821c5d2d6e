"""A worker never holds more leases than its concurrency, whatever the setting.

Audited three times: in the process (the most jobs held at once), in the
database while the queue drains (the most `running` rows seen), and exactly
afterwards from the jobs' own times (a lease starts with its claim's
transaction and ends with its completion's).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ai_service.store import Store
from tests.helpers import PEAK_LEASES, new_job
from tests.workers import running_worker

# Jobs claimed by the transaction that completed others (the refill of their slots).
REFILLED = """
SELECT count(*) FROM jobs j
 WHERE EXISTS (SELECT 1 FROM jobs d WHERE d.finished_at = j.started_at)
"""


@pytest.mark.parametrize(
    ("concurrency", "claim_limit"), [(1, 4), (2, 100), (16, 4), (16, 100), (256, 100)]
)
async def test_leases_held_never_exceed_the_concurrency(
    store: Store, database_url: str, concurrency: int, claim_limit: int
) -> None:
    total = 1500
    await store.create_jobs([new_job(task_type="noop", owner_ref=f"r{i}") for i in range(total)])
    seen_running = 0
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
        running_worker(
            database_url,
            WORKER_CONCURRENCY=str(concurrency),
            WORKER_CLAIM_LIMIT=str(claim_limit),
        ) as runner,
    ):
        while True:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'running'),"
                " count(*) FILTER (WHERE status = 'completed') FROM jobs"
            )
            running, completed = await cur.fetchone() or (0, 0)
            seen_running = max(seen_running, running)
            if completed == total:
                break
            await asyncio.sleep(0.005)
        peak = runner.leases.peak
        exact = (await (await conn.execute(PEAK_LEASES)).fetchone() or (0,))[0]
        refilled = (await (await conn.execute(REFILLED)).fetchone() or (0,))[0]
    assert 1 <= peak <= concurrency
    assert seen_running <= concurrency
    assert 1 <= exact <= concurrency
    assert runner.counters.completed == total
    # Most slots were refilled by the completions' own transactions.
    assert refilled >= total // 2
