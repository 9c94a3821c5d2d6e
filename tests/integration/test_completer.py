"""The group-commit completer: each job's outcome is its own, on a real PostgreSQL.

A trigger installed in the test database stands for "a result the database
refuses" (it raises for results carrying `poison`) and for "a statement that
runs too long" (it sleeps for results carrying `slow`, under a statement
timeout), so that whole batches fail exactly as they would in production.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import psycopg
import pytest

from ai_service import errors
from ai_service.db import is_outage
from ai_service.jobs import Job, JobStatus
from ai_service.store import ClaimRequest, Completion, Store
from ai_service.worker.completer import WRITERS, Completer, Refused
from tests.helpers import new_job

TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result ? 'poison' THEN
        RAISE EXCEPTION 'result refused: poison';
    END IF;
    IF NEW.result ? 'slow' THEN
        PERFORM pg_sleep(5);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE UPDATE ON jobs
    FOR EACH ROW WHEN (NEW.result IS NOT NULL) EXECUTE FUNCTION refuse_poison();
"""


async def _claimed(store: Store, n: int) -> list[Completion]:
    await store.create_jobs([new_job(owner_ref=f"r{i}") for i in range(n)])
    jobs = await store.claim("w", limit=n, lease_seconds=600)
    assert len(jobs) == n
    return [Completion(j.id, j.lease_token, {"i": i}) for i, j in enumerate(jobs) if j.lease_token]


async def _statuses(store: Store, ids: list[UUID]) -> list[JobStatus]:
    return [(await store.get_job(i)).status for i in ids]


async def test_non_serialisable_and_nul_results_are_refused_alone_at_once(store: Store) -> None:
    completions = await _claimed(store, 6)
    completions[1] = Completion(completions[1].job_id, completions[1].lease_token, {"x": object()})
    completions[4] = Completion(completions[4].job_id, completions[4].lease_token, {"x": "a\x00b"})
    completer = Completer(store)
    outcomes = await asyncio.gather(*(completer.submit(c) for c in completions))
    assert isinstance(outcomes[1], Refused)
    assert "JSON" in outcomes[1].reason
    assert isinstance(outcomes[4], Refused)
    assert "NUL" in outcomes[4].reason
    assert [o for i, o in enumerate(outcomes) if i not in (1, 4)] == [True] * 4
    statuses = await _statuses(store, [c.job_id for c in completions])
    assert statuses.count(JobStatus.COMPLETED) == 4
    assert statuses[1] is statuses[4] is JobStatus.RUNNING  # the runner fails them next


async def test_a_result_refused_inside_a_batch_leaves_the_others_completed(
    store: Store, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(TRIGGER)
    completions = await _claimed(store, 9)
    poisoned = completions[5]
    completions[5] = Completion(poisoned.job_id, poisoned.lease_token, {"poison": True})
    completer = Completer(store)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(completer.submit(c) for c in completions))
    assert time.monotonic() - started < 5  # at once, not after a lease
    refused = outcomes[5]
    assert isinstance(refused, Refused)
    assert "poison" in refused.reason
    assert outcomes[:5] + outcomes[6:] == [True] * 8
    statuses = await _statuses(store, [c.job_id for c in completions])
    assert statuses.count(JobStatus.COMPLETED) == 8


async def test_a_result_submitted_after_the_queue_ran_dry_is_written(store: Store) -> None:
    # One at a time: each submission comes right after the writer found the queue
    # empty, the moment a writer that is done but not yet forgotten would strand it.
    completer = Completer(store)
    for completion in await _claimed(store, 30):
        assert await asyncio.wait_for(completer.submit(completion), 10) is True
    assert not completer._writers


async def test_at_most_the_set_number_of_batches_are_written_at_once(store: Store) -> None:
    completions = await _claimed(store, 40)
    completer = Completer(store)
    real = store.complete_many
    writing = most = 0

    async def counted(batch: list[Completion]) -> dict[UUID, dict[str, object]]:
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        try:
            await asyncio.sleep(0.05)
            return await real(batch)
        finally:
            writing -= 1

    store.complete_many = counted  # type: ignore[method-assign]
    outcomes = []
    for completion in completions:  # finishing one by one, as jobs do
        outcomes.append(asyncio.ensure_future(completer.submit(completion)))
        await asyncio.sleep(0.005)
    assert await asyncio.gather(*outcomes) == [True] * 40
    assert most == WRITERS


class Refiller:
    """A `Refill` that claims `limit` jobs with each batch and keeps what it got."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.settled: list[tuple[list[UUID], list[Job] | None]] = []

    def request(self, batch: object) -> ClaimRequest:
        return ClaimRequest.of("w", self.limit, 600)

    def settle(
        self, request: ClaimRequest, batch: list[Completion], jobs: list[Job] | None
    ) -> None:
        assert request.limit == self.limit
        self.settled.append(([c.job_id for c in batch], jobs))


async def _writers(store: Store, ids: list[UUID]) -> set[str]:
    """The transactions that last wrote these jobs' rows."""
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT xmin::text FROM jobs WHERE id = ANY(%s)", [ids])
        return {row["xmin"] for row in await cur.fetchall()}


async def test_a_refill_claims_in_the_transaction_that_records_the_batch(store: Store) -> None:
    completions = await _claimed(store, 3)
    await store.create_jobs([new_job(owner_ref=f"next{i}") for i in range(5)])
    refill = Refiller(limit=2)
    completer = Completer(store, refill=refill)
    assert await asyncio.gather(*(completer.submit(c) for c in completions)) == [True] * 3
    [(batch, jobs)] = refill.settled
    assert batch == [c.job_id for c in completions]
    assert jobs is not None
    assert len(jobs) == 2
    # One transaction wrote the completions and the claim.
    writers = await _writers(store, [*batch, *(job.id for job in jobs)])
    assert len(writers) == 1
    finished = {(await store.get_job(c.job_id)).finished_at for c in completions}
    assert finished == {job.started_at for job in jobs}  # one now()
    assert {(await store.get_job(job.id)).status for job in jobs} == {JobStatus.RUNNING}


async def test_a_refused_result_undoes_the_refill_and_the_others_still_complete(
    store: Store, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(TRIGGER)
    completions = await _claimed(store, 4)
    completions[1] = Completion(completions[1].job_id, completions[1].lease_token, {"poison": 1})
    [waiting] = await store.create_jobs([new_job(owner_ref="next")])
    refill = Refiller(limit=1)
    completer = Completer(store, refill=refill)
    outcomes = await asyncio.gather(*(completer.submit(c) for c in completions))
    assert isinstance(outcomes[1], Refused)
    assert [outcomes[i] for i in (0, 2, 3)] == [True] * 3
    # The batch's transaction failed as a whole, its claim with it: the refill is
    # told so, and the batch is then written without one.
    assert [jobs for _, jobs in refill.settled] == [None]
    assert (await store.get_job(waiting.job.id)).status is JobStatus.PENDING


async def test_a_statement_timeout_is_not_retried_as_an_outage(
    store: Store, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(TRIGGER)
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET statement_timeout = '300ms'").format(
                psycopg.sql.Identifier(conn.info.dbname)
            )
        )
    timed = await Store.open(database_url, min_size=1, max_size=4, wait=True)
    try:
        completions = await _claimed(timed, 4)
        slow = completions[2]
        completions[2] = Completion(slow.job_id, slow.lease_token, {"slow": True})
        with pytest.raises(errors.StatementTimeout):
            await timed.complete_many([completions[2]])
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(Completer(timed).submit(c) for c in completions)), 10
        )
    finally:
        await timed.close()
    assert isinstance(outcomes[2], Refused)
    assert [outcomes[i] for i in (0, 1, 3)] == [True, True, True]


async def test_an_outage_keeps_the_results_until_the_database_answers(store: Store) -> None:
    completions = await _claimed(store, 3)
    completer = Completer(store, retry_delay=0.05)
    real = store.complete_many
    calls = 0

    async def flaky(batch: list[Completion]) -> dict[UUID, dict[str, object]]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise errors.DatabaseUnavailable("database unavailable: OperationalError")
        return await real(batch)

    store.complete_many = flaky  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(completer.submit(c) for c in completions))
    assert outcomes == [True, True, True]
    assert calls == 4
    assert set(await _statuses(store, [c.job_id for c in completions])) == {JobStatus.COMPLETED}


@pytest.mark.parametrize(
    ("state", "outage"),
    [
        (None, True),  # connection gone, no answer at all
        ("08006", True),  # connection_failure
        ("57P01", True),  # admin_shutdown
        ("53300", True),  # too_many_connections
        ("25006", True),  # read_only_sql_transaction (a demoted primary)
        ("57014", False),  # query_canceled (statement timeout)
        ("54000", False),  # program_limit_exceeded
        ("P0001", False),  # raise_exception
    ],
)
def test_outage_classification_by_sqlstate(state: str | None, outage: bool) -> None:
    exc = psycopg.errors.lookup(state)("x") if state else psycopg.OperationalError("x")
    assert is_outage(exc) is outage
