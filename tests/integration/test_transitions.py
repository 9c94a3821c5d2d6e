"""Every legal and illegal transition of the job state machine (see `ai_service.jobs`).

A rejected transition must raise the right domain error and leave the row exactly
as it was; the full row is compared before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from ai_service import errors
from ai_service.jobs import ERRORS_KEPT, MAX_ATTEMPTS, Job, JobFilter, JobStatus
from ai_service.store import Completion, Store
from tests.helpers import new_job

BACKOFF_BASE = 4.0
BACKOFF_MAX = 10.0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store with a short, known retry backoff (overrides the shared fixture)."""
    s = await Store.open(
        database_url, min_size=1, max_size=5, wait=True,
        backoff_base=BACKOFF_BASE, backoff_max=BACKOFF_MAX,
    )  # fmt: skip
    yield s
    await s.close()


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def create(store: Store, **overrides: Any) -> Job:
    [outcome] = await store.create_jobs([new_job(**overrides)])
    return outcome.job


async def claim(store: Store, job: Job, worker: str = "w1", lease: float = 60) -> Job:
    """Claim `job`, the only pending job of this test (runnable now)."""
    await sql(store, "UPDATE jobs SET run_after = now() WHERE id = %s", [job.id])
    [claimed] = await store.claim(worker, limit=1, lease_seconds=lease)
    assert claimed.id == job.id
    return claimed


def token(job: Job) -> uuid.UUID:
    assert job.lease_token is not None
    return job.lease_token


def parse_at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"])


# -- the happy path --------------------------------------------------------------------


async def test_claim_moves_pending_to_running_with_a_fresh_lease(store: Store) -> None:
    job = await create(store)
    running = await claim(store, job, worker="w-7", lease=42)
    assert running.status is JobStatus.RUNNING
    assert running.attempt == 1
    assert running.worker_id == "w-7"
    assert running.lease_token is not None
    assert running.started_at == running.updated_at
    assert running.lease_expires_at == running.started_at + timedelta(seconds=42)
    assert running.finished_at is None
    assert await store.get_job(job.id) == running


async def test_every_claim_issues_a_new_lease_token(store: Store) -> None:
    job = await create(store)
    first = await claim(store, job)
    await store.fail(
        job.id, category="timeout", message="t", lease_token=token(first), retryable=True
    )
    second = await claim(store, job)
    assert second.attempt == 2
    assert token(second) != token(first)


async def test_complete_with_the_lease_token_stores_the_result(store: Store) -> None:
    running = await claim(store, await create(store))
    done = await store.complete(running.id, {"content": "ok"}, token(running))
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"content": "ok"}
    assert done.finished_at == done.updated_at
    # The last attempt's token stays (a repeat of this completion is recognised).
    assert (done.lease_token, done.lease_expires_at) == (token(running), None)
    assert done.attempt == 1
    assert done.worker_id == "w1"
    assert done.errors == []
    assert await store.get_job(running.id) == done


async def test_complete_after_a_retried_failure_clears_the_current_error(store: Store) -> None:
    job = await create(store)
    first = await claim(store, job)
    await store.fail(
        job.id, category="timeout", message="t", lease_token=token(first), retryable=True
    )
    second = await claim(store, job)
    done = await store.complete(job.id, {"ok": 1}, token(second))
    assert (done.error_category, done.error_message, done.error_details) == (None, None, None)
    assert [e["category"] for e in done.errors] == ["timeout"]  # history kept


# -- failures --------------------------------------------------------------------------


async def test_retryable_failure_with_attempts_left_backs_off_to_pending(store: Store) -> None:
    job = await create(store, max_attempts=4)
    for attempt, window in [(1, 4.0), (2, 8.0), (3, 10.0)]:  # base 4, doubling, cap 10
        running = await claim(store, job, worker=f"w{attempt}")
        failed = await store.fail(
            job.id,
            category="provider_unavailable",
            message=f"down {attempt}",
            details={"status": 503},
            lease_token=token(running),
            retryable=True,
        )
        assert failed.status is JobStatus.PENDING
        assert failed.attempt == attempt
        delay = (failed.run_after - failed.updated_at).total_seconds()
        assert 0.5 * window <= delay <= window
        assert failed.lease_token == token(running)  # until the next claim
        assert failed.lease_expires_at is None
        assert failed.finished_at is None
        assert (failed.error_category, failed.error_message) == (
            "provider_unavailable",
            f"down {attempt}",
        )
        assert failed.error_details == {"status": 503}
        assert len(failed.errors) == attempt
        entry = failed.errors[-1]
        assert set(entry) == {"attempt", "category", "message", "worker", "at"}
        assert entry["attempt"] == attempt
        assert entry["category"] == "provider_unavailable"
        assert entry["message"] == f"down {attempt}"
        assert entry["worker"] == f"w{attempt}"
        assert parse_at(entry) == failed.updated_at


async def defer(store: Store, running: Job, **overrides: Any) -> Job:
    params: dict[str, Any] = {
        "category": "provider_unavailable",
        "message": "llm: cannot reach http://vllm:8000/v1",
        "lease_token": token(running),
        "outage_max": 3600.0,
    }
    return await store.defer(running.id, **(params | overrides))


async def test_an_outage_defers_the_job_without_spending_the_attempt(store: Store) -> None:
    job = await create(store, max_attempts=1)
    running = await claim(store, job, worker="w9")
    assert running.attempt == 1
    deferred = await defer(store, running, details={"provider": "llm"})
    assert deferred.status is JobStatus.PENDING
    assert deferred.attempt == 0  # the next claim runs attempt 1 again
    assert deferred.error_count == 1
    assert deferred.outage_since == deferred.updated_at
    assert deferred.finished_at is None
    assert deferred.lease_expires_at is None
    assert deferred.lease_token == token(running)  # until the next claim
    assert (deferred.error_category, deferred.error_details) == (
        "provider_unavailable",
        {"provider": "llm"},
    )
    [entry] = deferred.errors
    assert entry["deferred"] is True
    assert (entry["attempt"], entry["worker"]) == (1, "w9")
    # The outage backoff: RETRY_BACKOFF_BASE at first, jittered into its upper half.
    wait = (deferred.run_after - deferred.updated_at).total_seconds()
    assert 0.5 * BACKOFF_BASE <= wait <= BACKOFF_BASE
    # With max_attempts 1, a failure would have ended the job; the outage did not.
    again = await claim(store, deferred)
    assert again.attempt == 1
    second = await defer(store, again, category="rate_limited", message="slow down", delay=0)
    assert second.outage_since == deferred.outage_since  # measured from the first outage
    assert second.run_after == second.updated_at  # `delay` replaces the backoff
    assert [e["category"] for e in second.errors] == ["provider_unavailable", "rate_limited"]
    completed = await store.complete(
        second.id, {"ok": True}, lease_token=token(await claim(store, second))
    )
    assert completed.outage_since is None  # progress: a later outage starts a new budget
    assert completed.attempt == 1


async def test_past_the_outage_budget_the_job_fails_with_the_category(store: Store) -> None:
    job = await create(store, max_attempts=5)
    running = await claim(store, job)
    await defer(store, running)
    await sql(
        store, "UPDATE jobs SET outage_since = now() - interval '2 hours' WHERE id = %s", [job.id]
    )
    running = await claim(store, job)
    failed = await defer(store, running, category="rate_limited", message="429", outage_max=3600)
    assert failed.status is JobStatus.FAILED
    assert failed.attempt == 1  # the attempt that met the outage stays counted
    assert failed.error_category == "rate_limited"
    assert failed.finished_at == failed.updated_at
    assert [e["deferred"] for e in failed.errors] == [True, False]
    # A manual retry grants a fresh budget.
    retried = await store.retry(job.id)
    assert retried.outage_since is None
    assert retried.status is JobStatus.PENDING


async def test_a_failure_that_is_no_outage_ends_the_outage(store: Store) -> None:
    job = await create(store, max_attempts=5)
    await defer(store, await claim(store, job))
    assert (await store.get_job(job.id)).outage_since is not None
    running = await claim(store, job)
    failed = await store.fail(
        job.id, category="timeout", message="slow", lease_token=token(running), retryable=True
    )
    assert (failed.status, failed.outage_since) == (JobStatus.PENDING, None)


async def test_an_outage_long_ago_does_not_count_against_a_later_one(store: Store) -> None:
    """A job deferred once, then left waiting (a long queue) for hours before its next
    claim, meets a new outage: a new one begins, it is not failed for the old one."""
    job = await create(store, max_attempts=5)
    await defer(store, await claim(store, job))
    # The job met its outage 7 hours ago and could run again a minute later, but was
    # claimed only now.
    await sql(
        store,
        "UPDATE jobs SET outage_since = now() - interval '7 hours',"
        " run_after = now() - interval '7 hours' + interval '1 minute' WHERE id = %s",
        [job.id],
    )
    [running] = await store.claim("w1", limit=1, lease_seconds=60)
    again = await defer(store, running, outage_max=6 * 3600.0)
    assert (again.status, again.attempt) == (JobStatus.PENDING, 0)
    assert again.outage_since is not None
    assert again.outage_since == again.updated_at  # a new outage, begun now
    # Retried at once (claimed when due), the outage goes on and its age counts.
    await sql(
        store,
        "UPDATE jobs SET outage_since = now() - interval '7 hours', run_after = now()"
        " WHERE id = %s",
        [job.id],
    )
    [running] = await store.claim("w1", limit=1, lease_seconds=60)
    failed = await defer(store, running, outage_max=6 * 3600.0)
    assert failed.status is JobStatus.FAILED


async def test_defer_is_fenced_by_the_lease_and_recognises_its_repeat(store: Store) -> None:
    job = await create(store)
    running = await claim(store, job)
    with pytest.raises(errors.LeaseLost):
        await defer(store, running, lease_token=uuid.uuid4())
    assert (await store.get_job(job.id)).status is JobStatus.RUNNING
    deferred = await defer(store, running, delay=30)
    repeat = await defer(store, running, delay=30)  # a lost reply, sent again
    assert repeat == deferred
    assert len(repeat.errors) == 1
    # A pending job is not running any more: a stale worker cannot defer it again.
    with pytest.raises(errors.LeaseLost):
        await defer(store, running, message="another message")


async def test_retryable_failure_is_not_claimable_before_its_backoff(store: Store) -> None:
    job = await create(store)
    running = await claim(store, job)
    await store.fail(
        job.id, category="timeout", message="t", lease_token=token(running), retryable=True
    )
    assert await store.claim("w2", limit=10, lease_seconds=60) == []


async def test_permanent_failure_fails_the_job(store: Store) -> None:
    running = await claim(store, await create(store, max_attempts=5))
    failed = await store.fail(
        running.id, category="invalid_input", message="no audio", lease_token=token(running)
    )
    assert failed.status is JobStatus.FAILED
    assert failed.finished_at == failed.updated_at
    assert failed.lease_token == token(running)
    assert failed.lease_expires_at is None
    assert (failed.error_category, failed.error_message) == ("invalid_input", "no audio")
    assert failed.error_details is None
    [entry] = failed.errors
    assert (entry["attempt"], entry["category"], entry["worker"]) == (1, "invalid_input", "w1")


async def test_retryable_failure_on_the_last_attempt_fails_the_job(store: Store) -> None:
    job = await create(store, max_attempts=2)
    first = await claim(store, job)
    await store.fail(
        job.id, category="timeout", message="1", lease_token=token(first), retryable=True
    )
    second = await claim(store, job)
    failed = await store.fail(
        job.id, category="timeout", message="2", lease_token=token(second), retryable=True
    )
    assert failed.status is JobStatus.FAILED
    assert failed.attempt == failed.max_attempts == 2
    assert [(e["attempt"], e["message"]) for e in failed.errors] == [(1, "1"), (2, "2")]


# -- mirror path: the caller did the work itself ---------------------------------------


async def test_mirror_complete_of_a_pending_job_without_token(store: Store) -> None:
    job = await create(store)
    done = await store.complete(job.id, {"content": "from telephony"})
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"content": "from telephony"}
    assert done.attempt == 0
    assert done.started_at is None
    assert done.finished_at is not None


@pytest.mark.parametrize("retryable", [False, True])
async def test_mirror_fail_of_a_pending_job_without_token(store: Store, retryable: bool) -> None:
    job = await create(store)
    failed = await store.fail(job.id, category="timeout", message="slow", retryable=retryable)
    assert failed.status is JobStatus.FAILED  # nothing to retry: the caller ran it
    assert failed.finished_at is not None
    [entry] = failed.errors
    assert (entry["attempt"], entry["category"], entry["worker"]) == (0, "timeout", None)


# -- fencing: a stale lease token changes nothing --------------------------------------

Action = Callable[[Store, Job, uuid.UUID], Awaitable[Job]]


async def _complete(store: Store, job: Job, lease: uuid.UUID) -> Job:
    return await store.complete(job.id, {"late": True}, lease)


async def _fail(store: Store, job: Job, lease: uuid.UUID) -> Job:
    return await store.fail(job.id, category="timeout", message="late", lease_token=lease)


async def _heartbeat(store: Store, job: Job, lease: uuid.UUID) -> Job:
    return await store.heartbeat(job.id, lease, 600)


FENCED: list[tuple[str, Action]] = [
    ("complete", _complete),
    ("fail", _fail),
    ("heartbeat", _heartbeat),
]


@pytest.mark.parametrize(("action", "run"), FENCED, ids=[a for a, _ in FENCED])
async def test_random_token_on_a_running_job_is_lease_lost(
    store: Store, action: str, run: Action
) -> None:
    running = await claim(store, await create(store))
    with pytest.raises(errors.LeaseLost) as info:
        await run(store, running, uuid.uuid4())
    assert (info.value.status, info.value.action) == ("running", action)
    assert await store.get_job(running.id) == running


@pytest.mark.parametrize(("action", "run"), FENCED, ids=[a for a, _ in FENCED])
async def test_previous_lease_token_after_a_new_claim_is_lease_lost(
    store: Store, action: str, run: Action
) -> None:
    job = await create(store)
    old = await claim(store, job, worker="old")
    await store.retry(job.id)  # e.g. an operator's retry while "old" still works
    current = await claim(store, job, worker="new")
    with pytest.raises(errors.LeaseLost):
        await run(store, job, token(old))
    assert await store.get_job(job.id) == current


@pytest.mark.parametrize(("action", "run"), FENCED, ids=[a for a, _ in FENCED])
async def test_old_token_on_a_job_back_in_pending_is_lease_lost(
    store: Store, action: str, run: Action
) -> None:
    job = await create(store)
    old = await claim(store, job)
    pending = await store.retry(job.id)
    with pytest.raises(errors.LeaseLost) as info:
        await run(store, job, token(old))
    assert info.value.status == "pending"
    assert await store.get_job(job.id) == pending


@pytest.mark.parametrize("action", ["complete", "fail"])
async def test_tokenless_complete_or_fail_of_a_running_job_is_lease_lost(
    store: Store, action: str
) -> None:
    running = await claim(store, await create(store))
    with pytest.raises(errors.LeaseLost):
        await ACTIONS[action](store, running)
    assert await store.get_job(running.id) == running


# -- terminal jobs ---------------------------------------------------------------------


async def _terminal(store: Store, status: JobStatus) -> Job:
    job = await create(store)
    if status is JobStatus.COMPLETED:
        running = await claim(store, job)
        return await store.complete(job.id, {"ok": True}, token(running))
    if status is JobStatus.FAILED:
        running = await claim(store, job)
        return await store.fail(
            job.id, category="internal", message="x", lease_token=token(running)
        )
    return await store.cancel(job.id)


ACTIONS: dict[str, Callable[[Store, Job], Awaitable[Job]]] = {
    "complete": lambda s, j: s.complete(j.id, {"again": True}),
    "complete_with_token": lambda s, j: s.complete(j.id, {"again": True}, uuid.uuid4()),
    "fail": lambda s, j: s.fail(j.id, category="internal", message="again"),
    "fail_with_token": lambda s, j: s.fail(
        j.id, category="internal", message="again", lease_token=uuid.uuid4()
    ),
    "heartbeat": lambda s, j: s.heartbeat(j.id, uuid.uuid4(), 60),
    "cancel": lambda s, j: s.cancel(j.id),
    "retry": lambda s, j: s.retry(j.id),
}

TERMINAL_CASES = [
    (status, action)
    for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    for action in ACTIONS
    if not (status is JobStatus.FAILED and action == "retry")  # the one legal move
]


@pytest.mark.parametrize(("status", "action"), TERMINAL_CASES)
async def test_action_on_a_terminal_job_is_an_invalid_transition(
    store: Store, status: JobStatus, action: str
) -> None:
    job = await _terminal(store, status)
    with pytest.raises(errors.InvalidTransition) as info:
        await ACTIONS[action](store, job)
    assert info.value.status == status.value
    assert info.value.action == action.removesuffix("_with_token")
    assert await store.get_job(job.id) == job


@pytest.mark.parametrize("action", ["retry", "heartbeat"])
async def test_retry_and_heartbeat_of_a_pending_job_are_rejected(store: Store, action: str) -> None:
    job = await create(store)
    expected = errors.InvalidTransition if action == "retry" else errors.LeaseLost
    with pytest.raises(expected):
        await ACTIONS[action](store, job)
    assert await store.get_job(job.id) == job


@pytest.mark.parametrize("action", list(ACTIONS))
async def test_action_on_an_unknown_job_is_job_not_found(store: Store, action: str) -> None:
    await create(store)
    ghost = await create(store)
    await sql(store, "DELETE FROM jobs WHERE id = %s", [ghost.id])
    with pytest.raises(errors.JobNotFound) as info:
        await ACTIONS[action](store, ghost)
    assert info.value.job_id == ghost.id


# -- heartbeats ------------------------------------------------------------------------


async def test_heartbeat_extends_the_lease(store: Store) -> None:
    running = await claim(store, await create(store), lease=5)
    beat = await store.heartbeat(running.id, token(running), 300)
    assert beat.status is JobStatus.RUNNING
    assert beat.lease_token == running.lease_token
    assert beat.lease_expires_at == beat.updated_at + timedelta(seconds=300)
    assert running.lease_expires_at is not None
    assert beat.lease_expires_at > running.lease_expires_at
    assert (beat.attempt, beat.started_at) == (running.attempt, running.started_at)


async def test_heartbeat_after_cancel_is_rejected_and_changes_nothing(store: Store) -> None:
    running = await claim(store, await create(store))
    cancelled = await store.cancel(running.id)
    with pytest.raises(errors.InvalidTransition) as info:
        await store.heartbeat(running.id, token(running), 300)
    assert info.value.status == "cancelled"
    assert await store.get_job(running.id) == cancelled


async def test_heartbeat_many_extends_only_leases_still_held(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(6)])
    claimed = await store.claim("w", limit=6, lease_seconds=5)
    by_id = {j.id: j for j in claimed}
    assert set(by_id) == {o.job.id for o in outcomes}
    valid = claimed[:3]
    stale = claimed[3:]
    leases = [(j.id, token(j)) for j in valid] + [(j.id, uuid.uuid4()) for j in stale]
    held = await store.heartbeat_many(leases, 300)
    assert held == {j.id for j in valid}
    for job in valid:
        now = await store.get_job(job.id)
        assert now.lease_expires_at == now.updated_at + timedelta(seconds=300)
    for job in stale:
        assert await store.get_job(job.id) == job
    assert await store.heartbeat_many([], 300) == set()


# -- batched completion ----------------------------------------------------------------


async def test_complete_many_fences_each_job_by_its_own_token(store: Store) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(8)])
    claimed = await store.claim("w", limit=8, lease_seconds=60)
    a, b, c, d, e, f, g, h = claimed
    completions = [
        Completion(a.id, token(a), {"n": "a"}),
        Completion(b.id, token(b), {"n": "b"}),
        Completion(c.id, uuid.uuid4(), {"n": "c"}),  # stale
        Completion(d.id, token(e), {"n": "d"}),  # another job's token
        Completion(e.id, token(d), {"n": "e"}),
        Completion(f.id, token(f), {"n": "f"}),
    ]
    await store.cancel(f.id)  # f's lease is gone before the batch arrives
    done = await store.complete_many(completions)
    assert set(done) == {a.id, b.id}
    assert done[a.id]["task_type"] == a.task_type
    for job, name in ((a, "a"), (b, "b")):
        now = await store.get_job(job.id)
        assert now.status is JobStatus.COMPLETED
        assert now.result == {"n": name}
        assert now.lease_token == token(job)
    for job in (c, d, e, g, h):
        assert await store.get_job(job.id) == job
    assert (await store.get_job(f.id)).status is JobStatus.CANCELLED
    assert await store.complete_many([]) == {}


async def test_complete_many_does_not_complete_pending_jobs(store: Store) -> None:
    job = await create(store)
    assert await store.complete_many([Completion(job.id, uuid.uuid4(), {"x": 1})]) == {}
    assert await store.get_job(job.id) == job


# -- release (graceful stop) -----------------------------------------------------------


async def test_release_returns_the_job_to_pending_without_counting_the_attempt(
    store: Store,
) -> None:
    job = await create(store, max_attempts=1)
    running = await claim(store, job)
    assert await store.release_many([(job.id, token(running))]) == {job.id}
    released = await store.get_job(job.id)
    assert released.status is JobStatus.PENDING
    assert released.attempt == 0
    assert released.lease_token is None
    assert released.lease_expires_at is None
    assert released.started_at is None
    assert released.run_after <= released.updated_at
    assert released.errors == []
    # The one attempt is still available, and the old lease is dead.
    again = await claim(store, job, worker="w2")
    assert again.attempt == 1
    with pytest.raises(errors.LeaseLost):
        await store.complete(job.id, {"late": True}, token(running))


async def test_release_with_a_stale_token_changes_nothing(store: Store) -> None:
    running = await claim(store, await create(store))
    assert await store.release_many([(running.id, uuid.uuid4())]) == set()
    assert await store.get_job(running.id) == running
    assert await store.release_many([]) == set()


# -- manual retry ----------------------------------------------------------------------


async def test_retry_of_a_failed_job_grants_one_more_attempt_and_keeps_history(
    store: Store,
) -> None:
    job = await create(store, max_attempts=1)
    running = await claim(store, job)
    failed = await store.fail(
        job.id, category="provider_error", message="500", lease_token=token(running)
    )
    retried = await store.retry(job.id)
    assert retried.status is JobStatus.PENDING
    assert retried.attempt == 1
    assert retried.max_attempts == 2  # grown: otherwise no attempt would be left
    assert retried.errors == failed.errors
    assert retried.finished_at is None
    assert retried.run_after == retried.updated_at  # runnable now
    again = await claim(store, job)
    assert again.attempt == 2


async def test_retry_keeps_max_attempts_when_attempts_are_left(store: Store) -> None:
    job = await create(store, max_attempts=3)
    running = await claim(store, job)
    await store.fail(job.id, category="invalid_input", message="x", lease_token=token(running))
    retried = await store.retry(job.id)
    assert (retried.attempt, retried.max_attempts) == (1, 3)


async def test_retry_of_a_running_job_revokes_its_lease(store: Store) -> None:
    job = await create(store, max_attempts=1)
    running = await claim(store, job)
    retried = await store.retry(job.id)
    assert retried.status is JobStatus.PENDING
    assert (retried.lease_token, retried.lease_expires_at) == (None, None)
    assert retried.max_attempts == 2
    with pytest.raises(errors.LeaseLost):
        await store.complete(job.id, {"late": True}, token(running))
    assert await store.get_job(job.id) == retried


async def test_retry_of_a_job_that_used_the_maximum_attempts_is_refused(store: Store) -> None:
    # A manual retry never grows max_attempts past MAX_ATTEMPTS (100): the job stays
    # as it was and the caller learns why.
    job = await create(store, max_attempts=MAX_ATTEMPTS)
    await sql(
        store,
        "UPDATE jobs SET status = 'failed', attempt = 100, error_category = 'timeout',"
        " finished_at = now() WHERE id = %s",
        [job.id],
    )
    before = await store.get_job(job.id)
    with pytest.raises(errors.AttemptsExhausted) as info:
        await store.retry(job.id)
    assert info.value.details == {"job_id": str(job.id), "attempt": 100, "max_attempts": 100}
    assert "at most 100" in info.value.message
    assert await store.get_job(job.id) == before
    # The bulk retry leaves it alone as well.
    assert (await store.retry_by_filter(JobFilter(statuses=(JobStatus.FAILED,)))).count == 0
    assert await store.get_job(job.id) == before


async def test_retry_grants_attempts_up_to_the_maximum_and_no_further(store: Store) -> None:
    job = await create(store, max_attempts=1)
    await sql(
        store,
        "UPDATE jobs SET status = 'failed', attempt = 99, max_attempts = 99,"
        " error_category = 'timeout', finished_at = now() WHERE id = %s",
        [job.id],
    )
    retried = await store.retry(job.id)
    assert (retried.attempt, retried.max_attempts) == (99, 100)
    running = await claim(store, job)
    assert running.attempt == 100
    # A running job on its last attempt may not be retried either: no attempt is left.
    with pytest.raises(errors.AttemptsExhausted):
        await store.retry(job.id)
    failed = await store.fail(job.id, category="internal", message="x", lease_token=token(running))
    assert failed.max_attempts == 100
    with pytest.raises(errors.AttemptsExhausted):
        await store.retry(job.id)


async def test_a_job_from_before_the_cap_keeps_the_attempts_it_was_given(store: Store) -> None:
    # Rows written before the cap may hold more than 100: attempts left are still usable.
    job = await create(store)
    await sql(
        store,
        "UPDATE jobs SET status = 'failed', attempt = 120, max_attempts = 131,"
        " error_category = 'timeout', finished_at = now() WHERE id = %s",
        [job.id],
    )
    retried = await store.retry(job.id)
    assert (retried.status, retried.attempt, retried.max_attempts) == (
        JobStatus.PENDING, 120, 131,
    )  # fmt: skip
    await sql(
        store,
        "UPDATE jobs SET status = 'failed', attempt = 131, finished_at = now() WHERE id = %s",
        [job.id],
    )
    with pytest.raises(errors.AttemptsExhausted):
        await store.retry(job.id)


async def test_error_history_keeps_the_newest_entries_and_counts_every_failure(
    store: Store,
) -> None:
    job = await create(store, max_attempts=MAX_ATTEMPTS)
    total = ERRORS_KEPT + 15
    for n in range(1, total + 1):
        running = await claim(store, job, worker=f"w{n}")
        failed = await store.fail(
            job.id, category="timeout", message=f"m{n}", lease_token=token(running), retryable=True
        )
        assert failed.error_count == n
        assert len(failed.errors) == min(n, ERRORS_KEPT)
    assert [e["message"] for e in failed.errors] == [
        f"m{n}" for n in range(total - ERRORS_KEPT + 1, total + 1)
    ]
    assert failed.errors[-1]["attempt"] == total
    # The rescuer appends to the same bounded history.
    running = await claim(store, job, lease=1)
    await sql(
        store, "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s", [job.id]
    )
    await store.rescue_expired()
    rescued = await store.get_job(job.id)
    assert rescued.error_count == total + 1
    assert len(rescued.errors) == ERRORS_KEPT
    assert rescued.errors[-1]["category"] == "lease_expired"
    assert rescued.errors[0]["message"] == f"m{total - ERRORS_KEPT + 2}"


# -- cancel ----------------------------------------------------------------------------


async def test_cancel_a_pending_job(store: Store) -> None:
    job = await create(store)
    cancelled = await store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at == cancelled.updated_at
    assert cancelled.error_category == "cancelled"
    assert await store.claim("w", limit=10, lease_seconds=60) == []


async def test_cancel_after_a_failed_attempt_has_category_cancelled(store: Store) -> None:
    job = await create(store)
    running = await claim(store, job)
    failed = await store.fail(
        job.id,
        category="provider_unavailable",
        message="503",
        details={"status": 503},
        lease_token=token(running),
        retryable=True,
    )
    assert failed.status is JobStatus.PENDING
    cancelled = await store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error_category == "cancelled"
    assert cancelled.error_details is None
    assert cancelled.error_message == "cancelled on request"
    assert [e["category"] for e in cancelled.errors] == ["provider_unavailable"]  # history kept
    # The bulk cancel does the same.
    other = await claim(store, await create(store, owner_ref="bulk"))
    await store.fail(
        other.id, category="timeout", message="t", lease_token=token(other), retryable=True
    )
    [cancelled_id] = (await store.cancel_by_filter(JobFilter(owner_ref="bulk"))).sample
    assert (await store.get_job(cancelled_id)).error_category == "cancelled"


async def test_cancel_a_running_job_revokes_its_lease(store: Store) -> None:
    running = await claim(store, await create(store))
    cancelled = await store.cancel(running.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert (cancelled.lease_token, cancelled.lease_expires_at) == (None, None)
    assert cancelled.finished_at is not None
    with pytest.raises(errors.InvalidTransition):
        await store.complete(running.id, {"late": True}, token(running))
    assert await store.get_job(running.id) == cancelled
