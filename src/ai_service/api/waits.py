"""`GET /api/v1/jobs/{id}?wait_seconds=N`: answer when the job finishes, or after N.

A waiter costs a future, not a connection: the API's `JobNotifier` passes on
the ids of finished jobs (`notifier.FINISHED_CHANNEL`), and one task reads
the jobs that waiters are waiting for, many in one statement, and hands each
waiter its job once it is final. A notification naming no ids ("any job may
have finished": a bulk cancel, the listener's reconnect) has every waited-for
job read again. The job is read once more when the wait ends, so a waiter
whose notification was lost answers the current state at its deadline, as it
would have anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from ai_service.jobs import Job
from ai_service.store import Store

log = logging.getLogger("ai_service.api")


class JobWaits:
    """Waiters for jobs to reach a final status, woken by finished-job notifications."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiters: dict[UUID, set[asyncio.Future[Job]]] = {}
        self._due: set[UUID] = set()  # notified, to be read
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """How many requests are waiting now."""
        return sum(len(futures) for futures in self._waiters.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-waits")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def finished(self, ids: set[str] | None) -> None:
        """A notification: these jobs finished (None: any may have). Never blocks."""
        if not self._waiters:
            return
        if ids is None:
            self._due.update(self._waiters)
        else:
            for text in ids:
                try:
                    job_id = UUID(text)
                except ValueError:
                    continue  # not ours to judge: the payload is only a hint
                if job_id in self._waiters:
                    self._due.add(job_id)
        if self._due:
            self._wake.set()

    async def wait(self, job_id: UUID, timeout: float) -> Job:
        """The job once it is final, or its state after `timeout` seconds.

        The waiter is registered before the job is read: a job that finishes
        in between has its notification find the waiter.
        """
        future = self._register(job_id)
        try:
            current = await self._store.get_job(job_id)
            if current.status.is_terminal or timeout <= 0:
                return current
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return await self._store.get_job(job_id)
        finally:
            self._unregister(job_id, future)

    def _register(self, job_id: UUID) -> asyncio.Future[Job]:
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        return future

    def _unregister(self, job_id: UUID, future: asyncio.Future[Job]) -> None:
        futures = self._waiters.get(job_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[job_id]
        future.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            due = [job_id for job_id in self._due if job_id in self._waiters]
            self._due.clear()
            if not due:
                continue
            try:
                jobs = await self._store.get_jobs(due)
            except Exception as exc:
                # Each waiter reads its job again at its deadline: late, never wrong.
                log.warning("could not read finished jobs for waiters: %s", type(exc).__name__)
                continue
            for job in jobs:
                if job.status.is_terminal:
                    for future in self._waiters.get(job.id, ()):
                        if not future.done():
                            future.set_result(job)
