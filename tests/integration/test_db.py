"""Connection plumbing (`ai_service.db`) on a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from ai_service import db, errors
from ai_service.store import Store


async def test_pooled_connections_run_without_jit(store: Store) -> None:
    # JIT would compile the claim's large estimated plan on every call (445 ms on
    # Debian's PostgreSQL 15 for a 1 ms statement).
    [row] = await db.fetch(store.pool, "SELECT current_setting('jit') AS jit", {})
    assert row["jit"] == "off"


async def test_statements_run_together_share_one_transaction_and_the_generic_plan(
    store: Store,
) -> None:
    probe = "SELECT current_setting('plan_cache_mode') AS mode, pg_current_xact_id()::text AS xact"
    first, second = await db.fetch_together(store.pool, [(probe, {}), (probe, {})])
    assert first == second
    assert first[0]["mode"] == "force_generic_plan"
    # SET LOCAL: the setting ends with the transaction, the next user of the
    # connection plans as usual.
    [after] = await db.fetch(store.pool, probe, {})
    assert after["mode"] == "auto"
    assert after["xact"] != first[0]["xact"]


async def test_statements_run_together_are_undone_together(store: Store, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE together (n int)")
    with pytest.raises(errors.InvalidRequest):
        await db.fetch_together(
            store.pool,
            [
                ("INSERT INTO together VALUES (%(n)s)", {"n": 1}),
                ("SELECT 1 / %(zero)s", {"zero": 0}),
            ],
        )
    [row] = await db.fetch(store.pool, "SELECT count(*) AS n FROM together", {})
    assert row["n"] == 0
