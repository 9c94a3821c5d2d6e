"""Wake-ups through PostgreSQL NOTIFY: new runnable jobs wake waiters at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from ai_service.jobs import Job, JobFilter, JobStatus
from ai_service.notifier import FINISHED_ANY, JobNotifier, finished_payloads, parse_finished
from ai_service.store import ClaimRequest, Completion, Store
from tests.helpers import new_job

QUIET = 0.3  # how long "nothing happened" is watched


@pytest.fixture
async def notifier(database_url: str) -> AsyncIterator[JobNotifier]:
    n = JobNotifier(database_url)
    n.start()
    await asyncio.wait_for(n.connected.wait(), 5)
    yield n
    await n.stop()


async def test_creating_a_job_wakes_a_waiter(notifier: JobNotifier, store: Store) -> None:
    waiter = notifier.waiter()
    await store.create_jobs([new_job()])
    assert await notifier.wait(5, waiter) is True


async def test_without_new_jobs_wait_times_out(notifier: JobNotifier) -> None:
    assert await notifier.wait(QUIET, notifier.waiter()) is False


async def test_a_notification_before_wait_is_not_missed(
    notifier: JobNotifier, store: Store
) -> None:
    # The waiter is taken before looking for work; the job appears before wait() runs.
    waiter = notifier.waiter()
    await store.create_jobs([new_job()])
    for _ in range(100):  # let the notification arrive first
        if waiter.is_set():
            break
        await asyncio.sleep(0.01)
    assert await notifier.wait(0.05, waiter) is True


async def test_every_waiter_is_woken(notifier: JobNotifier, store: Store) -> None:
    waiters = [notifier.waiter() for _ in range(5)]
    waits = [asyncio.create_task(notifier.wait(5, w)) for w in waiters]
    await store.create_jobs([new_job()])
    assert await asyncio.gather(*waits) == [True] * 5


async def test_a_woken_waiter_is_not_woken_again_by_the_same_notification(
    notifier: JobNotifier, store: Store
) -> None:
    first = notifier.waiter()
    await store.create_jobs([new_job()])
    assert await notifier.wait(5, first) is True
    assert await notifier.wait(QUIET, notifier.waiter()) is False


async def test_jobs_going_back_to_pending_wake_waiters(notifier: JobNotifier, store: Store) -> None:
    created_waiter = notifier.waiter()
    [created] = await store.create_jobs([new_job()])
    assert await notifier.wait(5, created_waiter) is True
    [running] = await store.claim("w", limit=1, lease_seconds=60)
    await store.fail(
        created.job.id, category="internal", message="x", lease_token=running.lease_token
    )
    waiter = notifier.waiter()
    await store.retry(created.job.id)
    assert await notifier.wait(5, waiter) is True


async def test_claims_and_completions_wake_nobody(notifier: JobNotifier, store: Store) -> None:
    created_waiter = notifier.waiter()
    [created] = await store.create_jobs([new_job()])
    assert await notifier.wait(5, created_waiter) is True
    waiter = notifier.waiter()
    [running] = await store.claim("w", limit=1, lease_seconds=60)
    await store.complete(created.job.id, {"ok": True}, running.lease_token)
    assert await notifier.wait(QUIET, waiter) is False


async def test_reconnect_after_a_dropped_connection_wakes_waiters(
    notifier: JobNotifier, store: Store, database_url: str
) -> None:
    waiter = notifier.waiter()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        assert [row[0] for row in await cur.fetchall()] == [True]
    # Jobs created while it was away are not lost: the reconnect wakes everybody once.
    assert await notifier.wait(5, waiter) is True
    await asyncio.wait_for(notifier.connected.wait(), 5)
    waiter = notifier.waiter()
    await store.create_jobs([new_job()])
    assert await notifier.wait(5, waiter) is True


async def test_a_waiter_is_woken_only_for_the_task_types_it_takes(
    notifier: JobNotifier, store: Store
) -> None:
    llm = notifier.waiter(["llm_chat", "call_analysis"])
    audio = notifier.waiter(["transcription"])
    anything = notifier.waiter()
    await store.create_jobs([new_job(task_type="call_analysis")])
    assert await notifier.wait(5, llm) is True
    assert await notifier.wait(5, anything) is True
    assert await notifier.wait(QUIET, audio) is False


async def test_jobs_scheduled_for_later_and_retries_in_backoff_wake_nobody(
    notifier: JobNotifier, store: Store
) -> None:
    waiter = notifier.waiter()
    later = datetime.now(UTC) + timedelta(hours=1)
    [scheduled] = await store.create_jobs([new_job(run_after=later)])
    assert scheduled.job.status is JobStatus.PENDING
    assert await notifier.wait(QUIET, waiter) is False
    [now] = await store.create_jobs([new_job(owner_ref="now")])
    assert await notifier.wait(5, waiter) is True
    [running] = await store.claim("w", limit=1, lease_seconds=60)
    assert running.id == now.job.id
    waiter = notifier.waiter()
    await store.fail(
        running.id, category="timeout", message="t", lease_token=running.lease_token, retryable=True
    )
    assert await notifier.wait(QUIET, waiter) is False


async def test_bursts_of_creates_are_announced_in_few_statements(
    store: Store, database_url: str
) -> None:
    """Debounced: 200 creates in a burst send far fewer than 200 notifications."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN ai_service_jobs")
        await asyncio.gather(*(store.create_jobs([new_job(owner_ref=str(i))]) for i in range(200)))
        received = [n.payload async for n in listener.notifies(timeout=0.5)]
    assert set(received) == {"llm_chat"}
    assert 1 <= len(received) < 50


class Finished:
    """What a notifier built with `on_finished` passed on."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.any = 0
        self.event = asyncio.Event()

    def __call__(self, ids: set[str] | None) -> None:
        if ids is None:
            self.any += 1
        else:
            self.ids |= ids
        self.event.set()

    async def seen(self, job_id: UUID) -> bool:
        deadline = asyncio.get_running_loop().time() + 5
        while str(job_id) not in self.ids:
            self.event.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)
        return True


@pytest.fixture
async def finished(database_url: str) -> AsyncIterator[Finished]:
    seen = Finished()
    n = JobNotifier(database_url, on_finished=seen)
    n.start()
    await asyncio.wait_for(n.connected.wait(), 5)
    assert seen.any == 1  # a (re)connect: any job may have finished meanwhile
    yield seen
    await n.stop()


async def running_job(store: Store, **overrides: Any) -> Job:
    [created] = await store.create_jobs([new_job(**overrides)])
    [job] = await store.claim("w", limit=1, lease_seconds=60, task_types=[created.job.task_type])
    assert job.id == created.job.id
    return job


async def test_every_way_to_a_final_status_announces_the_job(
    finished: Finished, store: Store
) -> None:
    completed = await running_job(store, task_type="f-complete")
    assert completed.lease_token is not None
    await store.complete(completed.id, {}, completed.lease_token)
    assert await finished.seen(completed.id)

    many = await running_job(store, task_type="f-many")
    assert many.lease_token is not None
    await store.complete_many([Completion(many.id, many.lease_token, {})])
    assert await finished.seen(many.id)

    together = await running_job(store, task_type="f-together")
    assert together.lease_token is not None
    request = ClaimRequest.of("w", 1, 60, task_types=["none"])
    await store.complete_and_claim([Completion(together.id, together.lease_token, {})], request)
    assert await finished.seen(together.id)

    failed = await running_job(store, task_type="f-fail")
    await store.fail(failed.id, category="bad_input", message="no", lease_token=failed.lease_token)
    assert await finished.seen(failed.id)

    [pending] = await store.create_jobs([new_job(task_type="f-cancel")])
    await store.cancel(pending.job.id)
    assert await finished.seen(pending.job.id)

    [mirrored] = await store.create_jobs([new_job(task_type="f-mirror")])
    await store.complete(mirrored.job.id, {"done": "locally"})
    assert await finished.seen(mirrored.job.id)

    expired = await running_job(store, task_type="f-rescue", max_attempts=1)
    async with store.pool.connection() as conn:
        await conn.execute(
            "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            [expired.id],
        )
    assert (expired.id, JobStatus.FAILED) in await store.rescue_expired()
    assert await finished.seen(expired.id)


async def test_a_retry_in_backoff_is_not_final_and_not_announced(
    finished: Finished, store: Store
) -> None:
    retried = await running_job(store, task_type="f-retry", max_attempts=3)
    job = await store.fail(
        retried.id,
        category="timeout",
        message="slow",
        lease_token=retried.lease_token,
        retryable=True,
    )
    assert job.status is JobStatus.PENDING
    # A final job afterwards is announced; the retried one never was.
    marker = await running_job(store, task_type="f-marker")
    await store.cancel(marker.id)
    assert await finished.seen(marker.id)
    assert str(retried.id) not in finished.ids


async def test_a_bulk_cancel_announces_that_any_job_may_have_finished(
    finished: Finished, store: Store
) -> None:
    await store.create_jobs([new_job(task_type="f-bulk", owner_ref=str(i)) for i in range(3)])
    before = finished.any
    outcome = await store.cancel_by_filter(JobFilter(task_type="f-bulk"))
    assert outcome.count == 3
    for _ in range(100):
        if finished.any > before:
            break
        await asyncio.sleep(0.05)
    assert finished.any == before + 1


def test_finished_ids_travel_in_payloads_under_the_notify_limit() -> None:
    ids = [str(uuid4()) for _ in range(450)]
    payloads = finished_payloads(ids)
    assert len(payloads) == 3
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert set().union(*(parse_finished(p) or set() for p in payloads)) == set(ids)
    assert finished_payloads([*ids[:3], FINISHED_ANY]) == [FINISHED_ANY]
    assert parse_finished(FINISHED_ANY) is None
