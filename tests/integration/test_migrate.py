"""The packaged Alembic migrations, revision by revision, on a real PostgreSQL."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ai_service import migrate
from ai_service.worker.registry import TRANSCRIPTION_TASK_TYPES
from tests.helpers import url_for_database


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[str]:
    """A database with no schema at all."""
    name = f"migrate_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url_for_database(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def rows(url: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def test_0002_counts_old_histories_and_keeps_their_newest_20_entries(empty_database: str) -> None:
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0001")
    history = [{"attempt": n, "category": "timeout", "message": f"m{n}"} for n in range(1, 36)]
    short = history[:3]
    insert = (
        "INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input, errors)"
        " VALUES ('s', %s, 't', 'p', '{}', %s) RETURNING id"
    )
    [long_job] = rows(empty_database, insert, ["long", Jsonb(history)])
    [short_job] = rows(empty_database, insert, ["short", Jsonb(short)])
    [clean_job] = rows(empty_database, insert, ["clean", Jsonb([])])

    migrate.upgrade(empty_database)
    by_id = {r["id"]: r for r in rows(empty_database, "SELECT * FROM jobs")}
    long_row = by_id[long_job["id"]]
    assert long_row["error_count"] == 35
    assert long_row["errors"] == history[-20:]
    assert (by_id[short_job["id"]]["error_count"], by_id[short_job["id"]]["errors"]) == (3, short)
    assert (by_id[clean_job["id"]]["error_count"], by_id[clean_job["id"]]["errors"]) == (0, [])
    assert {r["request_hash"] for r in by_id.values()} == {None}

    # And back: the columns go, the rows stay.
    command.downgrade(config, "0001")
    columns = rows(
        empty_database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'",
    )
    assert not {"error_count", "request_hash"} & {c["column_name"] for c in columns}
    assert len(rows(empty_database, "SELECT id FROM jobs")) == 3


def test_downgrading_0003_gives_the_wake_ups_back_to_the_triggers(empty_database: str) -> None:
    """Code before 0003 relies on the triggers' NOTIFY; the downgrade restores it."""
    migrate.upgrade(empty_database)
    command.downgrade(migrate.alembic_config(empty_database), "0002")
    with psycopg.connect(empty_database, autocommit=True) as listener:
        listener.execute("LISTEN ai_service_jobs")
        with psycopg.connect(empty_database, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, input)"
                " VALUES (gen_random_uuid(), 's', 'r', 't', 'p', '{}')"
            )
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [
            "ai_service_jobs"
        ]
    migrate.upgrade(empty_database)  # and back up again


def run(url: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


OWNER_COUNTERS = """
SELECT owner_service, status, task_type, error_category, sum(n)::bigint AS n
  FROM (SELECT owner_service, status, task_type, error_category, n FROM job_counts
        UNION ALL
        SELECT owner_service, status, task_type, error_category, n FROM job_count_deltas) AS c
 GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0
"""


def test_0006_counts_existing_jobs_per_owner_exactly_and_downgrades_back(
    empty_database: str,
) -> None:
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0005")
    insert = (
        "INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input, status,"
        " error_category, result, finished_at)"
        " VALUES (%s, %s, 't', 'p', '{}', %s, %s, %s, %s)"
    )
    jobs = [("crm", "pending", None)] * 3 + [("crm", "failed", "timeout")] * 2
    jobs += [("telephony", "pending", None)] * 2 + [("telephony", "completed", None)]
    for i, (owner, status, category) in enumerate(jobs):
        finished = status != "pending"
        result = Jsonb({}) if status == "completed" else None
        run(
            empty_database,
            insert,
            [owner, str(i), status, category, result, datetime.now(UTC) if finished else None],
        )
    # Counters of 0005, drifted and with deltas not folded: the migration recounts.
    run(empty_database, "UPDATE job_counts SET n = n + 7 WHERE status = 'pending'")

    command.upgrade(config, "0006")
    counters = rows(
        empty_database,
        "SELECT owner_service, status, task_type, error_category, n FROM job_counts ORDER BY 1, 2",
    )
    assert [tuple(r.values()) for r in counters] == [
        ("crm", "failed", "t", "timeout", 2),
        ("crm", "pending", "t", "", 3),
        ("telephony", "completed", "t", "", 1),
        ("telephony", "pending", "t", "", 2),
    ]
    assert rows(empty_database, "SELECT 1 FROM job_count_deltas") == []
    # The triggers of 0006 carry the owner.
    run(empty_database, insert, ["ops", "new", "pending", None, None, None])
    assert {
        (r["owner_service"], r["status"]): r["n"] for r in rows(empty_database, OWNER_COUNTERS)
    }[("ops", "pending")] == 1

    # And back: the owner column goes, the counters stay exact.
    command.downgrade(config, "0005")
    columns = rows(
        empty_database,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name IN ('job_counts', 'job_count_deltas')",
    )
    assert "owner_service" not in {c["column_name"] for c in columns}
    run(empty_database, insert, ["ops", "again", "pending", None, None, None])
    totals = rows(
        empty_database,
        "SELECT status, sum(n)::bigint AS n FROM (SELECT status, n FROM job_counts"
        " UNION ALL SELECT status, n FROM job_count_deltas) AS c GROUP BY 1 ORDER BY 1",
    )
    assert [(r["status"], r["n"]) for r in totals] == [
        ("completed", 1),
        ("failed", 2),
        ("pending", 7),
    ]
    migrate.upgrade(empty_database)  # and up again
    assert {
        (r["owner_service"], r["status"]): r["n"] for r in rows(empty_database, OWNER_COUNTERS)
    }[("ops", "pending")] == 2


def test_0011_creates_the_worker_registry_and_downgrades_back(empty_database: str) -> None:
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0011")
    run(
        empty_database,
        "INSERT INTO workers (worker_id, hostname, pid, version, started_at)"
        " VALUES ('w-1', 'node-a', 12, '0.1.0', now())",
    )
    [row] = rows(empty_database, "SELECT status, stopped_at, last_seen FROM workers")
    assert row["status"] == {}
    assert row["stopped_at"] is None
    assert row["last_seen"] is not None
    with pytest.raises(psycopg.errors.CheckViolation):
        run(
            empty_database,
            "INSERT INTO workers (worker_id, hostname, pid, version, started_at)"
            " VALUES ('', 'h', 1, 'v', now())",
        )

    command.downgrade(config, "-1")
    assert rows(empty_database, "SELECT to_regclass('workers') AS t") == [{"t": None}]
    migrate.upgrade(empty_database)  # and up again
    assert rows(empty_database, "SELECT count(*) AS n FROM workers") == [{"n": 0}]


def test_0009_adds_the_webhook_columns_to_existing_jobs_and_downgrades_back(
    empty_database: str,
) -> None:
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0008")
    insert = (
        "INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input)"
        " VALUES ('telephony', %s, 't', 'p', '{}') RETURNING id"
    )
    [old] = rows(empty_database, insert, ["before"])
    command.upgrade(config, "0009")
    [row] = rows(
        empty_database, "SELECT callback_url, traceparent FROM jobs WHERE id = %s", [old["id"]]
    )
    assert row == {"callback_url": None, "traceparent": None}
    # A job given a callback (as the API stores it) gets its event when it finishes.
    run(
        empty_database,
        "UPDATE jobs SET callback_url = 'https://hooks.example.com/x', status = 'cancelled',"
        " finished_at = now() WHERE id = %s",
        [old["id"]],
    )
    [event] = rows(empty_database, "SELECT event_type, payload FROM webhook_deliveries")
    assert event["event_type"] == "job.cancelled"
    assert event["payload"]["job_id"] == str(old["id"])
    # The new CHECKs hold for rows written from now on.
    with pytest.raises(psycopg.errors.CheckViolation):
        run(
            empty_database, "UPDATE jobs SET traceparent = 'not-a-trace' WHERE id = %s", [old["id"]]
        )

    command.downgrade(config, "0008")
    columns = {
        c["column_name"]
        for c in rows(
            empty_database,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'",
        )
    }
    assert not columns & {"callback_url", "traceparent"}
    assert rows(empty_database, "SELECT to_regclass('webhook_deliveries') AS t") == [{"t": None}]
    migrate.upgrade(empty_database)  # and up again


def test_0010_reports_transcriptions_completed_from_then_on_and_downgrades_back(
    empty_database: str,
) -> None:
    migration = importlib.import_module("ai_service.migrations.versions.0010_transcription_report")
    # The task types frozen in the migration are the handler's.
    assert set(migration.TASK_TYPES) == TRANSCRIPTION_TASK_TYPES
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0009")
    insert = (
        "INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input, status)"
        " VALUES ('telephony', 'r', 'transcription', 'p', '{}', 'pending') RETURNING id"
    )
    [old] = rows(empty_database, insert)
    command.upgrade(config, "0010")
    result = {
        "audio_duration": 4.0,
        "attempts": [
            {"provider": "whisperx", "model": "m", "status": "ok", "selected": True},
            {"provider": "voxtral-small", "model": "v", "status": "ok", "wer": 0.25},
        ],
    }
    # A job queued before the upgrade is reported when it completes.
    run(
        empty_database,
        "UPDATE jobs SET status = 'completed', result = %s, finished_at = now() WHERE id = %s",
        [Jsonb(result), old["id"]],
    )
    reported = rows(
        empty_database,
        "SELECT provider, wer, disagreement FROM transcription_attempts ORDER BY position",
    )
    assert reported == [
        {"provider": "whisperx", "wer": None, "disagreement": 0.25},
        {"provider": "voxtral-small", "wer": 0.25, "disagreement": None},
    ]

    command.downgrade(config, "0009")
    for table in ("transcription_attempts", "transcription_rollups", "transcription_rollup_deltas"):
        assert rows(empty_database, f"SELECT to_regclass('{table}') AS t") == [{"t": None}]
    # Completions and TRUNCATE still work without the report's triggers.
    [again] = rows(empty_database, insert)
    run(
        empty_database,
        "UPDATE jobs SET status = 'completed', result = %s, finished_at = now() WHERE id = %s",
        [Jsonb(result), again["id"]],
    )
    run(empty_database, "TRUNCATE jobs")
    migrate.upgrade(empty_database)  # and up again
