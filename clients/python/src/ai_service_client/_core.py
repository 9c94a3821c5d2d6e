"""The request/response core shared by `Client` and `AsyncClient` (no I/O here).

Each API operation is a function returning a `Call`: method, path, query, body,
headers, how it may be retried, and how its answer is decoded. The two client
classes only send calls (`httpx.Client` or `httpx.AsyncClient`) and sleep
between attempts; deciding whether to retry, how long to wait and what an
answer means happens here, once.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Generic, NotRequired, Required, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from ai_service_client import errors, models

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
# A long poll may hold the request this long; the read timeout allows for it.
MAX_WAIT_SECONDS = 30.0
LONG_POLL_SLACK = 10.0
TOKEN_VARIABLE = "AI_SERVICE_TOKEN"
URL_VARIABLE = "AI_SERVICE_URL"
REMOTE_TASK_TYPES_VARIABLE = "AI_SERVICE_REMOTE_TASK_TYPES"
API = "/api/v1"


class Retry(enum.Enum):
    """How a call may be repeated after a failure."""

    # Repeating it changes nothing the first attempt did not (GET, cancel, heartbeat,
    # complete with a lease token, create with an idempotency key): retried on
    # connection errors, timeouts and 502/503/504.
    IDEMPOTENT = "idempotent"
    # A repeat could act twice (create without a key, retry, claim, fail without a
    # token): retried only when the connection could not even be opened, so the
    # request never reached the service.
    UNSENT_ONLY = "unsent_only"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API request and the decoding of its answer."""

    method: str
    path: str
    decode: Callable[[Any], T]
    retry: Retry
    json: Any = None
    params: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds the service may hold the answer (long polls), added to the read timeout.
    hold: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter between attempts of a retryable call.

    `attempts` counts every try (1 = no retry). The n-th pause is a random time
    up to `min(backoff_max, backoff_base * 2**n)`, at least a `Retry-After` the
    service sent (capped at `retry_after_max`).
    """

    attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 5.0
    retry_after_max: float = 30.0

    def pause(self, retry_number: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `retry_number` (0 for the first retry)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2**retry_number)
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Config:
    """Where and how a client talks to the API (never shows the token)."""

    base_url: str
    token: str | None = field(repr=False)
    timeout: float
    retry: RetryPolicy
    remote_task_types: frozenset[str]
    owner_service: str | None

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        token: str | None,
        *,
        timeout: float,
        retry: RetryPolicy | None,
        remote_task_types: Sequence[str] | None,
        owner_service: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        """Arguments first, then `AI_SERVICE_URL`, `AI_SERVICE_TOKEN`,
        `AI_SERVICE_REMOTE_TASK_TYPES` from the environment."""
        env = os.environ if environ is None else environ
        url = base_url or env.get(URL_VARIABLE) or DEFAULT_URL
        if remote_task_types is None:
            remote_task_types = parse_task_types(env.get(REMOTE_TASK_TYPES_VARIABLE, ""))
        return cls(
            base_url=url.rstrip("/"),
            token=token if token is not None else (env.get(TOKEN_VARIABLE) or None),
            timeout=timeout,
            retry=retry or RetryPolicy(),
            remote_task_types=frozenset(remote_task_types),
            owner_service=owner_service,
        )

    def headers(self) -> dict[str, str]:
        """Headers of every request (the bearer token when one is configured)."""
        headers = {"Accept": "application/json", "User-Agent": "ai-service-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def describe(self, cls: str) -> str:
        """The client's repr: its URL and whether it has a token, never the token."""
        token = "set" if self.token else "none"
        return f"{cls}(base_url={self.base_url!r}, token={token})"

    def timeout_for(self, call: Call[Any]) -> httpx.Timeout:
        """The call's timeout: the client's, with room for a long poll's hold."""
        return httpx.Timeout(self.timeout, read=self.timeout + call.hold)


def parse_task_types(value: str) -> list[str]:
    """`call_analysis, summary` -> ["call_analysis", "summary"] (blanks dropped)."""
    return [name.strip() for name in value.split(",") if name.strip()]


# -- answers ---------------------------------------------------------------------------


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The `Retry-After` header in seconds (delta or HTTP date), if any."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def answer(call: Call[T], response: httpx.Response) -> T:
    """Decode a success, or raise the typed error carrying the envelope."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise errors.from_response(response.status_code, body)
    try:
        data = response.json()
    except ValueError:
        raise errors.AIServiceError(
            f"unexpected answer: {call.method} {call.path} did not answer JSON",
            status_code=response.status_code,
            error="unexpected_answer",
        ) from None
    return call.decode(data)


def should_retry_status(call: Call[Any], status_code: int) -> bool:
    """Whether an answer with `status_code` is worth another attempt of `call`."""
    return call.retry is Retry.IDEMPOTENT and status_code in RETRYABLE_STATUS


def should_retry_error(call: Call[Any], exc: httpx.TransportError) -> bool:
    """Whether a transport failure is worth another attempt of `call`."""
    # Nothing was sent when the connection could not be opened: any call may go again.
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return unsent or call.retry is Retry.IDEMPOTENT


def transport_error(call: Call[Any], exc: httpx.TransportError) -> errors.TransportError:
    """The client error for a transport failure (the URL's path only: no secrets)."""
    return errors.TransportError(
        f"{call.method} {call.path}: {type(exc).__name__}: {exc}",
        error="transport_error",
    )


# -- calls -----------------------------------------------------------------------------


class JobOptions(TypedDict, total=False):
    """Optional fields of a new job (the `JobCreate` schema) and its trace header."""

    priority: int
    max_attempts: int
    run_after: datetime | str
    timeout_seconds: int
    idempotency_key: str
    callback_url: str
    # Sent as the `traceparent` header (W3C Trace Context), not in the body.
    traceparent: str


class NewJob(JobOptions):
    """A new job: the required fields of `JobCreate` plus `JobOptions`.

    `owner_service` may be left out when the client was given one.
    """

    owner_service: NotRequired[str]
    owner_ref: Required[str]
    task_type: Required[str]
    model_profile: Required[str]
    input: Required[dict[str, Any]]


class JobFilters(TypedDict, total=False):
    """Filters of the job list (the query parameters of `GET /api/v1/jobs`)."""

    status: str | Sequence[str]
    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    worker_id: str
    error_category: str
    created_after: datetime | str
    created_before: datetime | str
    include: str | Sequence[str]
    limit: int


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _job_id(job_id: str | Any) -> str:
    return quote(str(job_id), safe="")


def job_body(job: Mapping[str, Any], owner_service: str | None) -> dict[str, Any]:
    """The JSON body of a new job (without `traceparent`, which is a header)."""
    body = {k: _json_value(v) for k, v in job.items() if k != "traceparent" and v is not None}
    if "owner_service" not in body:
        if owner_service is None:
            raise TypeError("owner_service is required (pass it, or give the client one)")
        body["owner_service"] = owner_service
    return body


def _trace_headers(job: Mapping[str, Any]) -> dict[str, str]:
    traceparent = job.get("traceparent")
    return {"traceparent": traceparent} if traceparent else {}


def create(job: Mapping[str, Any], owner_service: str | None) -> Call[models.CreatedJob]:
    """`POST /jobs`: retried only with an idempotency key (a repeat returns the same job)."""
    keyed = bool(job.get("idempotency_key"))
    return Call(
        "POST",
        f"{API}/jobs",
        models.CreatedJob.from_json,
        Retry.IDEMPOTENT if keyed else Retry.UNSENT_ONLY,
        json=job_body(job, owner_service),
        headers=_trace_headers(job),
    )


def create_batch(
    jobs: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any] | None,
    traceparent: str | None = None,
) -> Call[models.Batch]:
    """`POST /jobs/batch`: retried only when every item has an idempotency key."""
    keyed = bool(jobs) and all(item.get("idempotency_key") for item in jobs)
    body = {
        "defaults": {k: _json_value(v) for k, v in (defaults or {}).items() if v is not None},
        "jobs": [{k: _json_value(v) for k, v in item.items() if v is not None} for item in jobs],
    }
    return Call(
        "POST",
        f"{API}/jobs/batch",
        models.Batch.from_json,
        Retry.IDEMPOTENT if keyed else Retry.UNSENT_ONLY,
        json=body,
        headers={"traceparent": traceparent} if traceparent else {},
    )


def get(job_id: str, wait_seconds: float | None = None) -> Call[models.Job]:
    """`GET /jobs/{id}`, optionally long-polling until the job is terminal."""
    params: list[tuple[str, str]] = []
    hold = 0.0
    if wait_seconds is not None:
        hold = min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        params.append(("wait_seconds", f"{hold:.1f}"))
    return Call(
        "GET",
        f"{API}/jobs/{_job_id(job_id)}",
        models.Job.from_json,
        Retry.IDEMPOTENT,
        params=params,
        hold=hold,
    )


def list_jobs(filters: Mapping[str, Any], cursor: str | None = None) -> Call[models.JobPage]:
    """`GET /jobs` with filters: one page."""
    params: list[tuple[str, str]] = []
    for name, value in filters.items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | datetime | int) else list(value)
        params.extend((name, str(_json_value(v))) for v in values)
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", f"{API}/jobs", models.JobPage.from_json, Retry.IDEMPOTENT, params=params)


def cancel(job_id: str) -> Call[models.Job]:
    """`POST /jobs/{id}/cancel`: retried (a repeat of a cancel that went through answers
    409 `invalid_transition`, changing nothing)."""
    return Call(
        "POST", f"{API}/jobs/{_job_id(job_id)}/cancel", models.Job.from_json, Retry.IDEMPOTENT
    )


def retry(job_id: str) -> Call[models.Job]:
    """`POST /jobs/{id}/retry`: not retried (a repeat could reset the new attempt's run)."""
    return Call(
        "POST", f"{API}/jobs/{_job_id(job_id)}/retry", models.Job.from_json, Retry.UNSENT_ONLY
    )


def stats() -> Call[models.Stats]:
    """`GET /stats`."""
    return Call("GET", f"{API}/stats", models.Stats.from_json, Retry.IDEMPOTENT)


def _claimed(data: Any) -> list[models.ClaimedJob]:
    items = data.get("jobs") if isinstance(data, dict) else None
    return [models.ClaimedJob.from_json(item) for item in items or []]


def claim(
    worker_id: str,
    *,
    task_types: Sequence[str] | None = None,
    model_profiles: Sequence[str] | None = None,
    limit: int = 1,
    lease_seconds: float | None = None,
    wait_seconds: float = 0.0,
) -> Call[list[models.ClaimedJob]]:
    """`POST /jobs/claim`: not retried (a lost answer leaves leases nobody holds until
    they expire); a worker's loop claims again anyway."""
    body: dict[str, Any] = {"worker_id": worker_id, "limit": limit, "wait_seconds": wait_seconds}
    if task_types is not None:
        body["task_types"] = list(task_types)
    if model_profiles is not None:
        body["model_profiles"] = list(model_profiles)
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    return Call(
        "POST",
        f"{API}/jobs/claim",
        _claimed,
        Retry.UNSENT_ONLY,
        json=body,
        hold=min(wait_seconds, MAX_WAIT_SECONDS),
    )


def heartbeat(
    job_id: str, lease_token: str, extend_seconds: float | None = None
) -> Call[models.Heartbeat]:
    """`POST /jobs/{id}/heartbeat`: retried (extending a lease twice is extending it)."""
    body: dict[str, Any] = {"lease_token": lease_token}
    if extend_seconds is not None:
        body["extend_seconds"] = extend_seconds
    return Call(
        "POST",
        f"{API}/jobs/{_job_id(job_id)}/heartbeat",
        models.Heartbeat.from_json,
        Retry.IDEMPOTENT,
        json=body,
    )


def release(job_id: str, lease_token: str) -> Call[models.Job]:
    """`POST /jobs/{id}/release`: retried (a repeat finds the lease gone: 409 `lease_lost`)."""
    return Call(
        "POST",
        f"{API}/jobs/{_job_id(job_id)}/release",
        models.Job.from_json,
        Retry.IDEMPOTENT,
        json={"lease_token": lease_token},
    )


def complete(
    job_id: str, result: Mapping[str, Any], lease_token: str | None = None
) -> Call[models.Completed]:
    """`POST /jobs/{id}/complete`: retried. With a lease token the service recognises a
    repeat and answers it as the first; without one (the mirror path, a pending job) a
    repeat of a completion that went through answers 409 `invalid_transition`."""
    body: dict[str, Any] = {"result": dict(result)}
    if lease_token is not None:
        body["lease_token"] = lease_token
    return Call(
        "POST",
        f"{API}/jobs/{_job_id(job_id)}/complete",
        models.Completed.from_json,
        Retry.IDEMPOTENT,
        json=body,
    )


def complete_many(
    completions: Sequence[tuple[str, str, Mapping[str, Any]]],
) -> Call[models.CompleteMany]:
    """`POST /jobs/complete` with (job id, lease token, result) triples: retried (a job an
    earlier attempt completed is listed as completed again, each fenced by its token)."""
    body = {
        "jobs": [
            {"id": job_id, "lease_token": token, "result": dict(result)}
            for job_id, token, result in completions
        ]
    }
    return Call(
        "POST", f"{API}/jobs/complete", models.CompleteMany.from_json, Retry.IDEMPOTENT, json=body
    )


def fail(
    job_id: str,
    *,
    category: str,
    message: str,
    lease_token: str | None = None,
    details: Mapping[str, Any] | None = None,
    retryable: bool | None = None,
    retry_after_seconds: float | None = None,
) -> Call[models.Job]:
    """`POST /jobs/{id}/fail`: retried with a lease token (a repeat finds the token gone:
    409 `lease_lost`, nothing counted twice); without one (a pending job) only when unsent,
    since a repeat would record the failure again."""
    body: dict[str, Any] = {"category": category, "message": message}
    if lease_token is not None:
        body["lease_token"] = lease_token
    if details is not None:
        body["details"] = dict(details)
    if retryable is not None:
        body["retryable"] = retryable
    if retry_after_seconds is not None:
        body["retry_after_seconds"] = retry_after_seconds
    return Call(
        "POST",
        f"{API}/jobs/{_job_id(job_id)}/fail",
        models.Job.from_json,
        Retry.IDEMPOTENT if lease_token is not None else Retry.UNSENT_ONLY,
        json=body,
    )


# -- wait and mirror mode --------------------------------------------------------------


def wait_seconds(deadline: float, now: float) -> float:
    """How long the next long poll of `wait` may hold (0 when the deadline passed)."""
    return min(max(deadline - now, 0.0), MAX_WAIT_SECONDS)


def wait_pause(asked: float, took: float, remaining: float) -> float:
    """A pause before polling again when a non-terminal answer came back early.

    A service that answers at once (no long poll, or a wait of 0) would otherwise
    be asked again in a tight loop.
    """
    if asked > 0 and took >= asked / 2:
        return 0.0
    return max(min(0.5, remaining), 0.0)


def wait_timeout(job: models.Job, timeout: float) -> errors.WaitTimeout:
    """The error of a `wait` that ran out (its last state attached)."""
    return errors.WaitTimeout(f"job {job.id} still {job.status} after {timeout:g} s", job)


def is_remote(config: Config, task_type: str) -> bool:
    """Whether `run` hands `task_type` to the remote workers (listed in
    AI_SERVICE_REMOTE_TASK_TYPES) instead of running it locally."""
    return task_type in config.remote_task_types


def mirror_job(job: NewJob, local_timeout: float) -> NewJob:
    """The job a local run mirrors: not runnable before `local_timeout` from now, so no
    remote worker claims it while the local code runs (and one does if the caller dies)."""
    mirrored: NewJob = {**job}
    mirrored["run_after"] = datetime.now(UTC) + timedelta(seconds=local_timeout)
    return mirrored


def finished_before(job: models.Job) -> bool:
    """Whether `run` met a job its idempotency key had already finished (its outcome is
    returned as is: the local function does not run again)."""
    return job.terminal and not (isinstance(job, models.CreatedJob) and job.created)


def mirrored_earlier(conflict: errors.IdempotencyConflict) -> Call[models.Job] | None:
    """The job an idempotency key names, to read when a mirrored create conflicts.

    A mirrored job's `run_after` differs on every call, so the service sees a
    repeat of `run` with the same key as another request (409); `same_request`
    then tells whether the job is this one.
    """
    job_id = conflict.details.get("job_id")
    return get(str(job_id)) if job_id else None


def same_request(job: models.Job, new: NewJob) -> bool:
    """Whether `job` was created for `new` (every field but `run_after` equal)."""
    return (
        job.task_type == new["task_type"]
        and job.owner_ref == new["owner_ref"]
        and job.model_profile == new["model_profile"]
        and job.input == new["input"]
    )


def local_result(value: Any) -> dict[str, Any]:
    """The local function's return value as a job result (a JSON object)."""
    if not isinstance(value, dict):
        raise TypeError(f"the local function must return a dict (a JSON object), not {value!r}")
    return value


def local_failure(job_id: str, exc: BaseException) -> Call[models.Job]:
    """The `fail` call recording a local exception on the mirrored (still pending) job."""
    text = f"{type(exc).__name__}: {exc}"
    return fail(
        job_id,
        category="local_error",
        message=text[:10_000],
        details={"exception": type(exc).__name__},
        retryable=False,
    )


def remote_result(job: models.Job) -> dict[str, Any]:
    """The result of a remote job that `wait` returned; JobFailed unless it completed."""
    if job.status != "completed":
        raise errors.JobFailed(job)
    return job.result or {}
