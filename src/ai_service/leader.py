"""Cluster-wide leadership of background services, by PostgreSQL advisory locks.

Each service (rescuer, counter compaction, retention, ...) has its own lock
key. A process leads a service while it holds that key's session-level
advisory lock on its own dedicated connection: when the process dies or its
connection drops, PostgreSQL releases the lock and another replica takes it
over at its next round. Services spread over replicas, and N replicas never
run the same scan N times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from ai_service.notifier import CONNECT_OPTIONS

log = logging.getLogger("ai_service.leader")


class Leadership:
    """The advisory locks this process holds, on one dedicated connection."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._held: set[int] = set()
        self._lock = asyncio.Lock()

    async def holds(self, key: int) -> bool:
        """Whether this process leads `key` now (taking the lead when it is free)."""
        async with self._lock:
            try:
                conn = await self._connection()
                if key in self._held:
                    await conn.execute("SELECT 1")  # the session, and so the lock, is alive
                    return True
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self._held.add(key)
                    log.info("leading service %d", key)
                    return True
                return False
            except psycopg.Error:
                await self._drop()
                return False

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._held.clear()  # a new session holds nothing
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, **CONNECT_OPTIONS
            )
        return self._conn

    async def _drop(self) -> None:
        self._held.clear()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Give up every lead (closing the session releases its locks)."""
        async with self._lock:
            await self._drop()
