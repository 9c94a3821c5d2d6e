"""Wake-ups from PostgreSQL `NOTIFY ai_service_jobs` (sent by the jobs triggers).

One dedicated `LISTEN` connection per process; any number of waiters. When
the connection drops it reconnects with a short backoff and wakes every waiter
once, so that nothing sleeps through jobs created while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

CHANNEL = "ai_service_jobs"
# A LISTEN connection only reads: without keepalives a silently dropped one (a NAT or
# failover) would never be noticed, and workers would fall back to polling for good.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

log = logging.getLogger("ai_service.notifier")


class JobNotifier:
    """Broadcasts "new runnable jobs may exist" to coroutines waiting in `wait`."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wake(self) -> None:
        # Swap the event so that waiters that start after this wake-up wait for the next.
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> asyncio.Event:
        """The event the next notification sets.

        Take it *before* looking for work and pass it to `wait`, so that a
        notification arriving in between is not missed.
        """
        return self._event

    async def wait(self, timeout: float, event: asyncio.Event | None = None) -> bool:
        """Wait for a notification; True if one came before `timeout` seconds."""
        event = event or self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, **CONNECT_OPTIONS
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    self._wake()  # catch up on anything missed while disconnected
                    delay = 0.1
                    async for _ in conn.notifies():
                        self._wake()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("notification listener disconnected: %s", type(exc).__name__)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
