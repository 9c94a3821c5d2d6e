"""Request and response models of the HTTP API (they make /openapi.json complete)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from ai_service.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    ERRORS_KEPT,
    MAX_ATTEMPTS,
    PAYLOAD_COLUMNS,
    Job,
    JobFilter,
    JobStatus,
)
from ai_service.redact import redact_url
from ai_service.webhooks.destinations import MAX_URL_LENGTH
from ai_service.webhooks.sign import webhook_id

# Non-empty, at least one visible character, no NUL (PostgreSQL text cannot hold it).
_TEXT = r"^[^\x00]*[^\s\x00][^\x00]*$"
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_TEXT)]
RefText = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_TEXT)]
KeyText = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_TEXT)]
WorkerId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_TEXT)]
Category = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[a-z0-9_.-]+$")
]


def _not_bool(value: Any) -> Any:
    # Lax validation would read true/false as 1/0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _text_only(value: Any) -> Any:
    # Lax validation would read a number (or a numeric query string) as a Unix timestamp.
    numeric = isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    if numeric or not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date-time string with a timezone")
    return value


Number = BeforeValidator(_not_bool)
Priority = Annotated[int, Number, Field(ge=-1000, le=1000, description="Higher runs first.")]
MaxAttempts = Annotated[int, Number, Field(ge=1, le=MAX_ATTEMPTS)]
LeaseSeconds = Annotated[float, Number, Field(ge=1, le=86400)]
Limit = Annotated[int, Number, Field(ge=1, le=100)]
WaitSeconds = Annotated[
    float, Number, Field(ge=0, le=30, description="Long poll: wait up to this long for a job.")
]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]
Message = Annotated[str, StringConstraints(max_length=10_000, pattern=r"^[^\x00]*$")]

MAX_JSON_DEPTH = 64
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _check_json(value: Any, depth: int = 0) -> None:
    """Reject what PostgreSQL's jsonb or the response encoder cannot hold faithfully."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain NUL (\\u0000) characters")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


def _stored_time(value: datetime) -> datetime:
    try:
        in_range = _EARLIEST <= value.astimezone(UTC) < _LATEST
    except (OverflowError, ValueError):
        in_range = False
    if not in_range:
        raise ValueError("must be between 1970-01-01 and 9000-01-01 (UTC)")
    # Stored in UTC: PostgreSQL refuses offsets beyond +-15:59 that RFC 3339 allows.
    return value.astimezone(UTC)


JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_json_object),
    Field(
        description="A JSON object: strings without NUL characters or lone surrogates, "
        f"finite numbers, at most {MAX_JSON_DEPTH} levels deep."
    ),
]
RunAfter = Annotated[Timestamp, AfterValidator(_stored_time)]
TimeoutSeconds = Annotated[int, Number, Field(ge=1, le=604800)]
CallbackUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_URL_LENGTH),
    Field(
        description="Where to POST the job's terminal event (completed, failed, cancelled), "
        "signed per Standard Webhooks; default: the owner_service's URL in WEBHOOK_URLS. "
        "http(s) only, no user:password@, no internal destination unless WEBHOOK_URL_ALLOW "
        "lists it. See README, Webhooks."
    ),
]
_CALLBACK_OUT = "The callback URL (query values masked), or null when the job has none."
_TRACEPARENT_OUT = "The W3C `traceparent` the job was created with (its webhook carries it)."


if TYPE_CHECKING:
    from ai_service.store import AudioBlob, Delivery, WorkerRow


class _Strict(BaseModel):
    # No unknown fields: a typo fails loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid")


class JobCreate(_Strict):
    """A new job."""

    owner_service: ShortText = Field(description="Calling service, e.g. `telephony`.")
    owner_ref: RefText = Field(description="Caller's stable object reference.")
    task_type: ShortText = Field(description="Technical task class, e.g. `llm_chat`.")
    model_profile: ShortText = Field(description="Runtime profile, e.g. `qwen2.5-14b`.")
    input: JsonObject = Field(description="JSON object owned by the caller and worker.")
    priority: Priority = 0
    max_attempts: MaxAttempts = DEFAULT_MAX_ATTEMPTS
    run_after: RunAfter | None = Field(
        default=None, description="Do not run before this time (with timezone)."
    )
    timeout_seconds: TimeoutSeconds | None = Field(
        default=None,
        description="Deadline of one attempt, from its claim; default: the handler's. "
        "An attempt past it is ended and recorded as a (retryable) `timeout`.",
    )
    idempotency_key: KeyText | None = Field(
        default=None,
        description="Unique per owner_service; the same request again returns the existing "
        "job, another request with the key is refused (409 idempotency_conflict).",
    )
    callback_url: CallbackUrl | None = None


class JobPatch(_Strict):
    """Job fields for batch defaults and items; every field optional."""

    owner_service: ShortText | None = None
    owner_ref: RefText | None = None
    task_type: ShortText | None = None
    model_profile: ShortText | None = None
    input: JsonObject | None = None
    priority: Priority | None = None
    max_attempts: MaxAttempts | None = None
    run_after: RunAfter | None = None
    timeout_seconds: TimeoutSeconds | None = None
    idempotency_key: KeyText | None = None
    callback_url: CallbackUrl | None = None


class JobBatchCreate(_Strict):
    """Many jobs sharing defaults. Item fields override defaults; `input` objects merge
    shallowly (item keys win)."""

    defaults: JobPatch = Field(default_factory=JobPatch)
    jobs: list[JobPatch] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _no_shared_idempotency_key(self) -> JobBatchCreate:
        # A shared key would turn the whole batch into one job.
        if self.defaults.idempotency_key is not None:
            raise ValueError("defaults.idempotency_key: give each job its own key")
        return self


_ERRORS_DESCRIPTION = (
    f"The newest {ERRORS_KEPT} failed attempts, oldest first (`error_count` counts all)."
)
_ERROR_COUNT_DESCRIPTION = "Failed attempts recorded, including those no longer in `errors`."


class JobOut(BaseModel):
    """The technical state of a job (the lease token is only shown to its claimer)."""

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
    errors: list[dict[str, Any]] = Field(description=_ERRORS_DESCRIPTION)
    error_count: int = Field(description=_ERROR_COUNT_DESCRIPTION)
    attempt: int
    max_attempts: int
    run_after: datetime
    timeout_seconds: int | None = Field(description="Deadline of one attempt, if the job set one.")
    worker_id: str | None
    lease_expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outage_since: datetime | None = Field(
        default=None,
        description="When the job first met a provider outage since it last completed "
        "(outages cost no attempt until PROVIDER_OUTAGE_MAX after it); null otherwise.",
    )
    callback_url: str | None = Field(default=None, description=_CALLBACK_OUT)
    traceparent: str | None = Field(default=None, description=_TRACEPARENT_OUT)

    @classmethod
    def of(cls, job: Job) -> Self:
        values = {name: getattr(job, name) for name in cls.model_fields}
        _mask_callback(values)
        return cls.model_construct(**values)  # type: ignore[return-value]


def _mask_callback(values: dict[str, Any]) -> None:
    # A callback URL's query may hold the receiver's token: shown masked, like every
    # caller-supplied URL (redact.redact_url).
    if values.get("callback_url") is not None:
        values["callback_url"] = redact_url(values["callback_url"])


class CreatedJobOut(JobOut):
    created: bool = Field(description="False when an existing job matched the idempotency key.")


class ClaimedJobOut(JobOut):
    lease_token: UUID = Field(description="Present with complete, fail and heartbeat.")


class BatchItemOut(BaseModel):
    id: UUID
    owner_service: str
    owner_ref: str
    status: JobStatus
    idempotency_key: str | None
    created: bool


class BatchOut(BaseModel):
    created: int = Field(description="How many jobs were inserted.")
    existing: int = Field(description="How many items matched an existing idempotency key.")
    jobs: list[BatchItemOut]


class AudioOut(BaseModel):
    """A stored recording (`POST /api/v1/audio`): name it in a job's `input.audio_id`."""

    audio_id: UUID
    owner_service: str
    content_type: str
    bytes: int = Field(description="Size of the stored file.")
    sha256: str = Field(description="SHA-256 of the stored file (hex).")
    created_at: datetime

    @classmethod
    def of(cls, blob: AudioBlob) -> AudioOut:
        return cls(
            audio_id=blob.id,
            owner_service=blob.owner_service,
            content_type=blob.content_type,
            bytes=blob.size,
            sha256=blob.sha256,
            created_at=blob.created_at,
        )


class JobSummaryOut(BaseModel):
    """A job in a list: the technical state; `input`, `result`, `errors` and
    `error_details` only when the list's `include` names them."""

    id: UUID
    owner_service: str
    owner_ref: str
    task_type: str
    model_profile: str
    status: JobStatus
    priority: int
    input: dict[str, Any] | None = Field(default=None, description="With `include=input`.")
    result: dict[str, Any] | None = Field(default=None, description="With `include=result`.")
    error_category: str | None
    error_message: str | None
    error_details: dict[str, Any] | None = Field(
        default=None, description="With `include=error_details`."
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description=f"With `include=errors`. {_ERRORS_DESCRIPTION}"
    )
    error_count: int = Field(description=_ERROR_COUNT_DESCRIPTION)
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
    outage_since: datetime | None = Field(
        default=None,
        description="When the job first met a provider outage since it last completed "
        "(outages cost no attempt until PROVIDER_OUTAGE_MAX after it); null otherwise.",
    )
    callback_url: str | None = Field(default=None, description=_CALLBACK_OUT)
    traceparent: str | None = Field(default=None, description=_TRACEPARENT_OUT)

    @classmethod
    def of(cls, job: Job, include: frozenset[str]) -> Self:
        """The summary of `job` with the payload columns in `include` (unset otherwise,
        so that the answer leaves them out rather than showing null)."""
        values = {
            name: getattr(job, name)
            for name in cls.model_fields
            if name not in PAYLOAD_COLUMNS or name in include
        }
        _mask_callback(values)
        return cls.model_construct(**values)  # type: ignore[return-value]


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
    truncated: bool = Field(
        description="True when the page holds fewer than `limit` jobs because the "
        "included payloads reached the size cap; `next_cursor` continues after it."
    )


class ClaimRequest(_Strict):
    worker_id: WorkerId
    task_types: list[ShortText] | None = Field(
        default=None, min_length=1, max_length=100, description="Omit for any task type."
    )
    model_profiles: list[ShortText] | None = Field(
        default=None, min_length=1, max_length=100, description="Omit for any model profile."
    )
    limit: Limit = 1
    lease_seconds: LeaseSeconds | None = Field(
        default=None, description="Lease length; default WORKER_LEASE_TIMEOUT."
    )
    wait_seconds: WaitSeconds = 0


class ClaimOut(BaseModel):
    jobs: list[ClaimedJobOut]


class CompleteRequest(_Strict):
    result: JsonObject
    lease_token: UUID | None = Field(
        default=None, description="Required for running jobs; omit to complete a pending job."
    )


class CompletionItem(_Strict):
    id: UUID
    lease_token: UUID
    result: JsonObject


class CompleteManyRequest(_Strict):
    """Results of many running jobs at once (external workers), each fenced by its token."""

    jobs: list[CompletionItem] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _unique_ids(self) -> CompleteManyRequest:
        seen: set[UUID] = set()
        for index, item in enumerate(self.jobs):
            if item.id in seen:
                raise ValueError(f"jobs[{index}].id repeats an earlier item")
            seen.add(item.id)
        return self


class CompleteManyOut(BaseModel):
    completed: list[UUID] = Field(description="Jobs now completed.")
    rejected: list[UUID] = Field(
        description="Jobs whose lease token no longer held them (rescued, retried, "
        "cancelled, unknown): nothing changed for them."
    )


class CompletedOut(BaseModel):
    """A completed job, in short: read the result back with `GET /api/v1/jobs/{id}`."""

    id: UUID
    status: JobStatus = Field(description="Always `completed`.")
    finished_at: datetime

    @classmethod
    def of(cls, job_id: UUID, finished_at: datetime) -> Self:
        values: dict[str, Any] = {
            "id": job_id,
            "status": JobStatus.COMPLETED,
            "finished_at": finished_at,
        }
        return cls.model_construct(**values)  # type: ignore[return-value]


class FailRequest(_Strict):
    category: Category
    message: Message
    details: JsonObject | None = None
    lease_token: UUID | None = None
    retryable: StrictBool | None = Field(
        default=None,
        description="Retry when attempts are left; default: only transient categories "
        "(provider_unavailable, rate_limited, timeout).",
    )
    retry_after_seconds: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="For provider_unavailable and rate_limited: when to run the job again "
        "(the provider's Retry-After); default: the outage backoff.",
    )


class HeartbeatRequest(_Strict):
    lease_token: UUID
    extend_seconds: LeaseSeconds | None = Field(
        default=None,
        description="New lease length from now; default: the lease length of the claim.",
    )


class ReleaseRequest(_Strict):
    lease_token: UUID


class HeartbeatOut(BaseModel):
    id: UUID
    status: JobStatus
    lease_expires_at: datetime


class FilterFields(_Strict):
    """The job filter: query parameters of the list, body of bulk retry and cancel.

    Fields combine with AND. `error_category` matches failed jobs only (a running or
    pending job still carries the category of its previous attempt).
    """

    status: list[JobStatus] | None = Field(
        default=None,
        max_length=len(JobStatus),
        description="Any of these statuses. Bulk retry: failed (default) and running; "
        "bulk cancel: pending and running (default both).",
    )
    owner_service: ShortText | None = None
    owner_ref: RefText | None = None
    task_type: ShortText | None = None
    model_profile: ShortText | None = None
    worker_id: WorkerId | None = None
    error_category: Category | None = Field(
        default=None, description="The category of a failed job (matches failed jobs only)."
    )
    created_after: Timestamp | None = Field(default=None, description="Inclusive.")
    created_before: Timestamp | None = Field(default=None, description="Exclusive.")

    def to_filter(self) -> JobFilter:
        """The domain filter (`status` becomes `statuses`; the other fields keep their names)."""
        values = self.model_dump(include=set(FilterFields.model_fields) - {"status"})
        return JobFilter(statuses=tuple(self.status or ()), **values)


# The included payloads of one list page stop at this many bytes (at least one job).
LIST_PAYLOAD_MAX_BYTES = 8 * 1024 * 1024
_INCLUDE_DESCRIPTION = (
    "Payload fields to add to each job: any of "
    + ", ".join(f"`{c}`" for c in PAYLOAD_COLUMNS)
    + ", comma-separated or repeated. Without it the jobs carry the technical summary only. "
    f"A page stops early once its payloads reach {LIST_PAYLOAD_MAX_BYTES // 1024 // 1024} MiB "
    "(`truncated: true`; continue with `next_cursor`)."
)


class ListQuery(FilterFields):
    """The query parameters of the job list: the filter, the page, the payloads."""

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: str | None = Field(
        default=None, min_length=1, max_length=200, description="`next_cursor` of a page."
    )
    include: list[str] | None = Field(
        default=None, max_length=len(PAYLOAD_COLUMNS), description=_INCLUDE_DESCRIPTION
    )


class BulkRequest(FilterFields):
    all: StrictBool = Field(
        default=False, description="Required to act on every job (empty filter)."
    )


class BulkOut(BaseModel):
    """What a bulk action changed: every job counted, the first ids listed."""

    count: int = Field(description="How many jobs changed.")
    ids: list[UUID] = Field(
        description="The first 100 of them, oldest first (a sample when `ids_truncated`)."
    )
    ids_truncated: bool = Field(description="True when more jobs changed than `ids` lists.")


class StatusCounts(BaseModel):
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class RecentCounts(BaseModel):
    """Jobs that finished (became completed or failed) in the last hour / day.

    Windows are whole UTC minutes: the current one and the 59 (1,439) before it.
    """

    completed_1h: int
    failed_1h: int
    completed_24h: int
    failed_24h: int


class RunDuration(BaseModel):
    completed_24h: int
    p50_seconds: float | None = Field(
        description="Estimated from duration buckets (interpolated inside the bucket)."
    )
    p95_seconds: float | None = Field(
        description="Estimated from duration buckets (interpolated inside the bucket)."
    )


class ScheduledJobs(BaseModel):
    """Pending jobs that may not run yet: scheduled for later, or backing off after a failure."""

    count: int = Field(description="How many, counted up to 10,000 (see `capped`).")
    capped: bool = Field(description="True when there are more than `count` (10,000).")
    next_run_after: datetime | None = Field(description="The earliest of their `run_after`.")


class ThroughputPoint(BaseModel):
    minute: datetime = Field(description="Start of the UTC minute.")
    completed: int
    failed: int


class ProfileLimitOut(BaseModel):
    limit: int = Field(description="`MODEL_PROFILE_LIMITS`: most running at once, cluster-wide.")
    running: int = Field(description="Running now (exact counters).")


class StatsOut(BaseModel):
    total: int
    by_status: StatusCounts
    by_task_type: dict[str, StatusCounts]
    by_model_profile: dict[str, StatusCounts]
    by_owner: dict[str, StatusCounts] = Field(
        description="Exact counts by `owner_service` (every owner with jobs in the table)."
    )
    profile_limits: dict[str, ProfileLimitOut] = Field(
        description="Each profile of `MODEL_PROFILE_LIMITS`: its limit and the jobs running."
    )
    failed_by_category: dict[str, int]
    oldest_runnable_age_seconds: float | None = Field(
        description="How long the longest-waiting runnable pending job has been runnable "
        "(now - run_after, database clock); null when none is runnable. Jobs scheduled for "
        "later are not waiting: see `scheduled`."
    )
    oldest_pending_age_seconds: float | None = Field(
        description="The same as `oldest_runnable_age_seconds` (the name of earlier versions)."
    )
    scheduled: ScheduledJobs
    recent: RecentCounts
    run_duration_24h: dict[str, RunDuration] = Field(description="Completed jobs, by task type.")
    throughput_1h: list[ThroughputPoint] = Field(
        description="Jobs finished per minute, the last 60 UTC minutes, oldest first."
    )
    generated_at: datetime = Field(description="The database clock when the stats were read.")


# -- the transcription A/B report -------------------------------------------------

REPORT_MAX_DAYS = 31


class TranscriptionReportQuery(_Strict):
    """The query of `GET /api/v1/reports/transcription`."""

    since: Timestamp | None = Field(
        default=None,
        description="Start of the window (inclusive), ISO 8601 with a timezone; default: "
        "24 h before `until`.",
    )
    until: Timestamp | None = Field(
        default=None,
        description="End of the window (exclusive), ISO 8601 with a timezone; default: now. "
        f"At most {REPORT_MAX_DAYS} days after `since`.",
    )
    owner_service: ShortText | None = Field(
        default=None, description="Only this caller's jobs (a submitter: its own, by default)."
    )
    limit: Limit = Field(default=20, description="How many disagreeing jobs to list.")


class TranscriptionProviderOut(BaseModel):
    """One provider and model over the window."""

    provider: str
    model: str
    attempts: int = Field(description="Attempts made: ok and error (a skipped provider made none).")
    ok: int
    errors: int
    skipped: int = Field(description="Times the provider was skipped (not configured, fallback).")
    success_rate: float | None = Field(description="ok / attempts; null without attempts.")
    duration_p50_ms: float | None = Field(
        description="Median duration of the ok attempts, estimated from duration buckets "
        "(bounds 100 ms x 1.25^k: within a quarter of the value)."
    )
    duration_p95_ms: float | None = Field(description="95th percentile, as the median.")
    real_time_factor: float | None = Field(
        description="Total duration of the ok attempts over the seconds of audio they "
        "transcribed (a duration-weighted mean; below 1 is faster than real time)."
    )
    wer_mean: float | None = Field(
        description="Mean word error rate of this provider's texts against their job's "
        "reference (the first provider that succeeded); null when never compared."
    )
    wer_jobs: int = Field(description="How many jobs `wer_mean` averages over.")
    reference_jobs: int = Field(description="How many jobs took this provider as reference.")


class DisagreementAttemptOut(BaseModel):
    """One provider's attempt in a disagreeing job."""

    provider: str
    model: str
    status: str = Field(description="ok, error or skipped.")
    reference: bool = Field(description="The job's reference (selected) attempt.")
    wer: float | None = Field(description="Against the reference; null for it and failures.")


class DisagreementOut(BaseModel):
    """A job whose providers disagree, with every provider's WER."""

    job_id: UUID
    owner_service: str
    owner_ref: str
    finished_at: datetime
    reference_provider: str | None
    max_wer: float = Field(description="The largest WER of the job's attempts.")
    providers: list[DisagreementAttemptOut] = Field(description="In the job's provider order.")


class TranscriptionReportOut(BaseModel):
    """The transcription A/B report over [since, until)."""

    since: datetime
    until: datetime
    owner_service: str | None
    reference_provider: str | None = Field(
        description="The provider that was the jobs' reference most often in the window."
    )
    providers: list[TranscriptionProviderOut] = Field(description="By provider, then model.")
    disagreements: list[DisagreementOut] = Field(
        description="The jobs where providers disagree most: highest WER first."
    )


class AlignmentRunOut(BaseModel):
    """A run of one kind of word alignment step (normalised words)."""

    op: Literal["equal", "substitute", "delete", "insert"]
    ref: list[str] = Field(description="Reference words (empty for an insertion).")
    hyp: list[str] = Field(description="This provider's words (empty for a deletion).")


class ComparedAttemptOut(BaseModel):
    """One provider's attempt with its text and the alignment against the reference."""

    provider: str
    model: str | None
    status: str
    selected: bool = Field(description="The reference: the attempt the result comes from.")
    duration_ms: float | None
    text: str | None
    wer: float | None = Field(description="Against the reference's text; null for it.")
    alignment: list[AlignmentRunOut] | None = Field(
        description="The words against the reference's, for a diff view; null for the "
        "reference, failed attempts and texts of more than 10,000 words."
    )


class TranscriptionComparisonOut(BaseModel):
    """A completed transcription job's texts side by side."""

    job_id: UUID
    owner_service: str
    owner_ref: str
    finished_at: datetime | None
    reference_provider: str | None
    attempts: list[ComparedAttemptOut] = Field(description="In the job's provider order.")


class HealthOut(BaseModel):
    status: str


# -- the worker registry (`GET /api/v1/workers`) --------------------------------------


class WorkerSlotsOut(BaseModel):
    """A handler's slots on one worker."""

    slots: int = Field(default=0, description="Slots configured for the handler.")
    limit: int = Field(default=0, description="Current limit (adaptive or fixed).")
    in_use: int = Field(default=0, description="Jobs holding a slot now.")


class WorkerHandlerOut(BaseModel):
    """One handler of a worker (enabled or not) and the jobs it takes."""

    name: str
    task_types: list[str] = Field(default_factory=list)
    model_profiles: list[str] | None = Field(default=None, description="null: any model profile.")
    enabled: bool = True
    disabled_reason: str | None = None
    slots: WorkerSlotsOut = Field(default_factory=WorkerSlotsOut)


class WorkerBreakerOut(BaseModel):
    """The circuit breaker of one provider endpoint, as the worker saw it last."""

    provider: str = Field(description="Endpoint name: `llm`, `whisperx#2`, `qwen2-audio`, ...")
    url: str = Field(description="The endpoint's URL with credentials removed.")
    state: str = Field(description="`closed`, `open` or `half_open`.")
    since: datetime | None = Field(default=None, description="When it entered that state.")
    last_error: str | None = Field(default=None, description="The last failure, cleaned.")
    consecutive_failures: int = 0


class WorkerCountersOut(BaseModel):
    """Attempts this worker finished since it started."""

    processed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    discarded: int = 0
    deferred: int = 0


class _WorkerSnapshot(BaseModel):
    """The `status` a worker stores in its row (`worker.presence.snapshot`), read leniently:
    a row written by another release lacks fields or has more."""

    model_config = ConfigDict(extra="ignore")

    stopping: bool = False
    concurrency: int = 0
    in_flight: int = 0
    handlers: list[WorkerHandlerOut] = Field(default_factory=list)
    breakers: list[WorkerBreakerOut] = Field(default_factory=list)
    counters: WorkerCountersOut = Field(default_factory=WorkerCountersOut)
    last_claim_at: datetime | None = None


class WorkerOut(BaseModel):
    """One worker of the registry."""

    worker_id: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime = Field(description="Its last write (database clock).")
    seconds_since_seen: float
    alive: bool = Field(
        description="Seen within `within` seconds and not stopped; false for `stopped` and "
        "`unresponsive` workers (kept until retention deletes them, an hour after last seen)."
    )
    state: Literal["running", "stopping", "stopped", "unresponsive"] = Field(
        description="`stopping`: shutting down, finishing its jobs; `stopped`: stopped "
        "gracefully; `unresponsive`: not seen within `within` seconds (killed, crashed, "
        "cut off from the database)."
    )
    stopped_at: datetime | None
    concurrency: int = Field(description="Slots in all: jobs it may hold at once.")
    in_flight: int = Field(description="Jobs it held at its last write.")
    slots_in_use: int = Field(description="Slots in use at its last write, all handlers.")
    handlers: list[WorkerHandlerOut]
    breakers: list[WorkerBreakerOut]
    counters: WorkerCountersOut
    last_claim_at: datetime | None

    @classmethod
    def of(cls, row: WorkerRow) -> WorkerOut:
        try:
            snap = _WorkerSnapshot.model_validate(row.status)
        except ValidationError:
            snap = _WorkerSnapshot()  # unreadable: the row still shows who and when
        if row.stopped_at is not None:
            state: Literal["running", "stopping", "stopped", "unresponsive"] = "stopped"
        elif not row.alive:
            state = "unresponsive"
        else:
            state = "stopping" if snap.stopping else "running"
        return cls(
            worker_id=row.worker_id,
            hostname=row.hostname,
            pid=row.pid,
            version=row.version,
            started_at=row.started_at,
            last_seen=row.last_seen,
            seconds_since_seen=round(max(row.seconds_since_seen, 0.0), 3),
            alive=row.alive,
            state=state,
            stopped_at=row.stopped_at,
            concurrency=snap.concurrency,
            in_flight=snap.in_flight,
            slots_in_use=sum(h.slots.in_use for h in snap.handlers),
            handlers=snap.handlers,
            breakers=snap.breakers,
            counters=snap.counters,
            last_claim_at=snap.last_claim_at,
        )


class WorkersOut(BaseModel):
    """The worker registry: live workers first, then stopped and unresponsive ones."""

    within_seconds: float = Field(description="The window `alive` was judged by.")
    alive: int = Field(description="How many workers are alive.")
    truncated: bool = Field(description="More rows exist than the 1000 listed.")
    generated_at: datetime = Field(description="The database clock when the rows were read.")
    workers: list[WorkerOut]


class DeliveryAttemptOut(BaseModel):
    """One attempt to deliver a webhook."""

    attempt: int = Field(description="1 for the first attempt.")
    at: datetime = Field(description="When the attempt started (its `webhook-timestamp`).")
    http_status: int | None = Field(description="The receiver's status; null without one.")
    error: str | None = Field(description="Why it failed (null when it was delivered).")
    response: str | None = Field(
        default=None, description="The start of the receiver's answer to a failed attempt."
    )
    duration_ms: int


class DeliveryOut(BaseModel):
    """One webhook event of a job and its delivery."""

    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    event_type: str = Field(description="`job.completed`, `job.failed` or `job.cancelled`.")
    url: str = Field(description="Where it goes (query values masked).")
    status: str = Field(
        description="`pending` (being tried), `delivered` (2xx), `failed` (WEBHOOK_MAX_AGE "
        "passed without a 2xx)."
    )
    payload: dict[str, Any] = Field(description="The body sent, as fixed at the state change.")
    attempts: int = Field(description="Attempts made (`attempt_log` keeps the newest 50).")
    created_at: datetime = Field(description="When the job changed state.")
    next_attempt_at: datetime | None = Field(description="When a pending one is tried next.")
    delivered_at: datetime | None
    last_error: str | None
    attempt_log: list[DeliveryAttemptOut] = Field(description="Oldest first.")

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        return cls(
            webhook_id=webhook_id(delivery.id),
            event_type=delivery.event_type,
            url=redact_url(delivery.url),
            status=delivery.status,
            payload=delivery.payload,
            attempts=delivery.attempts,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            delivered_at=delivery.delivered_at,
            last_error=delivery.last_error,
            attempt_log=[DeliveryAttemptOut.model_validate(a) for a in delivery.attempt_log],
        )


class DeliveriesOut(BaseModel):
    """A job's webhook events, oldest first (a retried job that finishes again has more)."""

    deliveries: list[DeliveryOut]
