"""Claims from many connections at once: every job is claimed exactly once, none missed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from ai_service.jobs import Job, JobStatus
from ai_service.store import Completion, Store
from tests.helpers import new_job

JOBS = 2000
CONNECTIONS = 8
TASK_TYPES = ("llm_chat", "call_analysis", "transcription")


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[Store]]:
    """Eight stores with one connection each: eight claimers that never share a session."""
    opened = [
        await Store.open(database_url, min_size=1, max_size=1, wait=True)
        for _ in range(CONNECTIONS)
    ]
    yield opened
    for s in opened:
        await s.close()


async def _create_jobs(store: Store) -> set[UUID]:
    ids: set[UUID] = set()
    for start in range(0, JOBS, 500):
        outcomes = await store.create_jobs(
            [
                new_job(
                    owner_ref=f"job/{i}",
                    task_type=TASK_TYPES[i % len(TASK_TYPES)],
                    priority=i % 7,
                )
                for i in range(start, start + 500)
            ]
        )
        ids.update(o.job.id for o in outcomes)
    assert len(ids) == JOBS
    return ids


async def _claim_until_empty(
    store: Store, worker: str, seed: int, typed: bool, complete: bool
) -> list[Job]:
    rng = random.Random(seed)
    claimed: list[Job] = []
    while True:
        batch = await store.claim(
            worker,
            limit=rng.randint(1, 25),
            lease_seconds=300,
            task_types=TASK_TYPES if typed else None,
        )
        if not batch:
            return claimed
        claimed.extend(batch)
        if complete:
            done = await store.complete_many(
                [Completion(j.id, j.lease_token, {"by": worker}) for j in batch if j.lease_token]
            )
            assert set(done) == {j.id for j in batch}


def _assert_each_claimed_once(created: set[UUID], claimed: list[Job]) -> None:
    counts = Counter(j.id for j in claimed)
    duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
    assert duplicates == {}
    assert set(counts) == created
    assert len({j.lease_token for j in claimed}) == JOBS


@pytest.mark.parametrize("typed", [False, True], ids=["any_type", "by_task_types"])
async def test_eight_connections_claim_every_job_exactly_once(
    store: Store, stores: list[Store], typed: bool
) -> None:
    created = await _create_jobs(store)
    results = await asyncio.gather(
        *(
            _claim_until_empty(s, f"worker-{n}", seed=n, typed=typed, complete=False)
            for n, s in enumerate(stores)
        )
    )
    claimed = [job for batch in results for job in batch]
    _assert_each_claimed_once(created, claimed)

    rows = await sql(store, "SELECT id, status, attempt, worker_id, lease_token FROM jobs")
    by_id = {r["id"]: r for r in rows}
    for n, batch in enumerate(results):
        for job in batch:
            row = by_id[job.id]
            assert row["status"] == JobStatus.RUNNING
            assert row["attempt"] == 1
            assert row["worker_id"] == f"worker-{n}"  # the row agrees on who won
            assert row["lease_token"] == job.lease_token
    assert all(len(batch) > 0 for batch in results), "a claimer never got a job"


async def test_many_claim_loops_over_a_shared_pool_while_completing(database_url: str) -> None:
    pool_store = await Store.open(
        database_url, min_size=CONNECTIONS, max_size=CONNECTIONS, wait=True
    )
    try:
        created = await _create_jobs(pool_store)
        results = await asyncio.gather(
            *(
                _claim_until_empty(pool_store, f"loop-{n}", seed=n, typed=n % 2 == 1, complete=True)
                for n in range(24)
            )
        )
        claimed = [job for batch in results for job in batch]
        _assert_each_claimed_once(created, claimed)
        rows = await sql(pool_store, "SELECT status, count(*) AS n FROM jobs GROUP BY status")
        assert rows == [{"status": "completed", "n": JOBS}]
    finally:
        await pool_store.close()
