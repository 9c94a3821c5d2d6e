"""After a database restart, pooled connections are checked before use, so the
first requests succeed instead of failing on a dead connection."""

from __future__ import annotations

import asyncio

import pytest

from ai_service import db, embedded_db, errors
from ai_service.store import Store


async def _restart_under(store: Store, server: embedded_db.EmbeddedPostgres) -> None:
    # Every pooled connection used once, then idle across the restart.
    await asyncio.gather(*(store.stats_counts() for _ in range(8)))
    await asyncio.to_thread(server.stop, "fast")
    await asyncio.to_thread(server.start)


async def test_first_requests_after_a_restart_succeed(
    restartable: embedded_db.EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_CHECK_AFTER", 0.05)
    store = await Store.open(restartable.url, min_size=4, max_size=4, wait=True)
    try:
        await _restart_under(store, restartable)
        await asyncio.sleep(0.1)
        for _ in range(8):  # every pooled connection is handed out at least once
            await store.ping()
    finally:
        await store.close()


async def test_without_the_idle_check_a_restart_costs_failed_requests(
    restartable: embedded_db.EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter-proof: the check above is what saves those requests."""
    monkeypatch.setattr(db, "IDLE_CHECK_AFTER", 3600.0)
    store = await Store.open(restartable.url, min_size=4, max_size=4, wait=True)
    try:
        await _restart_under(store, restartable)
        failures = 0
        for _ in range(8):
            try:
                await store.ping()
            except errors.DatabaseUnavailable:
                failures += 1
        assert failures >= 1
    finally:
        await store.close()
