"""The job domain: statuses, error categories, the `Job` record and pure rules.

Transitions (each one is a single guarded SQL statement in `sql/queries.sql`):

    pending --claim--> running --complete--> completed
       |                 |  \\--fail (retryable, attempts left)--> pending (backoff)
       |                 |  \\--fail (permanent or attempts used)--> failed
       |                 |  \\--lease expired (rescuer)--> pending | failed(lease_expired)
       |--complete/fail (mirror path)--> completed | failed
       |--cancel--> cancelled        running --cancel--> cancelled
    failed|running --retry (manual)--> pending   (while fewer than MAX_ATTEMPTS are used)
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson


class JobStatus(enum.StrEnum):
    """Lifecycle state of a job."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# Statuses from which each action is allowed (mirrors the guards in queries.sql).
ALLOWED_FROM: dict[str, frozenset[JobStatus]] = {
    "claim": frozenset({JobStatus.PENDING}),
    "complete": frozenset({JobStatus.PENDING, JobStatus.RUNNING}),
    "fail": frozenset({JobStatus.PENDING, JobStatus.RUNNING}),
    "heartbeat": frozenset({JobStatus.RUNNING}),
    "cancel": frozenset({JobStatus.PENDING, JobStatus.RUNNING}),
    "retry": frozenset({JobStatus.FAILED, JobStatus.RUNNING}),
}

# Statuses a bulk action takes when its filter names none. Bulk retry takes failed jobs
# only: a running attempt is healthy work in progress (retrying it throws that away), so
# a caller must ask for it by naming `running`.
BULK_DEFAULT_STATUSES: dict[str, tuple[JobStatus, ...]] = {
    "retry": (JobStatus.FAILED,),
    "cancel": (JobStatus.PENDING, JobStatus.RUNNING),
}


class ErrorCategory(enum.StrEnum):
    """Why a job attempt failed."""

    INVALID_INPUT = "invalid_input"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_AUTH = "provider_auth"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


# Categories that are retried automatically when attempts are left.
TRANSIENT_CATEGORIES = frozenset(
    {ErrorCategory.PROVIDER_UNAVAILABLE, ErrorCategory.RATE_LIMITED, ErrorCategory.TIMEOUT}
)


# Categories of a provider outage: such a failure returns the job to pending without
# spending an attempt (job_defer), within the PROVIDER_OUTAGE_MAX budget.
OUTAGE_CATEGORIES = frozenset({ErrorCategory.PROVIDER_UNAVAILABLE, ErrorCategory.RATE_LIMITED})
# The longest wait between two deferrals of one job (seconds), RETRY_BACKOFF_MAX if lower:
# an outage ends without notice, and a deferred job should follow soon after.
OUTAGE_BACKOFF_CAP = 60.0


def is_retryable(category: str, retryable: bool | None) -> bool:
    """Whether a failure should return the job to `pending` (attempts permitting).

    An explicit `retryable` flag wins; otherwise transient categories retry.
    """
    if retryable is not None:
        return retryable
    return category in TRANSIENT_CATEGORIES


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the `jobs` table."""

    id: UUID
    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    status: JobStatus
    priority: int
    input: dict[str, Any]
    result: dict[str, Any] | None
    error_category: str | None
    error_message: str | None
    error_details: dict[str, Any] | None
    errors: list[dict[str, Any]]
    error_count: int
    attempt: int
    max_attempts: int
    run_after: datetime
    worker_id: str | None
    lease_token: UUID | None  # of the running attempt, or of the last one once finished
    lease_expires_at: datetime | None
    lease_seconds: float | None  # the lease length the last claim asked for
    timeout_seconds: int | None  # deadline of one attempt, from its start (None: handler's)
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # When the job first met a provider outage since it last completed (job_defer).
    outage_since: datetime | None = None
    # Where its terminal event is POSTed (webhooks), and the W3C trace it belongs to.
    callback_url: str | None = None
    traceparent: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build a job from a database row (a dict of column values)."""
        values = {name: row[name] for name in JOB_COLUMNS}
        values["status"] = JobStatus(values["status"])
        return cls(**values)


JOB_COLUMNS = tuple(f.name for f in fields(Job))

# The big columns: a job list leaves them out unless the caller asks for them.
PAYLOAD_COLUMNS = ("input", "result", "errors", "error_details")

DEFAULT_MAX_ATTEMPTS = 3
# The most attempts a caller may give a job, and the most a manual retry may grow it to.
MAX_ATTEMPTS = 100
# Entries kept in a job's `errors` history (the newest); `error_count` counts them all.
ERRORS_KEPT = 20


def retry_allowed(attempt: int, max_attempts: int) -> bool:
    """Whether a manual retry can leave the job an attempt to run.

    A retry grows `max_attempts` to `attempt + 1` when no attempt is left, but never
    past `MAX_ATTEMPTS` (rows from before that rule may hold more: those keep theirs).
    The same condition guards `job_retry` and `job_retry_by_filter` in queries.sql.
    """
    return attempt < max(max_attempts, MAX_ATTEMPTS)


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a caller supplies to create a job."""

    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    input: dict[str, Any]
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    run_after: datetime | None = None
    idempotency_key: str | None = None
    timeout_seconds: int | None = None
    callback_url: str | None = None
    # From the request's `traceparent` header: not part of what the request asks for.
    traceparent: str | None = None

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the job this request asks for, to detect a reused idempotency key.

        Every field counts, after defaults and batch merging, so the same request sent
        again matches and any difference (another input, priority, ...) does not. The
        `traceparent` does not: a retry of the request in a new trace is the same request. Object
        keys are sorted: JSON objects with the same members are the same request.
        """
        request = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "traceparent"}
        for name in ("timeout_seconds", "callback_url"):
            if request[name] is None:
                # Fields added later count only when set: stored fingerprints stay valid.
                del request[name]
        if self.run_after is not None:
            request["run_after"] = self.run_after.isoformat()
        try:
            encoded = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            # orjson refuses integers beyond 64 bits; the standard library takes them.
            encoded = json.dumps(
                request, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Selection of jobs shared by list, bulk retry and bulk cancel.

    Fields combine with AND; an empty one selects everything. `error_category`
    matches failed jobs only (a running or pending job still carries the category
    of its previous attempt). The predicate is written once, in the `job_statuses`
    and `job_filter` fragments of queries.sql; the API reads it from
    `schemas.FilterFields`, for the list and the bulk actions alike.
    """

    statuses: tuple[JobStatus, ...] = ()
    owner_service: str | None = None
    owner_ref: str | None = None
    task_type: str | None = None
    model_profile: str | None = None
    worker_id: str | None = None
    error_category: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @property
    def is_empty(self) -> bool:
        """True when nothing narrows the selection."""
        return not any(getattr(self, f.name) for f in fields(self))


_last_id = 0


def new_job_id() -> UUID:
    """A UUIDv7: time-ordered, so new rows land at the right edge of the primary key index.

    The 12 bits after the millisecond hold its fraction (RFC 9562, method 3), and ids
    from one process strictly increase, so creation order is id order: lists page by
    id, and jobs created in one batch are claimed in the order given.
    """
    [job_id] = new_job_ids(1)
    return job_id


def new_job_ids(n: int) -> list[UUID]:
    """`n` ids as `new_job_id` makes them, in increasing order, for one batch of jobs.

    One clock reading and one read of random bytes for the batch.
    """
    global _last_id
    ns = time.time_ns()
    millis, fraction = divmod(ns, 1_000_000)
    stamp = (millis & ((1 << 48) - 1)) << 80
    stamp |= 0x7 << 76  # version 7
    stamp |= (fraction * 4096 // 1_000_000) << 64
    stamp |= 0x2 << 62  # RFC 4122 variant
    random = os.urandom(8 * n)
    ids = []
    last = _last_id
    for i in range(n):
        value = stamp | (int.from_bytes(random[8 * i : 8 * i + 8], "big") & ((1 << 62) - 1))
        if value <= last:
            value = last + 1
        last = value
        ids.append(UUID(int=value))
    _last_id = last
    return ids


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, jittered.

    `jitter` in [0, 1) picks a point in the upper half of the window. The rule itself
    is the `retry_backoff` fragment of queries.sql (used by `job_fail` and
    `job_rescue_expired`, with `random()` as the jitter): the database decides every
    backoff. This is its mirror for Python code that needs the figure without a
    statement; tests/integration/test_sql.py keeps the two equal.
    """
    return float(min(cap, base * 2.0 ** max(attempt - 1, 0)) * (0.5 + jitter * 0.5))


def outage_backoff_seconds(outage_seconds: float, base: float, cap: float, jitter: float) -> float:
    """Delay before a deferred job runs again, `outage_seconds` into its outage.

    The time since the outage began, at least `base`, at most `cap`, jittered like
    `backoff_seconds`. The rule itself is the `outage_backoff` fragment of queries.sql
    (used by `job_defer`); tests/integration/test_sql.py keeps the two equal.
    """
    return float(min(cap, max(base, outage_seconds)) * (0.5 + jitter * 0.5))
