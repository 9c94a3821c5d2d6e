"""Wake-ups through PostgreSQL NOTIFY: new runnable jobs wake waiters at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ai_service.jobs import JobStatus
from ai_service.notifier import JobNotifier
from ai_service.store import Store
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
