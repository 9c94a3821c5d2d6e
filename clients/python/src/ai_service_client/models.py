"""Typed answers of the API, one dataclass per response schema of its OpenAPI document.

Each class's fields are the properties of the schema it is named after (a test
of the service pins them: `JobOut` -> `Job`, `JobSummaryOut` -> `JobSummary`,
...). Decoding is forward compatible: fields a newer service adds are ignored,
and fields with a default may be missing. Ids are strings; timestamps are
timezone-aware `datetime`s.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any, Literal, Self, TypedDict

from ai_service_client import errors

JobStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


_DATETIME_FIELDS: dict[type[Any], frozenset[str]] = {}


def _datetime_fields(cls: type[Any]) -> frozenset[str]:
    found = _DATETIME_FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = frozenset(
            name
            for name, hint in hints.items()
            if hint is datetime or datetime in typing.get_args(hint)
        )
        _DATETIME_FIELDS[cls] = found
    return found


def _decode(cls: type[Any], data: Any, **nested: Any) -> Any:
    """An instance of the dataclass `cls` from a JSON object; `nested` replaces fields."""
    if not isinstance(data, dict):
        raise errors.AIServiceError(
            f"unexpected answer: expected a JSON object for {cls.__name__}",
            error="unexpected_answer",
        )
    values: dict[str, Any] = {}
    timestamps = _datetime_fields(cls)
    for field in dataclasses.fields(cls):
        if field.name in nested:
            values[field.name] = nested[field.name]
        elif field.name in data:
            value = data[field.name]
            if field.name in timestamps and isinstance(value, str):
                value = datetime.fromisoformat(value)
            values[field.name] = value
        elif field.default is dataclasses.MISSING:
            raise errors.AIServiceError(
                f"unexpected answer: {cls.__name__} without {field.name!r}",
                error="unexpected_answer",
            )
    return cls(**values)


def to_json(value: Any) -> Any:
    """`value` (a model, or lists and dicts of them) as plain JSON data (ISO timestamps)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """`JobOut`: the technical state and result of one job."""

    id: str
    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    status: str
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
    timeout_seconds: int | None
    worker_id: str | None
    lease_expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outage_since: datetime | None = None
    callback_url: str | None = None  # query values masked by the service
    traceparent: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the job is completed, failed or cancelled (nothing more will happen)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class CreatedJob(Job):
    """`CreatedJobOut`: a created job; `created` is False when the idempotency key matched."""

    created: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimedJob(Job):
    """`ClaimedJobOut`: a job claimed by a worker, with the lease token that fences it."""

    lease_token: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSummary:
    """`JobSummaryOut`: a job in a list; payloads only when the list's `include` names them."""

    id: str
    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    status: str
    priority: int
    error_category: str | None
    error_message: str | None
    error_count: int
    attempt: int
    max_attempts: int
    run_after: datetime
    timeout_seconds: int | None
    worker_id: str | None
    lease_expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    input: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error_details: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    outage_since: datetime | None = None
    callback_url: str | None = None
    traceparent: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobPage:
    """`JobListOut`: one page of the job list."""

    jobs: list[JobSummary]
    next_cursor: str | None
    truncated: bool

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        items = data.get("jobs") if isinstance(data, dict) else None
        jobs = [JobSummary.from_json(item) for item in items or []]
        decoded: Self = _decode(cls, data, jobs=jobs)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchItem:
    """`BatchItemOut`: one job of a batch."""

    id: str
    owner_service: str
    owner_ref: str
    status: str
    idempotency_key: str | None
    created: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Batch:
    """`BatchOut`: how many jobs a batch inserted, how many matched, and each job."""

    created: int
    existing: int
    jobs: list[BatchItem]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        items = data.get("jobs") if isinstance(data, dict) else None
        jobs = [_decode(BatchItem, item) for item in items or []]
        decoded: Self = _decode(cls, data, jobs=jobs)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completed:
    """`CompletedOut`: a completed job in short (read the result with `get`)."""

    id: str
    status: str
    finished_at: datetime

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompleteMany:
    """`CompleteManyOut`: which jobs are now completed, which tokens no longer held theirs."""

    completed: list[str]
    rejected: list[str]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """`HeartbeatOut`: the lease's new expiry."""

    id: str
    status: str
    lease_expires_at: datetime

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stats:
    """`StatsOut`: queue counters; the nested objects are kept as JSON (see the API docs)."""

    total: int
    by_status: dict[str, int]
    by_task_type: dict[str, dict[str, int]]
    by_model_profile: dict[str, dict[str, int]]
    by_owner: dict[str, dict[str, int]]
    profile_limits: dict[str, dict[str, int]]
    failed_by_category: dict[str, int]
    oldest_runnable_age_seconds: float | None
    oldest_pending_age_seconds: float | None
    scheduled: dict[str, Any]
    recent: dict[str, int]
    run_duration_24h: dict[str, dict[str, Any]]
    throughput_1h: list[dict[str, Any]]
    generated_at: datetime

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Decode an answer of the API."""
        decoded: Self = _decode(cls, data)
        return decoded


class JobSpec(TypedDict, total=False):
    """`JobPatch`: the fields of a batch item or of the batch's `defaults`.

    Item fields override the defaults; `input` objects merge shallowly. Timestamps
    may be given as `datetime`s (sent in ISO 8601).
    """

    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    input: dict[str, Any]
    priority: int
    max_attempts: int
    run_after: datetime | str
    timeout_seconds: int
    idempotency_key: str
    callback_url: str
