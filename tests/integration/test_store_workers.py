"""The worker registry's statements on a real PostgreSQL: upsert, list, prune."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ai_service import errors
from ai_service.store import Store, WorkerEntry

FRESH = 15.0


def entry(worker_id: str = "w-1", **overrides: Any) -> WorkerEntry:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "hostname": "node-a",
        "pid": 100,
        "version": "0.1.0",
        "started_at": datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        "status": {"v": 1, "in_flight": 0, "handlers": [], "breakers": []},
    }
    values.update(overrides)
    return WorkerEntry(**values)


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def seen_ago(store: Store, worker_id: str, seconds: float) -> None:
    await sql(
        store,
        "UPDATE workers SET last_seen = now() - make_interval(secs => %s) WHERE worker_id = %s",
        [seconds, worker_id],
    )


async def test_upsert_inserts_then_replaces_the_row_and_moves_last_seen(store: Store) -> None:
    assert await store.upsert_worker(entry(), fresh=FRESH) is False
    [first] = await sql(store, "SELECT * FROM workers")
    assert (first["worker_id"], first["hostname"], first["pid"]) == ("w-1", "node-a", 100)
    assert first["stopped_at"] is None
    await seen_ago(store, "w-1", 30)

    busy = {"v": 1, "in_flight": 3, "handlers": [{"name": "llm"}], "breakers": []}
    assert await store.upsert_worker(entry(status=busy), fresh=FRESH) is False
    rows = await sql(store, "SELECT *, now() - last_seen < interval '5 s' AS fresh FROM workers")
    assert len(rows) == 1  # one row per worker: no history
    assert rows[0]["status"] == busy
    assert rows[0]["fresh"] is True


async def test_a_stop_marks_the_row_and_a_new_start_clears_the_mark(store: Store) -> None:
    await store.upsert_worker(entry(), fresh=FRESH)
    await store.upsert_worker(entry(), fresh=FRESH, stopped=True)
    [row] = await sql(store, "SELECT stopped_at FROM workers")
    assert row["stopped_at"] is not None
    [listed] = await store.list_workers(within=60, limit=10)
    assert listed.alive is False

    restarted = entry(pid=101, started_at=datetime.now(UTC))
    assert await store.upsert_worker(restarted, fresh=FRESH) is False  # the old one stopped
    [listed] = await store.list_workers(within=60, limit=10)
    assert (listed.alive, listed.stopped_at, listed.pid) == (True, None, 101)


async def test_another_live_process_with_the_same_id_is_reported_as_a_clash(
    store: Store,
) -> None:
    await store.upsert_worker(entry(), fresh=FRESH)
    assert await store.upsert_worker(entry(), fresh=FRESH) is False  # itself again
    other = entry(hostname="node-b", pid=7)
    assert await store.upsert_worker(other, fresh=FRESH) is True
    assert await store.upsert_worker(entry(), fresh=FRESH) is True  # and back: both see it
    # A row last written long ago is no live process.
    await seen_ago(store, "w-1", 60)
    assert await store.upsert_worker(other, fresh=FRESH) is False


async def test_list_puts_live_workers_first_and_flags_the_others(store: Store) -> None:
    for worker_id in ("old", "live-b", "live-a", "stopped"):
        await store.upsert_worker(entry(worker_id), fresh=FRESH)
    await seen_ago(store, "old", 600)
    await store.upsert_worker(entry("stopped"), fresh=FRESH, stopped=True)

    rows = await store.list_workers(within=60, limit=10)
    assert {(r.worker_id, r.alive) for r in rows[:2]} == {("live-a", True), ("live-b", True)}
    tail = {r.worker_id: r.alive for r in rows[2:]}
    assert tail == {"stopped": False, "old": False}
    old = next(r for r in rows if r.worker_id == "old")
    assert 599 <= old.seconds_since_seen < 660
    assert old.now - old.last_seen >= timedelta(seconds=599)
    # A wider window takes in the one seen ten minutes ago (a stopped one stays stopped).
    wide = {r.worker_id: r.alive for r in await store.list_workers(within=3600, limit=10)}
    assert wide == {"old": True, "live-a": True, "live-b": True, "stopped": False}
    assert len(await store.list_workers(within=60, limit=2)) == 2


async def test_prune_deletes_only_rows_not_seen_within_the_retention(store: Store) -> None:
    for worker_id in ("gone", "stopped-long-ago", "recent"):
        await store.upsert_worker(entry(worker_id), fresh=FRESH)
    await store.upsert_worker(entry("stopped-long-ago"), fresh=FRESH, stopped=True)
    await seen_ago(store, "gone", 3700)
    await seen_ago(store, "stopped-long-ago", 3601)
    await seen_ago(store, "recent", 3500)
    assert await store.prune_workers(3600) == 2
    assert [r["worker_id"] for r in await sql(store, "SELECT worker_id FROM workers")] == ["recent"]
    assert await store.prune_workers(3600) == 0


async def test_the_table_refuses_rows_the_worker_never_writes(store: Store) -> None:
    with pytest.raises(errors.InvalidRequest):
        await store.upsert_worker(entry(worker_id=""), fresh=FRESH)
    with pytest.raises(psycopg.errors.CheckViolation):
        await sql(
            store,
            "INSERT INTO workers (worker_id, hostname, pid, version, started_at, status)"
            " VALUES ('x', 'h', 1, 'v', now(), '[]')",
        )
    # A snapshot past 64 KiB (stored size) is refused: the writer bounds it first.
    huge = {"v": 1, "noise": [f"{i:x}" * 40 for i in range(20000)]}
    with pytest.raises(errors.InvalidRequest):
        await store.upsert_worker(replace(entry(), status=huge), fresh=FRESH)
