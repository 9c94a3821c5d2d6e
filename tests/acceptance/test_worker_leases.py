"""A worker never holds more leases than its concurrency, whatever the setting.

Audited twice: in the process (the most jobs held at once) and in the database
(the most `running` rows seen while the queue drains).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ai_service.store import Store
from tests.helpers import new_job
from tests.workers import running_worker


@pytest.mark.parametrize(("concurrency", "claim_limit"), [(1, 4), (16, 4), (256, 100)])
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
    assert 1 <= peak <= concurrency
    assert seen_running <= concurrency
    assert runner.counters.completed == total
