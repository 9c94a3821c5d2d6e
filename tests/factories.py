"""Factories for domain objects used by tests that need no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from ai_service.jobs import Job, JobStatus


def make_job(**overrides: Any) -> Job:
    """A running, claimed `Job` as a handler receives it; override any field.

    Defaults: a `transcription` job of `telephony`, attempt 1 of 3, leased
    to `test-worker` for 15 minutes, with an empty `input`.
    """
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": uuid4(),
        "owner_service": "telephony",
        "owner_ref": f"beeline/{uuid4().hex[:12]}",
        "task_type": "transcription",
        "model_profile": "whisperx",
        "status": JobStatus.RUNNING,
        "priority": 0,
        "input": {},
        "result": None,
        "error_category": None,
        "error_message": None,
        "error_details": None,
        "errors": [],
        "error_count": 0,
        "attempt": 1,
        "max_attempts": 3,
        "run_after": now,
        "worker_id": "test-worker",
        "lease_token": uuid4(),
        "lease_expires_at": now + timedelta(minutes=15),
        "lease_seconds": None,
        "timeout_seconds": None,
        "idempotency_key": None,
        "created_at": now,
        "updated_at": now,
        "started_at": now,
        "finished_at": None,
    }
    values.update(overrides)
    return Job(**values)
