"""Background upkeep run by every API and worker process.

- rescuer: expired leases back to pending (or failed as `lease_expired`);
- counter compaction: trigger-written deltas folded into `job_counts`;
- retention: finished jobs past their age deleted in batches.

Every step is one guarded statement (or a batch of them), so any number of
replicas may run this loop at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ai_service import errors
from ai_service.config import Settings
from ai_service.store import RESCUE_BATCH, Store, retention_cutoffs

log = logging.getLogger("ai_service.maintenance")

COMPACT_INTERVAL = 2.0


class Maintenance:
    """Runs the periodic steps on their own intervals until stopped."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self.rescued = 0
        self.pruned = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maintenance")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def rescue(self) -> int:
        """One rescuer pass; returns how many jobs it moved."""
        moved = 0
        while True:
            rows = await self.store.rescue_expired()
            for job_id, status in rows:
                log.warning("rescued job %s with expired lease -> %s", job_id, status.value)
            moved += len(rows)
            if len(rows) < RESCUE_BATCH:
                self.rescued += moved
                return moved

    async def prune(self) -> int:
        """One retention pass; returns how many jobs it deleted."""
        completed_before, failed_before = retention_cutoffs(
            datetime.now(UTC), self.settings.retention_completed, self.settings.retention_failed
        )
        deleted = await self.store.prune_finished(
            completed_before=completed_before, failed_before=failed_before
        )
        if deleted:
            log.info("retention deleted %d finished jobs", deleted)
        self.pruned += deleted
        return deleted

    async def _run(self) -> None:
        steps: list[tuple[float, Callable[[], Awaitable[object]]]] = [
            (self.settings.rescue_interval, self.rescue),
            (COMPACT_INTERVAL, self.store.compact_counts),
            (self.settings.retention_interval, self.prune),
        ]
        due = [0.0 for _ in steps]
        while True:
            now = time.monotonic()
            for index, (interval, step) in enumerate(steps):
                if now >= due[index]:
                    due[index] = now + interval
                    try:
                        await step()
                    except errors.DatabaseUnavailable:
                        pass  # readiness reports it; try again next round
                    except Exception:
                        log.exception("maintenance step %s failed", step.__name__)
            await asyncio.sleep(max(0.05, min(due) - time.monotonic()))
