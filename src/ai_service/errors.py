"""Domain errors. They carry data and know nothing of HTTP.

    AIServiceError
    ├── ConfigError            a variable has a bad value (names the variable)
    ├── JobNotFound            no job with that id
    ├── AudioNotFound          no stored audio with that id (for this caller)
    ├── InvalidTransition      the job's status does not allow the action
    ├── LeaseLost              the lease token no longer holds a job that is still active
    │                          (rescued or retried); a finished job gives InvalidTransition
    ├── AttemptsExhausted      a manual retry cannot grant an attempt (the maximum is used)
    ├── IdempotencyConflict    an idempotency key comes back with a different request
    ├── Unauthorized           missing or wrong service token
    ├── Forbidden              the caller's token (its role or owner_service) does not allow it
    ├── InvalidRequest         a request is well-formed but not acceptable (names the field)
    ├── PayloadTooLarge        a body or its audio is over its limit (names field and setting)
    ├── DatabaseUnavailable    PostgreSQL cannot be reached (an outage: retry later)
    ├── StatementTimeout       one statement ran past its time limit (this request's own cost)
    ├── UpstreamUnavailable    a remote service the API depends on (sidecar) failed
    └── JobFailure             a handler's attempt failed (category, retryable, details)

`ai_service.error_envelope` is the only place that maps these to status codes.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID


class AIServiceError(Exception):
    """Base of every error raised on purpose by the service."""

    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(AIServiceError):
    """An environment variable has an invalid value."""

    code = "config_error"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}", {"variable": variable})
        self.variable = variable


class JobNotFound(AIServiceError):
    """No job has the given id."""

    code = "job_not_found"

    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"job {job_id} not found", {"job_id": str(job_id)})
        self.job_id = job_id


class InvalidTransition(AIServiceError):
    """The job's current status does not allow the requested action."""

    code = "invalid_transition"

    def __init__(self, job_id: UUID, status: str, action: str) -> None:
        super().__init__(
            f"cannot {action} job {job_id}: it is {status}",
            {"job_id": str(job_id), "status": status, "action": action},
        )
        self.job_id = job_id
        self.status = status
        self.action = action


class LeaseLost(AIServiceError):
    """The caller's lease token no longer owns the job."""

    code = "lease_lost"

    def __init__(self, job_id: UUID, status: str, action: str) -> None:
        super().__init__(
            f"cannot {action} job {job_id}: the lease token does not hold the job (it is {status})",
            {"job_id": str(job_id), "status": status, "action": action},
        )
        self.job_id = job_id
        self.status = status
        self.action = action


class AttemptsExhausted(AIServiceError):
    """A manual retry would take the job past the most attempts a job may have."""

    code = "attempts_exhausted"

    def __init__(self, job_id: UUID, attempt: int, limit: int) -> None:
        super().__init__(
            f"cannot retry job {job_id}: it has used {attempt} attempts and a job may "
            f"have at most {limit}",
            {"job_id": str(job_id), "attempt": attempt, "max_attempts": limit},
        )
        self.job_id = job_id


class IdempotencyConflict(AIServiceError):
    """An idempotency key already names a job created from a different request."""

    code = "idempotency_conflict"

    def __init__(self, field: str, job_id: UUID) -> None:
        super().__init__(
            f"{field}: already used for job {job_id} with a different request; "
            "send the same request again or use a new key",
            {"field": field, "job_id": str(job_id)},
        )
        self.field = field
        self.job_id = job_id


class InvalidRequest(AIServiceError):
    """A syntactically valid request that cannot be accepted."""

    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        # Same `details.errors` shape as request validation errors.
        super().__init__(
            f"{field}: {message}",
            {"field": field, "errors": [{"field": field, "message": message, "type": "invalid"}]},
        )
        self.field = field


class PayloadTooLarge(AIServiceError):
    """A request body (or the audio in it) is larger than the limit that applies to it."""

    code = "payload_too_large"

    def __init__(self, field: str, limit: int, setting: str) -> None:
        super().__init__(
            f"{field}: larger than {setting} ({limit} bytes)",
            {"field": field, "limit_bytes": limit, "setting": setting},
        )
        self.field = field


class AudioNotFound(AIServiceError):
    """No stored audio has the given id (or it belongs to another owner_service)."""

    code = "audio_not_found"

    def __init__(self, audio_id: UUID) -> None:
        super().__init__(f"audio {audio_id} not found", {"audio_id": str(audio_id)})
        self.audio_id = audio_id


class Unauthorized(AIServiceError):
    """The caller did not present the configured service token."""

    code = "unauthorized"


class Forbidden(AIServiceError):
    """The caller is known, but its token's role or owner_service does not allow the request."""

    code = "forbidden"


class DatabaseUnavailable(AIServiceError):
    """PostgreSQL did not answer (down, restarting, pool exhausted)."""

    code = "database_unavailable"


class StatementTimeout(AIServiceError):
    """PostgreSQL cancelled one statement (statement timeout): not an outage."""

    code = "statement_timeout"


class UpstreamUnavailable(AIServiceError):
    """A remote dependency of an endpoint (for example the sidecar) failed."""

    code = "upstream_unavailable"


class JobFailure(AIServiceError):
    """Raised by a job handler: the attempt failed with a category.

    `retryable=None` lets the category decide (transient categories retry);
    `details` is stored in the job's `error_details`.
    """

    code = "job_failed"

    def __init__(
        self,
        category: str,
        message: str,
        *,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.category = category
        self.retryable = retryable
