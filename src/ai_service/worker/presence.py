"""The worker registry: each worker keeps its own row of `workers` up to date.

A `Presence` writes the worker's row (id, host, pid, version, start time and a
bounded snapshot of its state) at start, every `WORKER_REGISTRY_INTERVAL`, and
once more at a graceful stop, marking it stopped. One upsert per round, in its
own task: it shares nothing with the claim loop but the connection pool, and a
failure is logged, never raised (the registry is for operators; the jobs go on).
`GET /api/v1/workers` reads the rows; retention deletes those not seen for
an hour (`maintenance.WORKER_RETENTION`).

The snapshot is what `/worker/status` shows, cut to a bounded size: the
handlers with their task types and slots, each provider endpoint's circuit
breaker (URLs already without credentials, error texts already cleaned of
configured secrets, both as `/worker/status` shows them), the count of jobs in
flight (not the jobs), the counters and the stopping flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from ai_service.cli import version as package_version
from ai_service.config import Settings
from ai_service.store import Store, WorkerEntry
from ai_service.worker.runner import Runner

log = logging.getLogger("ai_service.worker.presence")

# Version of the snapshot's shape, for readers of rows written by other releases.
SNAPSHOT_VERSION = 1
# Longest text kept from a breaker's last error or a handler's disabled reason.
TEXT_MAX = 300
# A bound on the entries of each list, whatever the configuration.
ENTRIES_MAX = 64
# The final write at a graceful stop waits at most this long (the database may be down).
STOP_TIMEOUT = 2.0
# Another process wrote the row within this many intervals: it is alive.
FRESH_INTERVALS = 3


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:TEXT_MAX]


def snapshot(runner: Runner) -> dict[str, Any]:
    """The bounded `status` document of a worker's row (see the module docstring)."""
    slot_status = runner.slot_status()
    handlers = []
    for spec in runner.specs[:ENTRIES_MAX]:
        pool = slot_status.get(spec.name, {})
        handlers.append(
            {
                "name": spec.name,
                "task_types": sorted(spec.task_types)[:ENTRIES_MAX],
                "model_profiles": sorted(spec.model_profiles)[:ENTRIES_MAX]
                if spec.model_profiles is not None
                else None,
                "enabled": spec.enabled,
                "disabled_reason": _text(spec.disabled_reason),
                "slots": {
                    "slots": pool.get("slots", 0),
                    "limit": pool.get("limit", 0),
                    "in_use": pool.get("in_use", 0),
                },
            }
        )
    breakers = [
        {
            "provider": entry["provider"],
            "url": entry["url"],  # redacted when the breaker was made (`Breakers.from_settings`)
            "state": entry["state"],
            "since": entry["since"],
            "last_error": _text(entry["last_error"]),
            "consecutive_failures": entry["consecutive_failures"],
        }
        for entry in runner.breakers.status()[:ENTRIES_MAX]
    ]
    counters = runner.counters
    return {
        "v": SNAPSHOT_VERSION,
        "stopping": runner.stopping,
        "concurrency": runner.concurrency,
        "in_flight": len(runner.in_flight),
        "handlers": handlers,
        "breakers": breakers,
        "counters": {
            "processed": counters.processed,
            "completed": counters.completed,
            "failed": counters.failed,
            "retried": counters.retried,
            "discarded": counters.discarded,
            "deferred": counters.deferred,
        },
        "last_claim_at": runner.last_claim_at.isoformat() if runner.last_claim_at else None,
    }


class Presence:
    """Keeps one worker's row of the registry: `start()`, then `stop()` at the end."""

    def __init__(self, store: Store, runner: Runner, settings: Settings) -> None:
        self.store = store
        self.runner = runner
        self.interval = settings.worker_registry_interval
        self.hostname = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.version = package_version()[:64]
        self.writes = 0  # rows written (tests wait for them)
        self._failing = False
        self._clash_warned = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Write the row now and then every interval, in a task of its own."""
        self._task = asyncio.create_task(self._run(), name="worker-registry")

    async def stop(self) -> None:
        """Stop the rounds, then mark the row stopped (bounded: the database may be down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.write(stopped=True), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("worker registry: could not mark worker %s stopped", self.runner.worker_id)

    async def _run(self) -> None:
        while True:
            await self.write()
            await asyncio.sleep(self.interval)

    def entry(self) -> WorkerEntry:
        """The row as it is now."""
        return WorkerEntry(
            worker_id=self.runner.worker_id,
            hostname=self.hostname,
            pid=self.pid,
            version=self.version,
            started_at=self.runner.started_at,
            status=snapshot(self.runner),
        )

    async def write(self, *, stopped: bool = False) -> None:
        """Upsert the row once; a failure is a warning (once per streak), never an error."""
        try:
            clash = await self.store.upsert_worker(
                self.entry(), fresh=FRESH_INTERVALS * self.interval, stopped=stopped
            )
        except Exception as exc:  # the registry must never take the worker down
            if not self._failing:
                log.warning(
                    "worker registry: could not record worker %s (%s: %s); retrying every %gs",
                    self.runner.worker_id,
                    type(exc).__name__,
                    getattr(exc, "message", None) or str(exc)[:TEXT_MAX],
                    self.interval,
                )
            self._failing = True
            return
        if self._failing:
            log.info("worker registry: worker %s recorded again", self.runner.worker_id)
            self._failing = False
        # The first write may find the row of this worker's previous run (a restart
        # within seconds): only a clash on a later write means a second live process.
        if clash and self.writes > 0 and not self._clash_warned:
            log.warning(
                "worker registry: another live process also uses WORKER_ID %s; their rows "
                "overwrite each other (give each worker its own WORKER_ID)",
                self.runner.worker_id,
            )
            self._clash_warned = True
        self.writes += 1
