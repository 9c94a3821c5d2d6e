"""`api.completions.CompletionBatcher` and `Store.complete_fresh` on a real PostgreSQL.

Concurrent per-job completions share statements, and every caller still gets
exactly what `Store.complete` would answer it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ai_service import errors
from ai_service.api.completions import Completed, CompletionBatcher
from ai_service.jobs import Job, JobStatus
from ai_service.store import Completion, Store
from tests.helpers import new_job


async def claimed(store: Store, n: int) -> list[Job]:
    await store.create_jobs([new_job(owner_ref=f"c/{i}", task_type="batched") for i in range(n)])
    jobs = await store.claim("w1", limit=n, lease_seconds=60, task_types=["batched"])
    assert len(jobs) == n
    return jobs


def token(job: Job) -> uuid.UUID:
    assert job.lease_token is not None
    return job.lease_token


async def test_complete_fresh_answers_only_the_jobs_it_completed(store: Store) -> None:
    first, second = await claimed(store, 2)
    assert set(await store.complete_fresh([Completion(first.id, token(first), {"n": 1})])) == {
        first.id
    }
    # `complete_many` counts the repeat as done; `complete_fresh` leaves it to the caller.
    again = [Completion(first.id, token(first), {"n": 1}), Completion(second.id, token(second), {})]
    assert set(await store.complete_many(again[:1])) == {first.id}
    fresh = await store.complete_fresh(again)
    assert set(fresh) == {second.id}
    row = fresh[second.id]
    assert (row["task_type"], row["model_profile"]) == ("batched", "qwen2.5-14b")
    assert (await store.get_job(second.id)).finished_at == row["finished_at"]


class CountingStore(Store):
    """The real store, counting the statements the batcher sends."""

    writes: list[int]

    async def complete_fresh(self, completions: Any) -> Any:
        self.writes.append(len(completions))
        return await super().complete_fresh(completions)


@pytest.fixture
async def counting(store: Store) -> CountingStore:
    spy = CountingStore(store.pool, backoff_base=store.backoff_base)
    spy.writes = []
    return spy


async def test_concurrent_completions_share_statements_and_each_gets_its_own_answer(
    counting: CountingStore,
) -> None:
    jobs = await claimed(counting, 60)
    batcher = CompletionBatcher(counting)
    repeated, other_result, stale, *fresh = jobs
    for job in (repeated, other_result):
        await batcher.complete(job.id, {"first": True}, token(job))
    counting.writes.clear()

    async def outcome(call: Any) -> Completed | Exception:
        try:
            return await call
        except errors.AIServiceError as exc:
            return exc

    calls = [batcher.complete(j.id, {"i": i}, token(j)) for i, j in enumerate(fresh)]
    calls += [
        batcher.complete(repeated.id, {"first": True}, token(repeated)),  # the same again: ok
        batcher.complete(other_result.id, {"first": False}, token(other_result)),  # 409
        batcher.complete(stale.id, {}, uuid.uuid4()),  # another lease: 409
        batcher.complete(uuid.uuid4(), {}, uuid.uuid4()),  # no such job: 404
        batcher.complete(fresh[0].id, {"i": 0}, token(fresh[0])),  # twice in one burst
    ]
    results = await asyncio.gather(*(outcome(c) for c in calls))
    *done, same, conflict, lost, missing, twice = results
    assert [d.id for d in done if isinstance(d, Completed)] == [j.id for j in fresh]
    assert isinstance(same, Completed)
    assert same.id == repeated.id
    assert isinstance(conflict, errors.InvalidTransition | errors.LeaseLost)
    assert isinstance(lost, errors.LeaseLost)
    assert isinstance(missing, errors.JobNotFound)
    assert isinstance(twice, Completed)
    assert isinstance(done[0], Completed)
    assert twice.finished_at == done[0].finished_at
    # Shared statements: far fewer writes than calls.
    assert sum(counting.writes) <= len(calls)
    assert len(counting.writes) < len(fresh) / 4
    for job, result in zip(fresh, done, strict=True):
        stored = await counting.get_job(job.id)
        assert stored.status is JobStatus.COMPLETED
        assert stored.result == {"i": fresh.index(job)}
        assert isinstance(result, Completed)
        assert result.finished_at == stored.finished_at


async def test_a_failing_batch_leaves_each_call_its_own_answer(store: Store) -> None:
    jobs = await claimed(store, 3)
    batcher = CompletionBatcher(store)

    class Broken(Exception):
        pass

    async def broken(completions: Any) -> Any:
        raise Broken

    batcher.store.complete_fresh = broken  # type: ignore[method-assign]
    results = await asyncio.gather(*(batcher.complete(j.id, {"ok": 1}, token(j)) for j in jobs))
    assert [r.id for r in results] == [j.id for j in jobs]  # each completed on its own
    for job in jobs:
        assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
