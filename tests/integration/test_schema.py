"""The jobs schema on its own (plain psycopg, no Store): CHECK constraints, the
idempotency index, counter triggers and NOTIFY."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ai_service import metrics
from ai_service.sql import queries

Conn = psycopg.AsyncConnection[dict[str, Any]]
NOW = datetime.now(UTC)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as c:
        yield c


BASE: dict[str, Any] = {
    "owner_service": "telephony",
    "owner_ref": "beeline/1",
    "task_type": "llm_chat",
    "model_profile": "qwen2.5-14b",
    "input": Jsonb({"user": "hi"}),
}

RUNNING: dict[str, Any] = {
    "status": "running",
    "attempt": 1,
    "worker_id": "w1",
    "lease_token": uuid.uuid4(),
    "lease_expires_at": NOW + timedelta(minutes=15),
    "started_at": NOW,
}

# A valid row for every status: the constraints must accept these.
VALID: dict[str, dict[str, Any]] = {
    "pending": {},
    "pending_after_a_failure": {"attempt": 1, "error_category": "timeout", "errors": Jsonb([{}])},
    "running": RUNNING,
    "completed": {"status": "completed", "result": Jsonb({"ok": 1}), "finished_at": NOW},
    "failed": {"status": "failed", "error_category": "internal", "finished_at": NOW},
    "cancelled": {"status": "cancelled", "finished_at": NOW},
}


async def insert(conn: Conn, **columns: Any) -> dict[str, Any]:
    row = BASE | columns
    names = ", ".join(row)
    placeholders = ", ".join(f"%({name})s" for name in row)
    cur = await conn.execute(
        f"INSERT INTO jobs ({names}) VALUES ({placeholders}) RETURNING *",
        row,
    )
    result = await cur.fetchone()
    assert result is not None
    return result


@pytest.mark.parametrize("kind", list(VALID))
async def test_valid_rows_of_every_status_are_accepted(conn: Conn, kind: str) -> None:
    row = await insert(conn, **VALID[kind])
    assert row["status"] == VALID[kind].get("status", "pending")


@pytest.mark.parametrize(
    ("columns", "constraint"),
    [
        # lifecycle invariants
        ({**RUNNING, "lease_token": None}, "jobs_lease_iff_running"),
        ({**RUNNING, "lease_expires_at": None}, "jobs_lease_iff_running"),
        ({"lease_expires_at": NOW}, "jobs_lease_iff_running"),
        ({**RUNNING, "worker_id": None}, "jobs_running_has_worker"),
        ({**RUNNING, "started_at": None}, "jobs_running_has_worker"),
        ({"status": "completed", "finished_at": NOW}, "jobs_completed_has_result"),
        ({"status": "completed", "result": Jsonb({"ok": 1})}, "jobs_finished_iff_terminal"),
        ({"status": "cancelled"}, "jobs_finished_iff_terminal"),
        ({"finished_at": NOW}, "jobs_finished_iff_terminal"),
        ({"status": "failed", "finished_at": NOW}, "jobs_failed_has_category"),
        ({"attempt": 3, "max_attempts": 3}, "jobs_pending_has_attempt_left"),
        (
            {"status": "failed", "error_category": "x", "finished_at": NOW, "attempt": 4},
            "jobs_attempts_within_max",
        ),
        # column values
        ({"status": "paused"}, "jobs_status_check"),
        ({"input": Jsonb(["not", "an", "object"])}, "jobs_input_check"),
        ({"input": Jsonb("text")}, "jobs_input_check"),
        ({"result": Jsonb([1])}, "jobs_result_check"),
        ({"error_details": Jsonb("x")}, "jobs_error_details_check"),
        ({"errors": Jsonb({})}, "jobs_errors_check"),
        ({"attempt": -1}, "jobs_attempt_check"),
        ({"max_attempts": 0}, "jobs_max_attempts_check"),
        ({"max_attempts": 1001}, "jobs_max_attempts_check"),
        ({"priority": 1001}, "jobs_priority_check"),
        ({"priority": -1001}, "jobs_priority_check"),
        ({"owner_service": ""}, "jobs_owner_service_check"),
        ({"owner_ref": "r" * 501}, "jobs_owner_ref_check"),
        ({"task_type": "t" * 101}, "jobs_task_type_check"),
        ({"model_profile": ""}, "jobs_model_profile_check"),
        ({"worker_id": ""}, "jobs_worker_id_check"),
        ({"idempotency_key": "k" * 256}, "jobs_idempotency_key_check"),
        ({"error_category": ""}, "jobs_error_category_check"),
        ({"error_count": -1}, "jobs_error_count_not_negative"),
        ({"request_hash": "not-a-hash"}, "jobs_request_hash_is_sha256"),
        ({"request_hash": "A" * 64}, "jobs_request_hash_is_sha256"),
    ],
)
async def test_check_constraints_reject_invalid_rows(
    conn: Conn, columns: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        await insert(conn, **columns)
    assert info.value.diag.constraint_name == constraint


async def test_constraints_also_guard_updates(conn: Conn) -> None:
    row = await insert(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        await conn.execute("UPDATE jobs SET status = 'running' WHERE id = %s", [row["id"]])
    assert info.value.diag.constraint_name == "jobs_lease_iff_running"


@pytest.mark.parametrize(
    "column", ["owner_service", "owner_ref", "task_type", "model_profile", "input"]
)
async def test_required_columns_are_not_null(conn: Conn, column: str) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation):
        await insert(conn, **{column: None})


async def test_defaults_describe_a_fresh_pending_job(conn: Conn) -> None:
    row = await insert(conn)
    assert row["status"] == "pending"
    assert (row["attempt"], row["max_attempts"], row["priority"]) == (0, 3, 0)
    assert row["errors"] == []
    assert (row["error_count"], row["request_hash"]) == (0, None)
    assert row["id"] is not None
    assert row["run_after"] == row["created_at"] == row["updated_at"]


async def test_idempotency_key_is_unique_per_owner_service(conn: Conn) -> None:
    await insert(conn, idempotency_key="k")
    await insert(conn, idempotency_key="k", owner_service="monitoring-tg")
    await insert(conn)  # no key: never a conflict
    await insert(conn)
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await insert(conn, idempotency_key="k")
    assert info.value.diag.constraint_name == "jobs_idempotency_idx"


# -- counter triggers ------------------------------------------------------------------

DELTAS = """
SELECT status, task_type, model_profile, error_category, sum(n)::bigint AS n
  FROM job_count_deltas GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0
"""

DIRECT = """
SELECT status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
       count(*)::bigint AS n
  FROM jobs GROUP BY 1, 2, 3, 4
"""


async def _counts(conn: Conn, query: str) -> dict[tuple[str, str, str, str], int]:
    cur = await conn.execute(query)
    return {
        (r["status"], r["task_type"], r["model_profile"], r["error_category"]): r["n"]
        for r in await cur.fetchall()
    }


async def test_triggers_count_inserts_updates_and_deletes(conn: Conn) -> None:
    for kind in VALID.values():
        await insert(conn, **kind)
        await insert(conn, **kind, task_type="transcription")
    assert await _counts(conn, DELTAS) == await _counts(conn, DIRECT)
    # Pending rows count without their (old) error category; failed rows with it.
    assert (await _counts(conn, DELTAS))[("pending", "llm_chat", "qwen2.5-14b", "")] == 2

    await conn.execute(
        "UPDATE jobs SET status = 'failed', error_category = 'timeout', finished_at = now()"
        " WHERE status = 'pending' AND task_type = 'llm_chat'"
    )
    await conn.execute("UPDATE jobs SET error_category = 'provider_error' WHERE status = 'failed'")
    await conn.execute("UPDATE jobs SET priority = 5")  # no status change: no net delta
    await conn.execute("DELETE FROM jobs WHERE status = 'cancelled'")
    assert await _counts(conn, DELTAS) == await _counts(conn, DIRECT)

    await conn.execute("DELETE FROM jobs")
    assert await _counts(conn, DELTAS) == {}


OWNER_DELTAS = """
SELECT owner_service, status, task_type, model_profile, error_category, sum(n)::bigint AS n
  FROM job_count_deltas GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) <> 0
"""

OWNER_DIRECT = """
SELECT owner_service, status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
       count(*)::bigint AS n
  FROM jobs GROUP BY 1, 2, 3, 4, 5
"""


async def _owner_counts(conn: Conn, query: str) -> dict[tuple[str, ...], int]:
    cur = await conn.execute(query)
    return {
        (
            r["owner_service"],
            r["status"],
            r["task_type"],
            r["model_profile"],
            r["error_category"],
        ): (r["n"])
        for r in await cur.fetchall()
    }


async def test_triggers_count_each_owner_service_apart(conn: Conn) -> None:
    for owner in ("telephony", "monitoring-pf"):
        for kind in VALID.values():
            await insert(conn, **kind, owner_service=owner)
    await insert(conn, owner_service="crm")
    deltas = await _owner_counts(conn, OWNER_DELTAS)
    assert deltas == await _owner_counts(conn, OWNER_DIRECT)
    assert deltas[("crm", "pending", "llm_chat", "qwen2.5-14b", "")] == 1
    assert deltas[("monitoring-pf", "pending", "llm_chat", "qwen2.5-14b", "")] == 2

    # One statement over several owners; a job moved to another owner; deletes.
    await conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'pending'"
    )
    await conn.execute("UPDATE jobs SET owner_service = 'crm' WHERE status = 'running'")
    await conn.execute("DELETE FROM jobs WHERE owner_service = 'telephony' AND status = 'failed'")
    deltas = await _owner_counts(conn, OWNER_DELTAS)
    assert deltas == await _owner_counts(conn, OWNER_DIRECT)
    assert deltas[("crm", "running", "llm_chat", "qwen2.5-14b", "")] == 2
    assert ("telephony", "running", "llm_chat", "qwen2.5-14b", "") not in deltas

    await conn.execute(queries()["job_counts_compact"])
    cur = await conn.execute(
        "SELECT owner_service, status, task_type, model_profile, error_category, n"
        " FROM job_counts WHERE n <> 0"
    )
    folded = {
        (
            r["owner_service"],
            r["status"],
            r["task_type"],
            r["model_profile"],
            r["error_category"],
        ): (r["n"])
        for r in await cur.fetchall()
    }
    assert folded == await _owner_counts(conn, OWNER_DIRECT)


async def test_updates_without_status_change_write_no_deltas(conn: Conn) -> None:
    await insert(conn, **RUNNING)
    cur = await conn.execute("SELECT count(*) AS n FROM job_count_deltas")
    before = await cur.fetchone()
    await conn.execute("UPDATE jobs SET lease_expires_at = now() + interval '1 hour'")
    cur = await conn.execute("SELECT count(*) AS n FROM job_count_deltas")
    assert await cur.fetchone() == before


async def test_truncate_clears_the_counters_and_they_stay_exact_afterwards(conn: Conn) -> None:
    for kind in VALID.values():
        await insert(conn, **kind)
    await conn.execute(queries()["job_counts_compact"])  # folded counters...
    await insert(conn, **VALID["failed"])  # ... and deltas not folded yet
    await conn.execute(queries()["job_rollups_compact"])
    await conn.execute("TRUNCATE jobs")
    for table in (
        "job_counts",
        "job_count_deltas",
        "job_rollups",
        "job_rollups_hourly",
        "job_rollup_deltas",
    ):
        cur = await conn.execute(f"SELECT count(*) AS n FROM {table}")
        assert await cur.fetchone() == {"n": 0}, table

    await insert(conn)
    await insert(conn, **VALID["completed"])
    assert await _counts(conn, DELTAS) == await _counts(conn, DIRECT)


# -- rollup triggers -------------------------------------------------------------------

ROLLUP_DELTAS = """
SELECT minute, task_type, model_profile, outcome, sum(n)::bigint AS n,
       sum(duration_sum) AS duration_sum, job_buckets_sum(buckets) AS buckets
  FROM job_rollup_deltas GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


async def _rollup_deltas(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(ROLLUP_DELTAS)
    return await cur.fetchall()


def _buckets(**counts: int) -> list[int]:
    """16 bucket counts; keyword `b<i>` sets bucket i."""
    out = [0] * 16
    for name, n in counts.items():
        out[int(name[1:])] = n
    return out


async def test_a_finish_is_rolled_up_once_by_minute_with_its_duration_bucket(
    conn: Conn,
) -> None:
    ids = [(await insert(conn, **RUNNING, owner_ref=f"r/{i}"))["id"] for i in range(3)]
    assert await _rollup_deltas(conn) == []  # pending and running rows are no finish
    # Two completions of 12 s and 40 s an hour ago, one failure that never started.
    done = (datetime.now(UTC) - timedelta(hours=1)).replace(second=42, microsecond=0)
    failed = done - timedelta(hours=2)
    for job_id, took in ((ids[0], 12), (ids[1], 40)):
        await conn.execute(
            "UPDATE jobs SET status = 'completed', result = '{}', lease_expires_at = NULL,"
            " finished_at = %s, started_at = %s WHERE id = %s",
            [done, done - timedelta(seconds=took), job_id],
        )
    await conn.execute(
        "UPDATE jobs SET status = 'failed', error_category = 'internal',"
        " lease_expires_at = NULL, started_at = NULL, finished_at = %s WHERE id = %s",
        [failed, ids[2]],
    )
    rows = await _rollup_deltas(conn)
    assert [(r["minute"], r["outcome"], r["n"], r["buckets"]) for r in rows] == [
        (failed.replace(second=0), "failed", 1, _buckets()),
        (done.replace(second=0), "completed", 2, _buckets(b8=1, b9=1)),  # [10, 30), [30, 60)
    ]
    assert rows[1]["duration_sum"] == pytest.approx(52.0)

    # Changing a finished row again, or a row that stays running, is no new finish.
    await conn.execute("UPDATE jobs SET priority = 7, finished_at = now()")
    await conn.execute("DELETE FROM jobs WHERE id = %s", [ids[0]])
    assert await _rollup_deltas(conn) == rows

    # One statement that fails a running job and rewrites failed ones: one new failure.
    late = await insert(conn, **RUNNING, owner_ref="late")
    await conn.execute(
        "UPDATE jobs SET status = 'failed', error_category = 'internal', lease_expires_at = NULL,"
        " started_at = NULL, finished_at = %s WHERE id = %s OR status = 'failed'",
        [failed, late["id"]],
    )
    again = await _rollup_deltas(conn)
    assert [(r["minute"], r["outcome"], r["n"]) for r in again] == [
        (failed.replace(second=0), "failed", 2),
        (done.replace(second=0), "completed", 2),
    ]


async def test_rows_inserted_finished_are_rolled_up_unless_past_retention(conn: Conn) -> None:
    await insert(conn, **VALID["completed"])
    await insert(conn, **VALID["cancelled"])  # not a completion nor a failure
    await insert(conn, **(VALID["failed"] | {"finished_at": NOW - timedelta(days=9)}))
    rows = await _rollup_deltas(conn)
    assert [(r["outcome"], r["n"]) for r in rows] == [("completed", 1)]
    assert rows[0]["buckets"] == _buckets()  # no started_at: no duration


async def test_bucket_bounds_match_the_process_histograms(conn: Conn) -> None:
    cur = await conn.execute("SELECT job_rollup_bounds() AS bounds")
    row = await cur.fetchone()
    assert row is not None
    assert tuple(row["bounds"]) == metrics._DURATION_BUCKETS


# -- NOTIFY ----------------------------------------------------------------------------


async def _notified(listener: Conn, timeout: float) -> list[str]:
    return [n.channel async for n in listener.notifies(timeout=timeout, stop_after=1)]


async def test_the_table_sends_no_notification_the_application_does(
    conn: Conn, database_url: str
) -> None:
    """Wake-ups are sent by the store after commit, per task type (see test_notifier)."""
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as listener:
        await listener.execute("LISTEN ai_service_jobs")
        row = await insert(conn)
        await conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = %s", [row["id"]]
        )
        await conn.execute(
            "UPDATE jobs SET status = 'pending', finished_at = NULL WHERE id = %s", [row["id"]]
        )
        assert await _notified(listener, 0.3) == []


async def test_a_pending_or_finished_row_may_keep_its_last_lease_token(conn: Conn) -> None:
    row = await insert(conn, lease_token=RUNNING["lease_token"])
    assert row["lease_token"] == RUNNING["lease_token"]


async def test_payload_shapes_are_checked_when_a_payload_is_written(conn: Conn) -> None:
    row = await insert(conn, **RUNNING)
    for column, value, constraint in (
        ("result", Jsonb([1]), "jobs_result_check"),
        ("error_details", Jsonb("x"), "jobs_error_details_check"),
        ("errors", Jsonb({}), "jobs_errors_check"),
    ):
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            await conn.execute(f"UPDATE jobs SET {column} = %s WHERE id = %s", [value, row["id"]])
        assert info.value.diag.constraint_name == constraint
