"""Queue upkeep: rescuing expired leases, deleting finished jobs past retention,
folding counters and rollups, and the operators' `ai-service maintenance recount`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from ai_service.config import ENV_NAMES
from ai_service.jobs import Job, JobStatus
from ai_service.maintenance import WORKER_RETENTION, Maintenance
from ai_service.store import Store, WorkerEntry
from tests.helpers import free_port, make_settings, new_job

BACKOFF_BASE = 20.0
BACKOFF_MAX = 60.0


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store with a known retry backoff (overrides the shared fixture)."""
    s = await Store.open(
        database_url, min_size=1, max_size=5, wait=True,
        backoff_base=BACKOFF_BASE, backoff_max=BACKOFF_MAX,
    )  # fmt: skip
    yield s
    await s.close()


def maintenance(store: Store, database_url: str, **env: str) -> Maintenance:
    return Maintenance(store, make_settings(database_url, **env))


async def running_jobs(store: Store, count: int, **overrides: Any) -> list[Job]:
    """`count` running jobs claimed by worker "w1"."""
    await store.create_jobs([new_job(owner_ref=f"r/{i}", **overrides) for i in range(count)])
    claimed = await store.claim("w1", limit=count, lease_seconds=60)
    assert len(claimed) == count
    return claimed


async def expire(store: Store, ids: list[UUID]) -> None:
    await sql(
        store,
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = ANY(%s)",
        [ids],
    )


# -- rescuer ---------------------------------------------------------------------------


async def test_rescue_returns_expired_jobs_with_attempts_left_to_pending(
    store: Store, database_url: str
) -> None:
    [job] = await running_jobs(store, 1)
    await expire(store, [job.id])
    assert await maintenance(store, database_url).rescue() == 1
    rescued = await store.get_job(job.id)
    assert rescued.status is JobStatus.PENDING
    assert rescued.lease_token is None
    assert rescued.lease_expires_at is None
    assert rescued.finished_at is None
    assert rescued.attempt == 1
    assert rescued.error_category == "lease_expired"
    assert rescued.error_message == "lease expired on worker w1"
    # Backoff of a first attempt: between half and all of the base.
    delay = (rescued.run_after - rescued.updated_at).total_seconds()
    assert BACKOFF_BASE / 2 <= delay <= BACKOFF_BASE
    [entry] = rescued.errors
    assert entry["attempt"] == 1
    assert entry["category"] == "lease_expired"
    assert entry["worker"] == "w1"
    assert entry["message"] == "lease expired on worker w1"


async def test_rescue_fails_expired_jobs_whose_attempts_are_used(
    store: Store, database_url: str
) -> None:
    [job] = await running_jobs(store, 1, max_attempts=1)
    await expire(store, [job.id])
    assert await maintenance(store, database_url).rescue() == 1
    failed = await store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_category == "lease_expired"
    assert failed.finished_at == failed.updated_at
    assert failed.lease_token is None
    assert [e["category"] for e in failed.errors] == ["lease_expired"]


async def test_rescue_leaves_live_leases_and_other_statuses_alone(
    store: Store, database_url: str
) -> None:
    live, expired = await running_jobs(store, 2)
    await expire(store, [expired.id])
    pending = (await store.create_jobs([new_job(owner_ref="p")]))[0].job
    done = await store.complete((await store.create_jobs([new_job()]))[0].job.id, {"ok": 1})
    assert await maintenance(store, database_url).rescue() == 1
    assert await store.get_job(live.id) == live
    assert await store.get_job(pending.id) == pending
    assert await store.get_job(done.id) == done
    assert (await store.get_job(expired.id)).status is JobStatus.PENDING


async def test_rescued_job_keeps_earlier_history_and_its_old_lease_is_dead(
    store: Store, database_url: str
) -> None:
    [job] = await running_jobs(store, 1)
    assert job.lease_token is not None
    await store.fail(
        job.id, category="timeout", message="t", lease_token=job.lease_token, retryable=True
    )
    await sql(store, "UPDATE jobs SET run_after = now() WHERE id = %s", [job.id])
    [again] = await store.claim("w2", limit=1, lease_seconds=60)
    assert again.lease_token is not None
    await expire(store, [job.id])
    assert await maintenance(store, database_url).rescue() == 1
    rescued = await store.get_job(job.id)
    assert [(e["attempt"], e["category"], e["worker"]) for e in rescued.errors] == [
        (1, "timeout", "w1"),
        (2, "lease_expired", "w2"),
    ]
    delay = (rescued.run_after - rescued.updated_at).total_seconds()
    assert BACKOFF_BASE <= delay <= 2 * BACKOFF_BASE  # second attempt: window doubled


async def test_rescue_works_through_more_than_one_batch(store: Store, database_url: str) -> None:
    jobs = await running_jobs(store, 1100)
    await expire(store, [j.id for j in jobs])
    m = maintenance(store, database_url)
    assert await m.rescue() == 1100
    assert m.rescued == 1100
    rows = await sql(store, "SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert rows == [{"status": "pending", "n": 1100}]


async def test_two_rescuers_at_once_never_rescue_a_job_twice(database_url: str) -> None:
    first = await Store.open(database_url, min_size=1, max_size=1, wait=True)
    second = await Store.open(database_url, min_size=1, max_size=1, wait=True)
    try:
        for round_ in range(5):
            jobs = await running_jobs(first, 300, task_type=f"round-{round_}")
            await expire(first, [j.id for j in jobs])
            moved = await asyncio.gather(
                maintenance(first, database_url).rescue(),
                maintenance(second, database_url).rescue(),
            )
            assert sum(moved) == 300
            rows = await sql(
                first,
                "SELECT jsonb_array_length(errors) AS entries, status FROM jobs"
                " WHERE task_type = %s",
                [f"round-{round_}"],
            )
            assert len(rows) == 300
            assert all(r == {"entries": 1, "status": "pending"} for r in rows)
            # Rescued jobs wait out their backoff: not claimable in the next round.
    finally:
        await first.close()
        await second.close()


async def test_running_maintenance_loop_rescues_without_being_called(
    store: Store, database_url: str
) -> None:
    [job] = await running_jobs(store, 1)
    m = maintenance(store, database_url, RESCUE_INTERVAL="50ms")
    m.start()
    try:
        await expire(store, [job.id])
        for _ in range(1000):  # leadership first, then a round: slow on a loaded machine
            if (await store.get_job(job.id)).status is JobStatus.PENDING:
                break
            await asyncio.sleep(0.02)
        assert (await store.get_job(job.id)).status is JobStatus.PENDING
        assert m.rescued == 1
    finally:
        await m.stop()


# -- retention -------------------------------------------------------------------------


async def test_prune_deletes_only_finished_jobs_past_their_retention(
    store: Store, database_url: str
) -> None:
    async def finished(status: str, age: str) -> UUID:
        job = (await store.create_jobs([new_job(owner_ref=f"{status}/{age}")]))[0].job
        if status == "completed":
            await store.complete(job.id, {"ok": 1})
        elif status == "failed":
            await store.fail(job.id, category="internal", message="x")
        else:
            await store.cancel(job.id)
        await sql(
            store,
            "UPDATE jobs SET finished_at = now() - %s::interval,"
            " created_at = now() - %s::interval WHERE id = %s",
            [age, age, job.id],
        )
        return job.id

    gone = {
        await finished("completed", "2 hours"),
        await finished("cancelled", "2 hours"),
        await finished("failed", "3 days"),
    }
    kept = {
        await finished("completed", "30 minutes"),
        await finished("cancelled", "30 minutes"),
        await finished("failed", "2 hours"),  # failed jobs are kept longer
        await finished("failed", "47 hours"),
    }
    # Old unfinished jobs are never pruned, however old.
    pending = (await store.create_jobs([new_job(owner_ref="pending")]))[0].job
    [running] = await store.claim("w", limit=1, lease_seconds=60)
    await store.create_jobs([new_job(owner_ref="still-pending")])
    await sql(
        store, "UPDATE jobs SET created_at = now() - interval '1 year' WHERE finished_at IS NULL"
    )
    kept |= {pending.id, running.id}

    m = maintenance(store, database_url, RETENTION_COMPLETED="1h", RETENTION_FAILED="48h")
    assert await m.prune() == 3
    assert m.pruned == 3
    remaining = {r["id"] for r in await sql(store, "SELECT id FROM jobs")}
    assert remaining & gone == set()
    assert kept <= remaining
    assert await m.prune() == 0  # nothing left to do


async def test_prune_works_through_many_batches(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(25)])
    for o in outcomes:
        await store.cancel(o.job.id)
    await sql(store, "UPDATE jobs SET finished_at = now() - interval '1 day'")
    deleted = await store.prune_finished(completed_seconds=3600, failed_seconds=3600, batch=4)
    assert deleted == 25
    assert await sql(store, "SELECT id FROM jobs") == []


# -- leadership ------------------------------------------------------------------------


async def _until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_each_service_has_one_leader_and_a_new_one_when_it_stops(
    store: Store, database_url: str
) -> None:
    env = {"RESCUE_INTERVAL": "50ms", "RETENTION_INTERVAL": "50ms"}
    first, second = maintenance(store, database_url, **env), maintenance(store, database_url, **env)
    first.start()
    await _until(lambda: first.leading == {"rescuer", "compaction", "retention"})
    second.start()
    try:
        await asyncio.sleep(0.3)  # several rounds of the second: it never leads
        assert second.leading == set()
        samples = first.metrics.registry.get_sample_value(
            "ai_maintenance_seconds_count", {"service": "rescuer"}
        )
        assert samples is not None
        assert samples >= 2
        assert (
            first.metrics.registry.get_sample_value(
                "ai_maintenance_leader", {"service": "retention"}
            )
            == 1
        )
        await first.stop()  # a leader leaving (or dying: its session ends either way)
        await _until(lambda: second.leading == {"rescuer", "compaction", "retention"}, timeout=5)
        [job] = await running_jobs(store, 1)
        await expire(store, [job.id])
        await _until(lambda: second.rescued == 1)
    finally:
        await first.stop()
        await second.stop()


async def test_a_long_retention_round_does_not_delay_the_rescuer(
    store: Store, database_url: str
) -> None:
    m = maintenance(store, database_url, RESCUE_INTERVAL="50ms", RETENTION_INTERVAL="50ms")
    slow_started = asyncio.Event()

    async def slow_prune() -> int:
        slow_started.set()
        await asyncio.sleep(30)
        return 0

    m.services = [s if s.name != "retention" else replace(s, step=slow_prune) for s in m.services]
    m.start()
    try:
        await asyncio.wait_for(slow_started.wait(), 5)
        [job] = await running_jobs(store, 1)
        await expire(store, [job.id])
        await _until(lambda: m.rescued == 1, timeout=5)
    finally:
        await m.stop()


async def test_an_attempt_past_its_deadline_is_rescued_as_a_timeout(
    store: Store, database_url: str
) -> None:
    """An external worker that keeps heartbeating cannot hold a job past its deadline."""
    await store.create_jobs([new_job(timeout_seconds=1)])
    [job] = await store.claim("w1", limit=1, lease_seconds=600)
    assert job.timeout_seconds == 1
    assert job.lease_token is not None
    beat = await store.heartbeat(job.id, job.lease_token, 600)
    assert beat.started_at is not None
    assert beat.lease_expires_at is not None
    assert beat.lease_expires_at <= beat.started_at + timedelta(seconds=1)
    await asyncio.sleep(1.2)
    assert await maintenance(store, database_url).rescue() == 1
    rescued = await store.get_job(job.id)
    assert rescued.status is JobStatus.PENDING
    assert rescued.error_category == "timeout"
    assert rescued.error_message == "attempt ran past its deadline of 1s on worker w1"
    assert rescued.errors[-1]["category"] == "timeout"


# -- compaction and rollups ------------------------------------------------------------


async def test_compaction_service_folds_rollups_and_retention_drops_old_ones(
    store: Store, database_url: str
) -> None:
    [job] = await running_jobs(store, 1)
    assert job.lease_token is not None
    await store.complete(job.id, {"ok": 1}, job.lease_token)
    await sql(
        store,
        "INSERT INTO job_rollups VALUES (now() - interval '9 days', 'llm_chat', 'p', 'failed',"
        " 1, 0, array_fill(0::bigint, ARRAY[16]))",
    )
    m = maintenance(store, database_url, RETENTION_INTERVAL="50ms")
    m.start()
    try:
        for _ in range(250):
            folded = await sql(store, "SELECT n FROM job_rollups WHERE outcome = 'completed'")
            old = await sql(store, "SELECT 1 FROM job_rollups WHERE outcome = 'failed'")
            if folded and not old:
                break
            await asyncio.sleep(0.02)
        assert folded == [{"n": 1}]
        assert old == []
        assert await sql(store, "SELECT * FROM job_rollup_deltas") == []
        assert await sql(store, "SELECT n FROM job_rollups_hourly") == [{"n": 1}]
    finally:
        await m.stop()


async def test_retention_deletes_the_rows_of_workers_not_seen_for_an_hour(
    store: Store, database_url: str
) -> None:
    for worker_id in ("gone", "here"):
        await store.upsert_worker(
            WorkerEntry(worker_id, "host", 1, "0.1.0", datetime.now(UTC), {}), fresh=15
        )
    await sql(
        store,
        "UPDATE workers SET last_seen = now() - make_interval(secs => %s) WHERE worker_id = 'gone'",
        [WORKER_RETENTION + 5],
    )
    m = maintenance(store, database_url)
    await m.prune()
    assert await sql(store, "SELECT worker_id FROM workers") == [{"worker_id": "here"}]


# -- ai-service maintenance recount ----------------------------------------------------


def _cli_env(database_url: str) -> dict[str, str]:
    """The calling shell's environment without AI Service settings, plus the database."""
    known = set(ENV_NAMES.values())
    env = {k: v for k, v in os.environ.items() if k not in known}
    return env | {"DATABASE_URL": database_url}


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ai_service", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_recount_command_repairs_the_counters_of_a_live_database(
    store: Store, database_url: str
) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(5)])
    await store.compact_counts()
    await sql(store, "UPDATE job_counts SET n = 9")  # drifted
    code, out, err = await _cli(_cli_env(database_url), "maintenance", "recount")
    assert code == 0, err
    assert out.splitlines()[0].startswith(
        "recount: 1 counters rebuilt from the jobs table (5 jobs)"
    )
    assert "1 changed" in out.splitlines()[0]
    assert out.splitlines()[1:] == ["  pending llm_chat qwen2.5-14b: 9 -> 5 (-4)"]
    assert await sql(store, "SELECT n FROM job_counts") == [{"n": 5}]

    code, out, _ = await _cli(_cli_env(database_url), "maintenance", "recount")
    assert code == 0
    assert out.splitlines() == [out.splitlines()[0]]
    assert "; 0 changed" in out


async def test_recount_command_names_the_owners_when_only_their_split_was_wrong(
    store: Store, database_url: str
) -> None:
    await store.create_jobs(
        [new_job(owner_service=o, owner_ref=f"{o}/{i}") for o in ("crm", "telephony")
         for i in range(2)]
    )  # fmt: skip
    await store.compact_counts()
    # The totals stay right: crm's jobs are counted as telephony's.
    await sql(store, "DELETE FROM job_counts WHERE owner_service = 'crm'")
    await sql(store, "UPDATE job_counts SET n = 4 WHERE owner_service = 'telephony'")
    code, out, err = await _cli(_cli_env(database_url), "maintenance", "recount")
    assert code == 0, err
    assert out.splitlines()[0].startswith(
        "recount: 1 counters rebuilt from the jobs table (4 jobs)"
    )
    assert out.splitlines()[0].endswith("; 2 changed")
    assert out.splitlines()[1:] == [
        "  owner_service crm pending: 0 -> 2 (+2)",
        "  owner_service telephony pending: 4 -> 2 (-2)",
    ]
    rows = await sql(store, "SELECT owner_service, n FROM job_counts ORDER BY 1")
    assert rows == [{"owner_service": "crm", "n": 2}, {"owner_service": "telephony", "n": 2}]


async def test_recount_command_without_a_database_fails_cleanly() -> None:
    nowhere = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/nothing"
    code, out, err = await _cli(_cli_env(nowhere), "maintenance", "recount")
    assert code == 1
    assert (
        err.splitlines()[-1] == "ai-service maintenance recount: database unavailable (PoolTimeout)"
    )
    assert "s3cret" not in out + err
    code, _, err = await _cli(_cli_env(nowhere), "maintenance")
    assert code == 2  # argparse: the action is required
    assert "recount" in err
