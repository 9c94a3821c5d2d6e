"""The webhook outbox: one event per terminal transition, written with the transition
(the `jobs_webhook_event` trigger), and the deliverer's claim and record statements."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ai_service.jobs import Job, JobFilter, JobStatus
from ai_service.store import ClaimRequest, Completion, DeliveryOutcome, Store
from tests.helpers import new_job

CALLBACK = "https://hooks.example.com/ai?token=t0k3n"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def create(store: Store, **overrides: Any) -> Job:
    fields: dict[str, Any] = {"callback_url": CALLBACK, "owner_ref": f"call-{uuid.uuid4()}"}
    [outcome] = await store.create_jobs([new_job(**(fields | overrides))])
    return outcome.job


async def running(store: Store, **overrides: Any) -> Job:
    job = await create(store, task_type=f"t-{uuid.uuid4().hex[:8]}", **overrides)
    [claimed] = await store.claim("w1", limit=1, lease_seconds=60, task_types=[job.task_type])
    assert claimed.id == job.id
    assert claimed.lease_token is not None
    return claimed


async def events(store: Store, job: Job) -> list[dict[str, Any]]:
    return await sql(
        store, "SELECT * FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at", [job.id]
    )


def lease(job: Job) -> uuid.UUID:
    assert job.lease_token is not None
    return job.lease_token


# Each terminal transition, from a job it applies to, and the status it gives.
Transition = Callable[[Store], Awaitable[tuple[Job, str]]]


async def _complete(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await store.complete(job.id, {"ok": 1}, lease(job))
    return job, "completed"


async def _complete_mirror(store: Store) -> tuple[Job, str]:
    job = await create(store)
    await store.complete(job.id, {"ok": 1})
    return job, "completed"


async def _complete_many(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await store.complete_many([Completion(job.id, lease(job), {"ok": 1})])
    return job, "completed"


async def _complete_fresh(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await store.complete_fresh([Completion(job.id, lease(job), {"ok": 1})])
    return job, "completed"


async def _complete_and_claim(store: Store) -> tuple[Job, str]:
    job = await running(store)
    request = ClaimRequest.of("w1", 1, 60, ["nothing-of-this-type"], None)
    await store.complete_and_claim([Completion(job.id, lease(job), {"ok": 1})], request)
    return job, "completed"


async def _fail(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await store.fail(job.id, category="invalid_input", message="bad", lease_token=lease(job))
    return job, "failed"


async def _fail_mirror(store: Store) -> tuple[Job, str]:
    job = await create(store)
    await store.fail(job.id, category="internal", message="local failure")
    return job, "failed"


async def _outage_budget(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await sql(
        store, "UPDATE jobs SET outage_since = now() - interval '2 hours' WHERE id = %s", [job.id]
    )
    await store.defer(
        job.id, category="provider_unavailable", message="down", lease_token=lease(job),
        outage_max=3600,
    )  # fmt: skip
    return job, "failed"


async def _cancel(store: Store) -> tuple[Job, str]:
    job = await running(store)
    await store.cancel(job.id)
    return job, "cancelled"


async def _bulk_cancel(store: Store) -> tuple[Job, str]:
    job = await create(store, task_type=f"bulk-{uuid.uuid4().hex[:8]}")
    outcome = await store.cancel_by_filter(JobFilter(task_type=job.task_type))
    assert outcome.count == 1
    return job, "cancelled"


async def _rescued(store: Store) -> tuple[Job, str]:
    job = await running(store, max_attempts=1)
    await sql(
        store, "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s", [job.id]
    )
    assert (job.id, JobStatus.FAILED) in await store.rescue_expired()
    return job, "failed"


TRANSITIONS: dict[str, Transition] = {
    "complete": _complete,
    "complete mirror path": _complete_mirror,
    "complete_many": _complete_many,
    "complete_fresh": _complete_fresh,
    "complete_and_claim": _complete_and_claim,
    "fail": _fail,
    "fail mirror path": _fail_mirror,
    "outage budget spent": _outage_budget,
    "cancel": _cancel,
    "bulk cancel": _bulk_cancel,
    "rescuer, lease_expired": _rescued,
}


@pytest.mark.parametrize("name", list(TRANSITIONS))
async def test_every_terminal_transition_writes_exactly_one_event(store: Store, name: str) -> None:
    job, status = await TRANSITIONS[name](store)
    [event] = await events(store, job)
    finished = (await store.get_job(job.id)).finished_at
    assert finished is not None
    assert event["event_type"] == f"job.{status}"
    assert event["url"] == CALLBACK
    assert event["status"] == "pending"
    assert event["attempts"] == 0
    assert event["payload"] == {
        "type": f"job.{status}",
        "job_id": str(job.id),
        "owner_service": job.owner_service,
        "owner_ref": job.owner_ref,
        "status": status,
        "timestamp": finished.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


async def test_the_event_carries_the_jobs_trace_context(store: Store) -> None:
    job = await running(store, traceparent=TRACEPARENT)
    await store.complete(job.id, {"ok": 1}, lease(job))
    [event] = await events(store, job)
    assert event["traceparent"] == TRACEPARENT


async def test_transitions_that_are_not_terminal_write_no_event(store: Store) -> None:
    job = await running(store)
    # A retryable failure with attempts left goes back to pending: no event.
    await store.fail(
        job.id, category="timeout", message="slow", lease_token=lease(job), retryable=True
    )
    await sql(store, "UPDATE jobs SET run_after = now() WHERE id = %s", [job.id])
    [again] = await store.claim("w1", limit=1, lease_seconds=60, task_types=[job.task_type])
    await store.heartbeat(again.id, lease(again))
    assert await events(store, job) == []
    # A repeated completion of a completed job changes nothing: still one event.
    done = await running(store)
    await store.complete(done.id, {"ok": 1}, lease(done))
    await store.complete(done.id, {"ok": 1}, lease(done))
    await store.complete_many([Completion(done.id, lease(done), {"ok": 1})])
    assert len(await events(store, done)) == 1


async def test_a_job_without_a_callback_writes_no_event(store: Store) -> None:
    job = await running(store, callback_url=None)
    await store.complete(job.id, {"ok": 1}, lease(job))
    assert await events(store, job) == []


async def test_a_retried_job_that_finishes_again_sends_a_new_event(store: Store) -> None:
    job = await running(store)
    await store.fail(job.id, category="invalid_input", message="bad", lease_token=lease(job))
    await store.retry(job.id)
    [again] = await store.claim("w1", limit=1, lease_seconds=60, task_types=[job.task_type])
    await store.complete(again.id, {"ok": 2}, lease(again))
    first, second = await events(store, job)
    assert (first["event_type"], second["event_type"]) == ("job.failed", "job.completed")
    assert first["id"] != second["id"]


async def test_a_transition_rolled_back_leaves_no_event(store: Store, database_url: str) -> None:
    job = await running(store)
    conn = await psycopg.AsyncConnection.connect(database_url)
    async with conn, conn.transaction(force_rollback=True):
        await conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL"
            " WHERE id = %s",
            [job.id],
        )
        cur = await conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE job_id = %s", [job.id]
        )
        assert await cur.fetchone() == (1,)  # visible inside the transaction
    assert await events(store, job) == []
    assert (await store.get_job(job.id)).status is JobStatus.RUNNING


async def test_retention_deletes_a_jobs_events_with_it(store: Store) -> None:
    job, _ = await _complete(store)
    other, _ = await _cancel(store)
    await sql(
        store, "UPDATE jobs SET finished_at = now() - interval '10 days' WHERE id = %s", [job.id]
    )
    deleted = await store.prune_finished(completed_seconds=86400, failed_seconds=86400)
    assert deleted == 1
    assert await events(store, job) == []
    assert len(await events(store, other)) == 1


async def test_truncating_the_jobs_clears_the_outbox(store: Store) -> None:
    job, _ = await _complete(store)
    await sql(store, "TRUNCATE jobs")
    assert await events(store, job) == []


# -- the deliverer's statements ----------------------------------------------------------


def outcome(delivery_id: uuid.UUID, ok: bool, delay: float = 0.0, **fields: Any) -> DeliveryOutcome:
    return DeliveryOutcome(delivery_id, ok, datetime.now(UTC), duration_ms=5, delay=delay, **fields)


async def test_a_claim_takes_due_deliveries_for_a_lease(store: Store) -> None:
    job, _ = await _complete(store)
    [taken] = await store.claim_deliveries(batch=10, lease=60)
    assert taken.job_id == job.id
    assert taken.attempts == 0
    # Taken: not due again until the lease ends (a second deliverer skips it).
    assert await store.claim_deliveries(batch=10, lease=60) == []
    [row] = await events(store, job)
    assert row["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=50)


async def test_a_failed_attempt_is_logged_and_retried_later(store: Store) -> None:
    job, _ = await _complete(store)
    [taken] = await store.claim_deliveries(batch=10, lease=60)
    statuses = await store.record_deliveries(
        [outcome(taken.id, False, delay=0.0, http_status=500, error="HTTP 500", response="boom")],
        max_age=3600,
        attempts_kept=3,
    )
    assert statuses == {taken.id: "pending"}
    [again] = await store.claim_deliveries(batch=10, lease=60)  # due at once (delay 0)
    assert (again.id, again.attempts) == (taken.id, 1)
    await store.record_deliveries([outcome(taken.id, True)], max_age=3600, attempts_kept=3)
    [delivery] = await store.list_deliveries(job.id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 2, None)
    assert delivery.delivered_at is not None
    first, second = delivery.attempt_log
    assert (first["attempt"], first["http_status"], first["error"]) == (1, 500, "HTTP 500")
    assert first["response"] == "boom"
    assert first["duration_ms"] == 5
    assert (second["attempt"], second["error"]) == (2, None)


async def test_the_attempt_log_keeps_the_newest_attempts(store: Store) -> None:
    job, _ = await _complete(store)
    for _ in range(5):
        [taken] = await store.claim_deliveries(batch=10, lease=60)
        await store.record_deliveries(
            [outcome(taken.id, False, error="refused")], max_age=3600, attempts_kept=3
        )
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.attempts == 5
    assert [a["attempt"] for a in delivery.attempt_log] == [3, 4, 5]


async def test_a_retry_is_never_scheduled_past_the_maximum_age(store: Store) -> None:
    job, _ = await _complete(store)
    [taken] = await store.claim_deliveries(batch=10, lease=60)
    await store.record_deliveries(
        [outcome(taken.id, False, delay=7200, error="refused")], max_age=600, attempts_kept=3
    )
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.status == "pending"
    assert delivery.next_attempt_at == delivery.created_at + timedelta(seconds=600)


async def test_a_failed_attempt_past_the_maximum_age_fails_the_delivery(store: Store) -> None:
    job, _ = await _complete(store)
    await sql(
        store,
        "UPDATE webhook_deliveries SET created_at = now() - interval '2 hours' WHERE job_id = %s",
        [job.id],
    )
    [taken] = await store.claim_deliveries(batch=10, lease=60)
    statuses = await store.record_deliveries(
        [outcome(taken.id, False, error="refused")], max_age=3600, attempts_kept=3
    )
    assert statuses == {taken.id: "failed"}
    assert await store.claim_deliveries(batch=10, lease=60) == []
    # A late outcome of the same attempt (another deliverer) changes nothing.
    assert (
        await store.record_deliveries([outcome(taken.id, True)], max_age=3600, attempts_kept=3)
        == {}
    )
