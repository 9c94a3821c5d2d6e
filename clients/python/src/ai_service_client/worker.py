"""`Worker`: an external worker's claim -> heartbeat -> complete/fail loop over HTTP.

    def handle(job: ClaimedJob) -> dict[str, Any]:
        return {"summary": summarise(job.input["text"])}

    Worker(["call_analysis"], handle, concurrency=8).run()  # until SIGTERM/SIGINT

- Claims long-poll (`wait_seconds`) for as many jobs as it has free slots.
- Each job runs its handler (a plain function in a thread pool, or a coroutine
  function on the loop) while a heartbeat extends its lease every
  `heartbeat_interval`. A heartbeat answered 409/404 means the job is no longer
  this worker's (rescued, retried, cancelled): an async handler is cancelled,
  a thread's result is dropped.
- Results are completed in batches (`POST /api/v1/jobs/complete`, fenced by
  each job's lease token); a handler exception fails the job (`WorkerError`
  picks the category and `retryable`; any other exception is `handler_error`).
- 503s and connection errors: calls are retried by the client's policy, and
  the claim loop backs off and goes on.
- `stop()` (SIGTERM/SIGINT under `run()`): no more claims; in-flight jobs get
  `grace_period` seconds to finish; the rest are given back
  (`POST /jobs/{id}/release`): pending again at once, without spending the
  attempt, for another worker to take.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ai_service_client import errors
from ai_service_client._core import RetryPolicy
from ai_service_client.client import AsyncClient
from ai_service_client.models import ClaimedJob

log = logging.getLogger("ai_service_client.worker")

Handler = Callable[[ClaimedJob], dict[str, Any] | Awaitable[dict[str, Any]]]
GONE = (errors.Conflict, errors.NotFound)  # the job is no longer this worker's
TRANSIENT = (errors.Unavailable, errors.TransportError)


@dataclass
class _Running:
    job: ClaimedJob
    completed: asyncio.Future[None] = field(default_factory=asyncio.Future)
    lost: bool = False  # a heartbeat found the lease gone
    finished: bool = False  # the handler's result is queued for completion


class Worker:
    """Runs `handler` for claimed jobs of `task_types` (None: any), `concurrency` at once."""

    def __init__(
        self,
        task_types: Sequence[str] | None,
        handler: Handler,
        concurrency: int = 4,
        *,
        client: AsyncClient | None = None,
        base_url: str | None = None,
        token: str | None = None,
        worker_id: str | None = None,
        model_profiles: Sequence[str] | None = None,
        lease_seconds: float = 60.0,
        heartbeat_interval: float | None = None,
        wait_seconds: float = 20.0,
        completion_batch: int = 100,
        completion_linger: float = 0.05,
        grace_period: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.task_types = list(task_types) if task_types is not None else None
        self.handler = handler
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.model_profiles = list(model_profiles) if model_profiles is not None else None
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval or lease_seconds / 3
        self.wait_seconds = wait_seconds
        self.completion_batch = completion_batch
        self.completion_linger = completion_linger
        self.grace_period = grace_period
        self._client = client
        self._client_options: dict[str, Any] = {
            "base_url": base_url,
            "token": token,
            "retry": retry,
        }
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._completions: asyncio.Queue[tuple[_Running, dict[str, Any]]] | None = None
        self._threads: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"Worker(worker_id={self.worker_id!r}, task_types={self.task_types!r})"

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully (blocking)."""
        asyncio.run(self.serve(handle_signals=True))

    def stop(self) -> None:
        """Stop claiming and finish (or give back) the jobs in flight; thread-safe."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    async def serve(self, *, handle_signals: bool = False) -> None:
        """Claim and run jobs until `stop()` (or a signal, with `handle_signals`)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._completions = asyncio.Queue()
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ai-worker")
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._stopping.set)
        client = self._client or AsyncClient(**self._client_options)
        completer = asyncio.create_task(self._complete_batches(client), name="worker-completer")
        try:
            await self._claim_loop(client)
        finally:
            await self._shut_down(client)
            completer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await completer
            self._threads.shutdown(wait=False, cancel_futures=True)
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(signum)
            if self._client is None:
                await client.aclose()

    async def _claim_loop(self, client: AsyncClient) -> None:
        assert self._stopping is not None
        stop_wait = asyncio.create_task(self._stopping.wait())
        failures = 0
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._running)
                if free <= 0:
                    await asyncio.wait([stop_wait, *self._tasks], return_when="FIRST_COMPLETED")
                    continue
                claim = asyncio.create_task(
                    client.claim(
                        self.worker_id,
                        task_types=self.task_types,
                        model_profiles=self.model_profiles,
                        limit=free,
                        lease_seconds=self.lease_seconds,
                        wait_seconds=self.wait_seconds,
                    )
                )
                await asyncio.wait([stop_wait, claim], return_when="FIRST_COMPLETED")
                if not claim.done():
                    # Cancelling the long poll closes its connection: the service gives
                    # back any job it claimed for a caller that went away.
                    claim.cancel()
                    with contextlib.suppress(asyncio.CancelledError, errors.AIServiceError):
                        await claim
                    break
                try:
                    jobs = claim.result()
                except TRANSIENT as exc:
                    pause = client.config.retry.pause(min(failures, 6), None)
                    failures += 1
                    log.warning("claim failed (%s); again in %.1f s", exc, pause)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), pause)
                    continue
                failures = 0
                for job in jobs:
                    self._start(client, job)
        finally:
            stop_wait.cancel()

    def _start(self, client: AsyncClient, job: ClaimedJob) -> None:
        running = _Running(job)
        self._running[job.id] = running
        task = asyncio.create_task(self._run_job(client, running), name=f"job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, client: AsyncClient, running: _Running) -> None:
        job = running.job
        work: asyncio.Future[Any] = self._call_handler(job)
        beats = asyncio.create_task(self._heartbeats(client, running, work))
        try:
            try:
                result = await work
            except asyncio.CancelledError:
                if running.lost:
                    log.info("job %s is no longer ours; its work was stopped", job.id)
                    return
                raise
            except errors.WorkerError as exc:
                await self._fail(client, running, exc.category, exc.message, exc)
                return
            except Exception as exc:
                await self._fail(client, running, "handler_error", f"{type(exc).__name__}: {exc}")
                return
            if running.lost:
                log.info("job %s is no longer ours; its result is dropped", job.id)
                return
            if not isinstance(result, dict):
                await self._fail(
                    client, running, "handler_error", "the handler did not return a dict"
                )
                return
            assert self._completions is not None
            running.finished = True
            await self._completions.put((running, result))
            await asyncio.shield(running.completed)
        finally:
            beats.cancel()
            self._running.pop(job.id, None)

    def _call_handler(self, job: ClaimedJob) -> asyncio.Future[Any]:
        if inspect.iscoroutinefunction(self.handler):
            return asyncio.ensure_future(self.handler(job))
        assert self._loop is not None
        return self._loop.run_in_executor(self._threads, self.handler, job)

    async def _heartbeats(
        self, client: AsyncClient, running: _Running, work: asyncio.Future[Any]
    ) -> None:
        job = running.job
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await client.heartbeat(job.id, job.lease_token, self.lease_seconds)
            except GONE as exc:
                log.warning("heartbeat of job %s: %s; stopping its work", job.id, exc)
                running.lost = True
                work.cancel()
                return
            except errors.AIServiceError as exc:
                log.warning("heartbeat of job %s failed: %s", job.id, exc)

    async def _fail(
        self,
        client: AsyncClient,
        running: _Running,
        category: str,
        message: str,
        exc: errors.WorkerError | None = None,
    ) -> None:
        job = running.job
        try:
            await client.fail(
                job.id,
                category=category,
                message=message[:10_000],
                lease_token=job.lease_token,
                details=exc.details if exc else None,
                retryable=exc.retryable if exc else None,
                retry_after_seconds=exc.retry_after_seconds if exc else None,
            )
        except errors.AIServiceError as error:
            log.warning("could not record the failure of job %s: %s", job.id, error)

    async def _complete_batches(self, client: AsyncClient) -> None:
        assert self._completions is not None
        queue = self._completions
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(self.completion_linger)  # let results finishing together join
            while len(batch) < self.completion_batch and not queue.empty():
                batch.append(queue.get_nowait())
            await self._send_completions(client, batch)

    async def _send_completions(
        self, client: AsyncClient, batch: list[tuple[_Running, dict[str, Any]]]
    ) -> None:
        triples = [(r.job.id, r.job.lease_token, result) for r, result in batch]
        try:
            answer = await client.complete_many(triples)
        except errors.AIServiceError as exc:
            # The leases run out and the service runs these jobs again.
            log.warning("could not complete %d jobs: %s", len(batch), exc)
        else:
            for job_id in answer.rejected:
                log.warning("job %s was no longer ours: its result was not stored", job_id)
        for running, _ in batch:
            if not running.completed.done():
                running.completed.set_result(None)

    async def _shut_down(self, client: AsyncClient) -> None:
        if not self._tasks:
            return
        log.info("stopping: waiting up to %.0f s for %d jobs", self.grace_period, len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.grace_period)
        if not pending:
            return
        unfinished = [r.job for r in self._running.values() if not r.finished]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for job in unfinished:
            try:
                await client.release(job.id, job.lease_token)
            except errors.AIServiceError as exc:
                log.warning("could not give back job %s: %s", job.id, exc)
        log.info("gave back %d unfinished jobs", len(unfinished))
