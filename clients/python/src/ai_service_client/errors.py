"""Everything the client raises, as one tree.

::

    AIServiceError                 base: status_code, error, message, details
    ├── APIError                   the API answered with its error envelope
    │   ├── InvalidRequest         400, 422 (`message` starts with the field)
    │   ├── Unauthorized           401 (missing or wrong token)
    │   ├── Forbidden              403 (the token's role may not do this)
    │   ├── NotFound               404 (unknown job, or another owner's)
    │   ├── Conflict               409
    │   │   ├── LeaseLost          409 lease_lost: the job is no longer yours
    │   │   └── IdempotencyConflict 409 idempotency_conflict
    │   ├── PayloadTooLarge        413
    │   ├── RateLimited            429
    │   └── ServerError            5xx
    │       └── Unavailable        502, 503, 504 (retried where the call allows)
    ├── TransportError             no answer: connection refused or reset, timeout
    ├── WaitTimeout                `wait` gave up before the job finished
    ├── JobFailed                  `run`: the job ended failed or cancelled
    └── WebhookVerificationError   `verify_webhook`: not a valid signed delivery

`WorkerError` is not raised by the client: a `Worker` handler raises it to
choose the failure's category and whether it is retried.
"""

from __future__ import annotations

from typing import Any


class AIServiceError(Exception):
    """Base of every client error; `status_code` is None when no HTTP answer came."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str = "client_error",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        prefix = f"{self.status_code} " if self.status_code is not None else ""
        return f"{prefix}{self.error}: {self.message}"


class APIError(AIServiceError):
    """The API answered with an error envelope `{"error", "message", "details"}`."""


class InvalidRequest(APIError):
    """400 or 422: the request is invalid; `message` names the field."""


class Unauthorized(APIError):
    """401: missing or wrong bearer token."""


class Forbidden(APIError):
    """403: the token's role (or owner_service) does not allow this."""


class NotFound(APIError):
    """404: unknown job (or one of another owner_service)."""


class Conflict(APIError):
    """409: the job's state does not allow the action."""


class LeaseLost(Conflict):
    """409 `lease_lost`: the lease token no longer holds the job; stop working on it."""


class IdempotencyConflict(Conflict):
    """409 `idempotency_conflict`: the key names a job created from another request."""


class PayloadTooLarge(APIError):
    """413: the body is over the service's limit."""


class RateLimited(APIError):
    """429: too many requests."""


class ServerError(APIError):
    """5xx: the service failed."""


class Unavailable(ServerError):
    """502, 503, 504: the service (or its database) is unavailable for now."""


class TransportError(AIServiceError):
    """No HTTP answer: the connection failed, broke or timed out."""


class WaitTimeout(AIServiceError):
    """`wait` reached its timeout before the job became terminal; `job` is its last state."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message, error="wait_timeout", details={"job_id": job.id})
        self.job = job


class JobFailed(AIServiceError):
    """`run`: the remote job ended `failed` or `cancelled`; `job` is its final state."""

    def __init__(self, job: Any) -> None:
        category = job.error_category or job.status
        text = job.error_message or f"the job was {job.status}"
        super().__init__(
            f"job {job.id} {job.status}: {category}: {text}",
            error="job_failed",
            details={"job_id": job.id, "status": job.status, "error_category": category},
        )
        self.job = job


class WebhookVerificationError(AIServiceError):
    """The webhook delivery is not signed with the secret (or is too old, or malformed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error="webhook_verification_failed")


class WorkerError(Exception):
    """Raised by a `Worker` handler to fail its job with a category of its choice.

    `retryable=None` leaves the decision to the service (only transient categories
    such as `provider_unavailable`, `rate_limited` and `timeout` are retried).
    """

    def __init__(
        self,
        message: str,
        *,
        category: str = "handler_error",
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.retryable = retryable
        self.details = details
        self.retry_after_seconds = retry_after_seconds


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
_BY_CODE: dict[str, type[APIError]] = {
    "lease_lost": LeaseLost,
    "idempotency_conflict": IdempotencyConflict,
}


def from_response(status_code: int, body: Any) -> APIError:
    """The typed error for an error answer; `body` is its decoded JSON (or anything else)."""
    envelope = body if isinstance(body, dict) else {}
    code = envelope.get("error")
    message = envelope.get("message")
    details = envelope.get("details")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else APIError)
    return cls(
        message if isinstance(message, str) else f"HTTP {status_code}",
        status_code=status_code,
        error=code if isinstance(code, str) else "http_error",
        details=details if isinstance(details, dict) else {},
    )
