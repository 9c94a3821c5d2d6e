"""Python client of the AI Service job API.

    from ai_service_client import Client

    with Client() as client:  # AI_SERVICE_URL, AI_SERVICE_TOKEN
        job = client.create(owner_service="telephony", owner_ref="call-1",
                            task_type="llm_chat", model_profile="qwen2.5-14b",
                            input={"user": "Classify this text"})
        done = client.wait(job.id, timeout=60)

`AsyncClient` has the same methods for asyncio; `Worker` runs an external
worker; `verify_webhook` checks a completion webhook's signature. Errors:
see `ai_service_client.errors`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ai_service_client._core import JobFilters, JobOptions, NewJob, RetryPolicy
from ai_service_client.client import AsyncClient, Client
from ai_service_client.errors import (
    AIServiceError,
    APIError,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    JobFailed,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    WebhookVerificationError,
    WorkerError,
)
from ai_service_client.models import (
    Batch,
    BatchItem,
    ClaimedJob,
    Completed,
    CompleteMany,
    CreatedJob,
    Heartbeat,
    Job,
    JobPage,
    JobSpec,
    JobSummary,
    Stats,
)
from ai_service_client.webhooks import verify_webhook
from ai_service_client.worker import Worker

try:
    __version__ = version("ai-service-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AIServiceError",
    "APIError",
    "AsyncClient",
    "Batch",
    "BatchItem",
    "ClaimedJob",
    "Client",
    "CompleteMany",
    "Completed",
    "Conflict",
    "CreatedJob",
    "Forbidden",
    "Heartbeat",
    "IdempotencyConflict",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobFilters",
    "JobOptions",
    "JobPage",
    "JobSpec",
    "JobSummary",
    "LeaseLost",
    "NewJob",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "Stats",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WebhookVerificationError",
    "Worker",
    "WorkerError",
    "__version__",
    "verify_webhook",
]
