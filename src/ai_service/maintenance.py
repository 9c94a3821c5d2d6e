"""Background upkeep: independent services, each run by one elected leader.

- rescuer: expired leases back to pending (or failed as `lease_expired`);
- counter compaction: trigger-written deltas folded into `job_counts` and
  into the finished-jobs rollups behind `/api/v1/stats`, and the transcription
  attempts into the hourly rollups behind `/api/v1/reports/transcription`;
- retention: finished jobs past their age deleted in batches (with their
  transcription report rows), rollups older than 8 days (the transcription
  report's hourly ones after 32 days), and stored audio unused for
  `AUDIO_RETENTION` that no pending or running job names;
- webhooks: due completion webhooks delivered (`webhooks.delivery`), in the
  processes configured with `WEBHOOK_SECRET` only.

Retention also deletes the worker registry's rows not seen for an hour
(`WORKER_RETENTION`; `worker.presence` writes them).

Every API and worker process runs a `Maintenance`, but each service runs only
in the process that leads it (`leader.Leadership`: an advisory lock per
service, re-elected when the leader dies). Services run in their own tasks,
so a long retention backlog never delays the rescuer. Every step is still one
guarded statement (or a batch of them), so an overlap during a hand-over is
harmless. Timings go to `/metrics` (`ai_maintenance_seconds{service}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ai_service import errors
from ai_service.config import Settings
from ai_service.leader import Leadership
from ai_service.metrics import Metrics
from ai_service.store import RESCUE_BATCH, Store
from ai_service.webhooks.delivery import Deliverer

log = logging.getLogger("ai_service.maintenance")

COMPACT_INTERVAL = 2.0
# Advisory lock keys of the services ("AISM" + a number), distinct from the
# compaction statement's own transaction lock.
SERVICE_KEYS = {
    "rescuer": 0x4149534D01,
    "compaction": 0x4149534D02,
    "retention": 0x4149534D03,
    "webhooks": 0x4149534D04,
}
# Seconds between two rounds of the webhook deliverer: a new event waits at most this.
WEBHOOK_INTERVAL = 1.0
# Rows of the worker registry not seen for this long are deleted (stopped or gone
# workers). Kept here, not imported from `worker.presence`: the API runs maintenance
# too and must not import the worker.
WORKER_RETENTION = 3600.0


@dataclass(frozen=True)
class Service:
    """One periodic step and how often it runs."""

    name: str
    interval: float
    step: Callable[[], Awaitable[object]]


class Maintenance:
    """Runs each service in its own task, while this process leads it."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics | None = None) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.leadership = Leadership(settings.require_database_url())
        self._tasks: list[asyncio.Task[None]] = []
        self.rescued = 0
        self.pruned = 0
        self.leading: set[str] = set()  # services this process led at their last round
        self.services = [
            Service("rescuer", settings.rescue_interval, self.rescue),
            Service("compaction", COMPACT_INTERVAL, self.compact),
            Service("retention", settings.retention_interval, self.prune),
        ]
        # Only a process that can sign competes for the deliverer's lead.
        self.deliverer: Deliverer | None = None
        if settings.webhook_secret is not None:
            self.deliverer = Deliverer(store, settings, self.metrics)
            self.services.append(Service("webhooks", WEBHOOK_INTERVAL, self.deliverer.step))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(service), name=f"maintenance-{service.name}")
            for service in self.services
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.leadership.close()
        if self.deliverer is not None:
            await self.deliverer.close()

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

    async def compact(self) -> None:
        """One compaction pass: counters, rollups, then the transcription report's hourly
        rollups (each its own statement and lock)."""
        await self.store.compact_counts()
        await self.store.compact_rollups()
        await self.store.compact_transcription_rollups()

    async def prune(self) -> int:
        """One retention pass; returns how many jobs it deleted."""
        deleted = await self.store.prune_finished(
            completed_seconds=self.settings.retention_completed,
            failed_seconds=self.settings.retention_failed,
        )
        await self.store.prune_rollups()
        await self.store.prune_transcription_rollups()
        if deleted:
            log.info("retention deleted %d finished jobs", deleted)
        recordings, size = await self.store.prune_audio(self.settings.audio_retention)
        if recordings:
            log.info("retention deleted %d stored recordings (%d bytes)", recordings, size)
        workers = await self.store.prune_workers(WORKER_RETENTION)
        if workers:
            log.info("retention deleted %d workers not seen for %.0fs", workers, WORKER_RETENTION)
        self.pruned += deleted
        return deleted

    async def _run(self, service: Service) -> None:
        key = SERVICE_KEYS[service.name]
        leader = self.metrics.maintenance_leader.labels(service.name)
        seconds = self.metrics.maintenance_seconds.labels(service.name)
        while True:
            leading = await self.leadership.holds(key)
            leader.set(1 if leading else 0)
            if leading:
                self.leading.add(service.name)
            else:
                self.leading.discard(service.name)
            if leading:
                started = time.perf_counter()
                try:
                    await service.step()
                except errors.DatabaseUnavailable:
                    pass  # readiness reports it; try again next round
                except Exception:
                    log.exception("maintenance service %s failed", service.name)
                seconds.observe(time.perf_counter() - started)
            await asyncio.sleep(service.interval)
