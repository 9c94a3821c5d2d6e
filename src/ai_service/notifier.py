"""Wake-ups through PostgreSQL `NOTIFY ai_service_jobs`, one payload per task type.

Sending (`Announcer`): the store announces the task types of jobs that became
runnable *now* (created, retried, released), after their statement committed,
in one short statement of its own: the notify lock PostgreSQL takes until
commit is held for a moment, not for the inserting transaction. Leading-edge
debounced: the first announcement goes out at once, then at most one
statement per `window` carries every type gathered meanwhile. Jobs scheduled
for later and retries waiting out their backoff are found by polling.

Receiving (`JobNotifier`): one dedicated `LISTEN` connection per process; any
number of waiters, each for the task types it can take (or all). When the
connection drops it reconnects with a short backoff and wakes every waiter
once, so that nothing sleeps through jobs created while it was away.

Finished jobs go on a second channel, `ai_service_finished`, in the same way:
the store announces the ids of jobs that became completed, failed or
cancelled after their commit (debounced, many ids per payload), and a
`JobNotifier` built with `on_finished` (the API's, for
`GET /jobs/{id}?wait_seconds=`) passes them on. `*` stands for "any job may
have finished" (a bulk cancel, a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg

CHANNEL = "ai_service_jobs"
FINISHED_CHANNEL = "ai_service_finished"
FINISHED_ANY = "*"
# A NOTIFY payload must stay under 8,000 bytes: 200 ids of 36 characters and a comma.
IDS_PER_PAYLOAD = 200
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


def finished_payloads(ids: list[str]) -> list[str]:
    """`ids` as NOTIFY payloads: comma-separated, `IDS_PER_PAYLOAD` at most in each."""
    if FINISHED_ANY in ids:
        return [FINISHED_ANY]
    return [",".join(ids[i : i + IDS_PER_PAYLOAD]) for i in range(0, len(ids), IDS_PER_PAYLOAD)]


def parse_finished(payload: str) -> set[str] | None:
    """The job ids of a finished-jobs payload; None when any job may have finished."""
    ids = {part for part in payload.split(",") if part}
    return None if FINISHED_ANY in ids or not ids else ids


class Announcer:
    """Debounced sender of "jobs of these task types are runnable now"."""

    def __init__(self, send: Callable[[list[str]], Awaitable[None]], window: float = 0.005):
        self._send = send
        self.window = window
        self._pending: set[str] = set()
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def announce(self, task_types: Iterable[str]) -> None:
        """Queue a wake-up for `task_types`; never waits and never fails the caller."""
        self._pending.update(task_types)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush(), name="announcer")

    async def _flush(self) -> None:
        while self._pending:
            delay = self._last + self.window - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # gather what else comes in this window
            types, self._pending = sorted(self._pending), set()
            self._last = time.monotonic()
            try:
                await self._send(types)
            except Exception as exc:
                # Workers also poll: a lost wake-up delays a job, it never loses one.
                log.warning("could not send a wake-up: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class JobNotifier:
    """Broadcasts "new runnable jobs may exist" to coroutines waiting in `wait`."""

    def __init__(
        self,
        database_url: str,
        on_finished: Callable[[set[str] | None], None] | None = None,
    ) -> None:
        """`on_finished` (optional) gets the ids of each finished-jobs notification
        (None: any job may have finished, also after a reconnect)."""
        self._url = database_url
        self._on_finished = on_finished
        # Interest (None: every task type) -> the event its next wake-up sets. Weak:
        # an interest nobody waits for any more disappears by itself.
        self._events: weakref.WeakValueDictionary[frozenset[str] | None, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
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

    def _wake(self, task_type: str | None = None) -> None:
        """Wake the waiters interested in `task_type` (None: every waiter).

        The woken events are dropped, so that waiters that start after this
        wake-up wait for the next one.
        """
        for interest, event in list(self._events.items()):
            if task_type is None or interest is None or task_type in interest:
                self._events.pop(interest, None)
                event.set()

    def waiter(self, task_types: Iterable[str] | None = None) -> asyncio.Event:
        """The event the next notification for one of `task_types` (None: any) sets.

        Take it *before* looking for work and pass it to `wait`, so that a
        notification arriving in between is not missed.
        """
        interest = frozenset(task_types) if task_types is not None else None
        event = self._events.get(interest)
        if event is None:
            event = self._events[interest] = asyncio.Event()
        return event

    async def wait(self, timeout: float, event: asyncio.Event | None = None) -> bool:
        """Wait for a notification; True if one came before `timeout` seconds."""
        event = event or self.waiter()
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
                    if self._on_finished is not None:
                        await conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                        self._on_finished(None)
                    self.connected.set()
                    self._wake()  # catch up on anything missed while disconnected
                    delay = 0.1
                    async for notify in conn.notifies():
                        if notify.channel == CHANNEL:
                            self._wake(notify.payload or None)
                        elif self._on_finished is not None:
                            self._on_finished(parse_finished(notify.payload))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("notification listener disconnected: %s", type(exc).__name__)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
