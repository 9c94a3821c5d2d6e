"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods, the same answers.

Both build their requests and read the answers with `_core`; each only sends
(through its httpx client), sleeps between retries and loops where an
operation needs several requests (`iter_jobs`, `wait`, `run`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from ai_service_client import _core, errors, models
from ai_service_client._core import Call, JobFilters, JobOptions, NewJob, RetryPolicy

log = logging.getLogger("ai_service_client")
T = TypeVar("T")

DEFAULT_LOCAL_TIMEOUT = 3600.0
DEFAULT_WAIT_TIMEOUT = 300.0


class Client:
    """Blocking client of the AI Service API.

    `base_url` and `token` default to `AI_SERVICE_URL` and `AI_SERVICE_TOKEN`;
    `remote_task_types` (for `run`) to `AI_SERVICE_REMOTE_TASK_TYPES`.
    `owner_service` is used for new jobs that do not name one. Use it as a
    context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        remote_task_types: Sequence[str] | None = None,
        owner_service: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = _core.Config.resolve(
            base_url,
            token,
            timeout=timeout,
            retry=retry,
            remote_task_types=remote_task_types,
            owner_service=owner_service,
        )
        self._http = httpx.Client(
            base_url=self.config.base_url, headers=self.config.headers(), transport=transport
        )

    def __repr__(self) -> str:
        return self.config.describe(type(self).__name__)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying it as its `Call.retry` allows; the decoded answer."""
        policy = self.config.retry
        for number in range(policy.attempts):
            last = number == policy.attempts - 1
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=list(call.params),
                    json=call.json,
                    headers=dict(call.headers),
                    timeout=self.config.timeout_for(call),
                )
            except httpx.TransportError as exc:
                if last or not _core.should_retry_error(call, exc):
                    raise _core.transport_error(call, exc) from None
                time.sleep(policy.pause(number, None))
                continue
            if not last and _core.should_retry_status(call, response.status_code):
                time.sleep(policy.pause(number, _core.retry_after(response.headers)))
                continue
            return _core.answer(call, response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- submitters ------------------------------------------------------------------

    def create(self, **job: Unpack[NewJob]) -> models.CreatedJob:
        """Create a job (`POST /api/v1/jobs`); retried only with an `idempotency_key`."""
        return self.send(_core.create(job, self.config.owner_service))

    def create_batch(
        self,
        jobs: Sequence[models.JobSpec],
        defaults: models.JobSpec | None = None,
        *,
        traceparent: str | None = None,
    ) -> models.Batch:
        """Create up to 1000 jobs at once, all or nothing; retried only when every item
        has an `idempotency_key`."""
        return self.send(_core.create_batch(jobs, defaults, traceparent))

    def get(self, job_id: str) -> models.Job:
        """The job's technical state and result."""
        return self.send(_core.get(job_id))

    def list_jobs(self, cursor: str | None = None, **filters: Unpack[JobFilters]) -> models.JobPage:
        """One page of the job list, newest first."""
        return self.send(_core.list_jobs(filters, cursor))

    def iter_jobs(self, **filters: Unpack[JobFilters]) -> Iterator[models.JobSummary]:
        """Every job matching the filters, newest first, following `next_cursor`."""
        cursor: str | None = None
        while True:
            page = self.send(_core.list_jobs(filters, cursor))
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def wait(self, job_id: str, timeout: float = DEFAULT_WAIT_TIMEOUT) -> models.Job:
        """The job once it is terminal (completed, failed or cancelled).

        Long-polls `GET /jobs/{id}?wait_seconds=` (at most 30 s a request) and
        raises `WaitTimeout` (with the last state as `.job`) after `timeout` seconds.
        A failed or cancelled job is returned, not raised.
        """
        deadline = time.monotonic() + timeout
        while True:
            asked = _core.wait_seconds(deadline, time.monotonic())
            started = time.monotonic()
            job = self.send(_core.get(job_id, asked))
            if job.terminal:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _core.wait_timeout(job, timeout)
            time.sleep(_core.wait_pause(asked, time.monotonic() - started, remaining))

    def cancel(self, job_id: str) -> models.Job:
        """Cancel a pending or running job."""
        return self.send(_core.cancel(job_id))

    def retry(self, job_id: str) -> models.Job:
        """Put a failed or running job back to pending (never retried automatically)."""
        return self.send(_core.retry(job_id))

    def stats(self) -> models.Stats:
        """Queue counters (`GET /api/v1/stats`)."""
        return self.send(_core.stats())

    # -- workers ---------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        *,
        task_types: Sequence[str] | None = None,
        model_profiles: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[models.ClaimedJob]:
        """Claim up to `limit` pending jobs, long-polling up to `wait_seconds` (<= 30)."""
        return self.send(
            _core.claim(
                worker_id,
                task_types=task_types,
                model_profiles=model_profiles,
                limit=limit,
                lease_seconds=lease_seconds,
                wait_seconds=wait_seconds,
            )
        )

    def heartbeat(
        self, job_id: str, lease_token: str, extend_seconds: float | None = None
    ) -> models.Heartbeat:
        """Extend the lease; `LeaseLost` (409) means: stop, the job is no longer yours."""
        return self.send(_core.heartbeat(job_id, lease_token, extend_seconds))

    def release(self, job_id: str, lease_token: str) -> models.Job:
        """Give a claimed job back to pending without spending its attempt."""
        return self.send(_core.release(job_id, lease_token))

    def complete(
        self, job_id: str, result: Mapping[str, Any], lease_token: str | None = None
    ) -> models.Completed:
        """Store a result: a claimed job with its lease token, a pending job without one
        (the mirror path)."""
        return self.send(_core.complete(job_id, result, lease_token))

    def complete_many(
        self, completions: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> models.CompleteMany:
        """Store many results at once: (job id, lease token, result) triples."""
        return self.send(_core.complete_many(completions))

    def fail(
        self,
        job_id: str,
        *,
        category: str,
        message: str,
        lease_token: str | None = None,
        details: Mapping[str, Any] | None = None,
        retryable: bool | None = None,
        retry_after_seconds: float | None = None,
    ) -> models.Job:
        """Record a failed attempt (retried by the service when retryable and attempts remain)."""
        return self.send(
            _core.fail(
                job_id,
                category=category,
                message=message,
                lease_token=lease_token,
                details=details,
                retryable=retryable,
                retry_after_seconds=retry_after_seconds,
            )
        )

    # -- mirror mode -----------------------------------------------------------------

    def run(
        self,
        task_type: str,
        *,
        owner_ref: str,
        model_profile: str,
        input: dict[str, Any],
        local: Callable[[dict[str, Any]], dict[str, Any]],
        owner_service: str | None = None,
        local_timeout: float = DEFAULT_LOCAL_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        **options: Unpack[JobOptions],
    ) -> dict[str, Any]:
        """Run a task locally and mirror it, or remotely, by `AI_SERVICE_REMOTE_TASK_TYPES`.

        Remote (the task type is listed): create the job, `wait` for it, return its
        result (`JobFailed` when it failed or was cancelled, `WaitTimeout` after
        `wait_timeout`). Local: create the job not runnable before `local_timeout`
        from now, call `local(input)`, store its result on the job (the mirror path)
        and return it; an exception of `local` is recorded with `fail`
        (`local_error`) and raised again. With an `idempotency_key` whose job has
        finished already, its outcome is returned without running `local` again.
        """
        job = _run_job(task_type, owner_ref, model_profile, input, owner_service, options)
        if _core.is_remote(self.config, task_type):
            created = self.create(**job)
            return _core.remote_result(self.wait(created.id, wait_timeout))
        mirrored: models.Job
        try:
            mirrored = self.create(**_core.mirror_job(job, local_timeout))
        except errors.IdempotencyConflict as conflict:
            earlier = _core.mirrored_earlier(conflict)
            if earlier is None:
                raise
            mirrored = self.send(earlier)
            if not _core.same_request(mirrored, job):
                raise
        if _core.finished_before(mirrored):
            return _core.remote_result(mirrored)
        try:
            result = _core.local_result(local(input))
        except Exception as exc:
            try:
                self.send(_core.local_failure(mirrored.id, exc))
            except errors.AIServiceError as recording:
                _log_unrecorded(mirrored.id, recording)
            raise
        try:
            self.complete(mirrored.id, result)
        except errors.Conflict as exc:
            _log_taken(mirrored.id, exc)
        return result


class AsyncClient:
    """Asyncio client of the AI Service API: the methods of `Client`, awaited.

    `iter_jobs` is an async iterator; `run` accepts a plain or an async local
    function (a plain one runs in a thread, so it does not block the loop).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        remote_task_types: Sequence[str] | None = None,
        owner_service: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = _core.Config.resolve(
            base_url,
            token,
            timeout=timeout,
            retry=retry,
            remote_task_types=remote_task_types,
            owner_service=owner_service,
        )
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url, headers=self.config.headers(), transport=transport
        )

    def __repr__(self) -> str:
        return self.config.describe(type(self).__name__)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one call, retrying it as its `Call.retry` allows; the decoded answer."""
        policy = self.config.retry
        for number in range(policy.attempts):
            last = number == policy.attempts - 1
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=list(call.params),
                    json=call.json,
                    headers=dict(call.headers),
                    timeout=self.config.timeout_for(call),
                )
            except httpx.TransportError as exc:
                if last or not _core.should_retry_error(call, exc):
                    raise _core.transport_error(call, exc) from None
                await asyncio.sleep(policy.pause(number, None))
                continue
            if not last and _core.should_retry_status(call, response.status_code):
                await asyncio.sleep(policy.pause(number, _core.retry_after(response.headers)))
                continue
            return _core.answer(call, response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- submitters ------------------------------------------------------------------

    async def create(self, **job: Unpack[NewJob]) -> models.CreatedJob:
        """Create a job (`POST /api/v1/jobs`); retried only with an `idempotency_key`."""
        return await self.send(_core.create(job, self.config.owner_service))

    async def create_batch(
        self,
        jobs: Sequence[models.JobSpec],
        defaults: models.JobSpec | None = None,
        *,
        traceparent: str | None = None,
    ) -> models.Batch:
        """Create up to 1000 jobs at once, all or nothing; retried only when every item
        has an `idempotency_key`."""
        return await self.send(_core.create_batch(jobs, defaults, traceparent))

    async def get(self, job_id: str) -> models.Job:
        """The job's technical state and result."""
        return await self.send(_core.get(job_id))

    async def list_jobs(
        self, cursor: str | None = None, **filters: Unpack[JobFilters]
    ) -> models.JobPage:
        """One page of the job list, newest first."""
        return await self.send(_core.list_jobs(filters, cursor))

    async def iter_jobs(self, **filters: Unpack[JobFilters]) -> AsyncIterator[models.JobSummary]:
        """Every job matching the filters, newest first, following `next_cursor`."""
        cursor: str | None = None
        while True:
            page = await self.send(_core.list_jobs(filters, cursor))
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def wait(self, job_id: str, timeout: float = DEFAULT_WAIT_TIMEOUT) -> models.Job:
        """The job once it is terminal; `WaitTimeout` after `timeout` (see `Client.wait`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            asked = _core.wait_seconds(deadline, loop.time())
            started = loop.time()
            job = await self.send(_core.get(job_id, asked))
            if job.terminal:
                return job
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _core.wait_timeout(job, timeout)
            await asyncio.sleep(_core.wait_pause(asked, loop.time() - started, remaining))

    async def cancel(self, job_id: str) -> models.Job:
        """Cancel a pending or running job."""
        return await self.send(_core.cancel(job_id))

    async def retry(self, job_id: str) -> models.Job:
        """Put a failed or running job back to pending (never retried automatically)."""
        return await self.send(_core.retry(job_id))

    async def stats(self) -> models.Stats:
        """Queue counters (`GET /api/v1/stats`)."""
        return await self.send(_core.stats())

    # -- workers ---------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        *,
        task_types: Sequence[str] | None = None,
        model_profiles: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[models.ClaimedJob]:
        """Claim up to `limit` pending jobs, long-polling up to `wait_seconds` (<= 30)."""
        return await self.send(
            _core.claim(
                worker_id,
                task_types=task_types,
                model_profiles=model_profiles,
                limit=limit,
                lease_seconds=lease_seconds,
                wait_seconds=wait_seconds,
            )
        )

    async def heartbeat(
        self, job_id: str, lease_token: str, extend_seconds: float | None = None
    ) -> models.Heartbeat:
        """Extend the lease; `LeaseLost` (409) means: stop, the job is no longer yours."""
        return await self.send(_core.heartbeat(job_id, lease_token, extend_seconds))

    async def release(self, job_id: str, lease_token: str) -> models.Job:
        """Give a claimed job back to pending without spending its attempt."""
        return await self.send(_core.release(job_id, lease_token))

    async def complete(
        self, job_id: str, result: Mapping[str, Any], lease_token: str | None = None
    ) -> models.Completed:
        """Store a result: a claimed job with its lease token, a pending job without one."""
        return await self.send(_core.complete(job_id, result, lease_token))

    async def complete_many(
        self, completions: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> models.CompleteMany:
        """Store many results at once: (job id, lease token, result) triples."""
        return await self.send(_core.complete_many(completions))

    async def fail(
        self,
        job_id: str,
        *,
        category: str,
        message: str,
        lease_token: str | None = None,
        details: Mapping[str, Any] | None = None,
        retryable: bool | None = None,
        retry_after_seconds: float | None = None,
    ) -> models.Job:
        """Record a failed attempt (retried by the service when retryable and attempts remain)."""
        return await self.send(
            _core.fail(
                job_id,
                category=category,
                message=message,
                lease_token=lease_token,
                details=details,
                retryable=retryable,
                retry_after_seconds=retry_after_seconds,
            )
        )

    # -- mirror mode -----------------------------------------------------------------

    async def run(
        self,
        task_type: str,
        *,
        owner_ref: str,
        model_profile: str,
        input: dict[str, Any],
        local: Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]],
        owner_service: str | None = None,
        local_timeout: float = DEFAULT_LOCAL_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        **options: Unpack[JobOptions],
    ) -> dict[str, Any]:
        """`Client.run`, awaited: local (mirrored) or remote by task type."""
        job = _run_job(task_type, owner_ref, model_profile, input, owner_service, options)
        if _core.is_remote(self.config, task_type):
            created = await self.create(**job)
            return _core.remote_result(await self.wait(created.id, wait_timeout))
        mirrored: models.Job
        try:
            mirrored = await self.create(**_core.mirror_job(job, local_timeout))
        except errors.IdempotencyConflict as conflict:
            earlier = _core.mirrored_earlier(conflict)
            if earlier is None:
                raise
            mirrored = await self.send(earlier)
            if not _core.same_request(mirrored, job):
                raise
        if _core.finished_before(mirrored):
            return _core.remote_result(mirrored)
        try:
            if inspect.iscoroutinefunction(local):
                value = await local(input)
            else:
                value = await asyncio.to_thread(local, input)
                if inspect.isawaitable(value):
                    value = await value
            result = _core.local_result(value)
        except Exception as exc:
            failure = _core.local_failure(mirrored.id, exc)
            try:
                await self.send(failure)
            except errors.AIServiceError as recording:
                _log_unrecorded(mirrored.id, recording)
            raise
        try:
            await self.complete(mirrored.id, result)
        except errors.Conflict as exc:
            _log_taken(mirrored.id, exc)
        return result


def _run_job(
    task_type: str,
    owner_ref: str,
    model_profile: str,
    input: dict[str, Any],
    owner_service: str | None,
    options: JobOptions,
) -> NewJob:
    job: NewJob = {
        **options,  # type: ignore[typeddict-item]
        "task_type": task_type,
        "owner_ref": owner_ref,
        "model_profile": model_profile,
        "input": input,
    }
    if owner_service is not None:
        job["owner_service"] = owner_service
    return job


def _log_unrecorded(job_id: str, exc: errors.AIServiceError) -> None:
    # The local exception matters more to the caller than the failed record of it.
    log.warning("could not record the local failure of job %s: %s", job_id, exc)


def _log_taken(job_id: str, exc: errors.Conflict) -> None:
    # The local run outlived `local_timeout` and a remote worker took the job (or it was
    # cancelled): the local result is still the caller's answer.
    log.warning("job %s was no longer pending, its local result is not stored: %s", job_id, exc)
