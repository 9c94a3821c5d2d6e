"""A worker's registry row kept by `worker.presence.Presence` on a real PostgreSQL.

The runners here are never started: the presence reads only their state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from ai_service.store import Store
from ai_service.worker.handler import HandlerContext
from ai_service.worker.main import handler_specs
from ai_service.worker.presence import Presence
from ai_service.worker.runner import Runner
from tests.helpers import make_settings, wait_for
from tests.stubs import closed_port_url

LOGGER = "ai_service.worker.presence"


@asynccontextmanager
async def presence_of(store: Store, database_url: str, **env: str) -> AsyncIterator[Presence]:
    settings = make_settings(database_url, WORKER_REGISTRY_INTERVAL="0.1s", **env)
    async with httpx.AsyncClient() as http:
        runner = Runner(
            store, HandlerContext(settings=settings, http=http), handler_specs(settings)
        )
        yield Presence(store, runner, settings)


async def rows(store: Store) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM workers ORDER BY worker_id")
        return await cur.fetchall()


async def test_the_row_is_written_each_interval_and_marked_stopped_at_the_end(
    store: Store, database_url: str
) -> None:
    async with presence_of(store, database_url, WORKER_ID="p-1") as presence:
        presence.start()
        await wait_for(lambda: presence.writes >= 3, 10, "three writes")
        [row] = await rows(store)
        assert (row["worker_id"], row["pid"], row["stopped_at"]) == ("p-1", os.getpid(), None)
        assert row["started_at"] == presence.runner.started_at
        assert row["status"]["handlers"]
        await presence.stop()
        [row] = await rows(store)
        assert row["stopped_at"] is not None
        writes = presence.writes
        await asyncio.sleep(0.3)
        assert presence.writes == writes  # no round after the stop


async def test_an_unreachable_database_is_one_warning_and_never_an_error(
    caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    down = f"postgresql://postgres@{closed_port_url().removeprefix('http://')}/db"
    store = await Store.open(down, min_size=0, max_size=1, timeout=0.3)
    try:
        async with presence_of(store, down, WORKER_ID="p-down") as presence:
            for _ in range(3):
                await presence.write()  # does not raise
            await presence.stop()  # bounded, does not raise either
    finally:
        await store.close()
    assert presence.writes == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "could not record worker p-down" in warnings[0].getMessage()


async def test_a_second_live_process_with_the_same_worker_id_is_warned_about_once(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        presence_of(store, database_url, WORKER_ID="twin") as first,
        presence_of(store, database_url, WORKER_ID="twin") as second,
    ):
        await first.write()
        await second.write()  # its first write: maybe the previous run of this worker
        assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
        for _ in range(3):
            await first.write()
            await second.write()
    clashes = [
        r.getMessage() for r in caplog.records if "also uses WORKER_ID twin" in r.getMessage()
    ]
    assert len(clashes) == 2  # one per process, once each


async def test_a_restart_takes_over_the_row_of_the_previous_run_without_a_warning(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with presence_of(store, database_url, WORKER_ID="phoenix") as crashed:
        await crashed.write()  # and then it died: never marked stopped
    async with presence_of(store, database_url, WORKER_ID="phoenix") as restarted:
        await restarted.write()
        await restarted.write()
    [row] = await rows(store)
    assert row["started_at"] == restarted.runner.started_at
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
