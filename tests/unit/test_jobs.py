"""The pure job domain: statuses, filters, retry rules, ids and backoff."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ai_service import jobs as jobs_module
from ai_service.jobs import (
    ALLOWED_FROM,
    BULK_DEFAULT_STATUSES,
    JOB_COLUMNS,
    MAX_ATTEMPTS,
    ErrorCategory,
    Job,
    JobFilter,
    JobStatus,
    backoff_seconds,
    is_retryable,
    new_job_id,
    new_job_ids,
    retry_allowed,
)
from tests.helpers import new_job

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_terminal_statuses_are_completed_failed_cancelled() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def test_allowed_from_matches_the_documented_state_machine() -> None:
    allowed = {action: set(statuses) for action, statuses in ALLOWED_FROM.items()}
    assert allowed == {
        "claim": {JobStatus.PENDING},
        "complete": {JobStatus.PENDING, JobStatus.RUNNING},
        "fail": {JobStatus.PENDING, JobStatus.RUNNING},
        "heartbeat": {JobStatus.RUNNING},
        "cancel": {JobStatus.PENDING, JobStatus.RUNNING},
        "retry": {JobStatus.FAILED, JobStatus.RUNNING},
    }


def test_bulk_retry_takes_failed_jobs_unless_asked_and_cancel_pending_and_running() -> None:
    # A running attempt is healthy work: a bulk retry resets it only when named.
    assert BULK_DEFAULT_STATUSES == {
        "retry": (JobStatus.FAILED,),
        "cancel": (JobStatus.PENDING, JobStatus.RUNNING),
    }
    for action, statuses in BULK_DEFAULT_STATUSES.items():
        assert set(statuses) <= ALLOWED_FROM[action]


def test_empty_filter_is_empty() -> None:
    assert JobFilter().is_empty


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("statuses", (JobStatus.FAILED,)),
        ("owner_service", "telephony"),
        ("owner_ref", "beeline/1"),
        ("task_type", "llm_chat"),
        ("model_profile", "whisperx"),
        ("worker_id", "w1"),
        ("error_category", "timeout"),
        ("created_after", NOW),
        ("created_before", NOW),
    ],
)
def test_filter_with_any_field_set_is_not_empty(field: str, value: Any) -> None:
    assert not JobFilter(**{field: value}).is_empty


def test_every_filter_field_is_covered_by_the_is_empty_cases() -> None:
    # Guards the parametrized test above: a new filter field needs a case there.
    assert {f.name for f in dataclasses.fields(JobFilter)} == {
        "statuses",
        "owner_service",
        "owner_ref",
        "task_type",
        "model_profile",
        "worker_id",
        "error_category",
        "created_after",
        "created_before",
    }


@pytest.mark.parametrize("category", list(ErrorCategory))
def test_explicit_retryable_flag_wins_over_the_category(category: ErrorCategory) -> None:
    assert is_retryable(category, True) is True
    assert is_retryable(category, False) is False


@pytest.mark.parametrize(
    ("category", "expected"),
    [
        (ErrorCategory.PROVIDER_UNAVAILABLE, True),
        (ErrorCategory.RATE_LIMITED, True),
        (ErrorCategory.TIMEOUT, True),
        (ErrorCategory.INVALID_INPUT, False),
        (ErrorCategory.PROVIDER_ERROR, False),
        (ErrorCategory.PROVIDER_AUTH, False),
        (ErrorCategory.LEASE_EXPIRED, False),
        (ErrorCategory.CANCELLED, False),
        (ErrorCategory.INTERNAL, False),
        ("something_new", False),
    ],
)
def test_without_a_flag_only_transient_categories_retry(category: str, expected: bool) -> None:
    assert is_retryable(category, None) is expected


def test_new_job_id_is_a_version_7_rfc_4122_uuid() -> None:
    job_id = new_job_id()
    assert job_id.version == 7
    assert job_id.variant == uuid.RFC_4122


def test_new_job_id_carries_the_unix_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    millis = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
    monkeypatch.setattr(time, "time_ns", lambda: millis * 1_000_000 + 456_789)
    monkeypatch.setattr(jobs_module, "_last_id", 0)  # a process whose clock starts here
    job_id = new_job_id()
    assert job_id.int >> 80 == millis
    assert job_id.version == 7


def test_new_job_ids_strictly_increase_within_one_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_767_225_600_123_000_000)
    monkeypatch.setattr(jobs_module, "_last_id", 0)
    ids = [new_job_id() for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    assert {i.int >> 80 for i in ids} == {1_767_225_600_123}


def test_new_job_ids_are_ordered_by_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 200))
    monkeypatch.setattr(time, "time_ns", lambda: next(clock) * 1_000_000)
    ids = [new_job_id() for _ in range(200)]
    assert ids == sorted(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)  # text order too


def test_a_batch_of_ids_is_ordered_after_the_ids_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_767_225_600_123_000_000)
    monkeypatch.setattr(jobs_module, "_last_id", 0)
    first = new_job_id()
    batch = new_job_ids(1000)
    after = new_job_id()
    ids = [first, *batch, after]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in batch)
    assert {i.int >> 80 for i in batch} == {1_767_225_600_123}


def test_new_job_ids_in_one_millisecond_are_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000 * 1_000_000)
    assert len({new_job_id() for _ in range(10_000)}) == 10_000


@pytest.mark.parametrize(
    ("attempt", "window"),
    [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (6, 320.0), (7, 600.0), (30, 600.0)],
)
def test_backoff_window_doubles_per_attempt_up_to_the_cap(attempt: int, window: float) -> None:
    assert backoff_seconds(attempt, 10.0, 600.0, 0.0) == pytest.approx(window / 2)
    assert backoff_seconds(attempt, 10.0, 600.0, 0.999999) == pytest.approx(window, rel=1e-5)


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12])
def test_backoff_with_any_jitter_stays_in_the_upper_half_of_the_window(attempt: int) -> None:
    window = min(300.0, 2.0 * 2 ** (attempt - 1))
    for step in range(101):
        jitter = step / 101
        delay = backoff_seconds(attempt, 2.0, 300.0, jitter)
        assert 0.5 * window <= delay <= window


def test_backoff_grows_with_jitter() -> None:
    delays = [backoff_seconds(3, 5.0, 600.0, j / 10) for j in range(10)]
    assert delays == sorted(delays)
    assert delays[0] < delays[-1]


def test_backoff_never_exceeds_the_cap() -> None:
    assert max(backoff_seconds(a, 10.0, 45.0, 0.999) for a in range(1, 60)) <= 45.0


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_job_id(),
        "owner_service": "telephony",
        "owner_ref": "beeline/1",
        "task_type": "llm_chat",
        "model_profile": "qwen2.5-14b",
        "status": "pending",
        "priority": 0,
        "input": {"user": "hi"},
        "result": None,
        "error_category": None,
        "error_message": None,
        "error_details": None,
        "errors": [],
        "error_count": 0,
        "attempt": 0,
        "max_attempts": 3,
        "run_after": NOW,
        "worker_id": None,
        "lease_token": None,
        "lease_expires_at": None,
        "lease_seconds": None,
        "timeout_seconds": None,
        "idempotency_key": None,
        "created_at": NOW,
        "updated_at": NOW,
        "started_at": None,
        "finished_at": None,
        "outage_since": None,
        "callback_url": None,
        "traceparent": None,
    }
    row.update(overrides)
    return row


def test_job_from_row_converts_the_status_and_ignores_extra_columns() -> None:
    row = _row(status="running", extra_column="ignored")
    job = Job.from_row(row)
    assert job.status is JobStatus.RUNNING
    assert job.id == row["id"]
    assert set(JOB_COLUMNS) == set(row) - {"extra_column"}


def test_job_from_row_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="paused"):
        Job.from_row(_row(status="paused"))


# -- request fingerprints (idempotency conflicts) ---------------------------------------


def test_fingerprint_is_the_same_for_the_same_request() -> None:
    a = new_job(input={"a": 1, "b": {"x": [1, 2], "y": None}}, idempotency_key="k")
    b = new_job(input={"b": {"y": None, "x": [1, 2]}, "a": 1}, idempotency_key="k")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    # An explicit default is the same request as an omitted one.
    assert new_job(max_attempts=3).fingerprint() == new_job().fingerprint()


def test_fingerprint_changes_with_any_field() -> None:
    base = new_job(input={"a": 1}, run_after=datetime(2030, 1, 1, tzinfo=UTC))
    changes = [
        {"owner_service": "other"},
        {"owner_ref": "other"},
        {"task_type": "other"},
        {"model_profile": "other"},
        {"input": {"a": 2}},
        {"input": {"a": 1.0}},
        {"input": {"a": "1"}},
        {"priority": 1},
        {"max_attempts": 4},
        {"run_after": datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC)},
        {"idempotency_key": "k"},
        {"callback_url": "https://hooks.example.com/done"},
    ]
    prints = {base.fingerprint()}
    for change in changes:
        fields = {
            "owner_service": base.owner_service, "owner_ref": base.owner_ref,
            "task_type": base.task_type, "model_profile": base.model_profile,
            "input": base.input, "run_after": base.run_after,
        } | change  # fmt: skip
        prints.add(new_job(**fields).fingerprint())
    assert len(prints) == len(changes) + 1


def test_fingerprint_leaves_out_the_trace_context() -> None:
    # A retry of the same request from a new trace is the same request.
    traced = new_job(idempotency_key="k", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert traced.fingerprint() == new_job(idempotency_key="k").fingerprint()


def test_fingerprint_of_integers_beyond_64_bits() -> None:
    big = new_job(input={"n": 2**70})
    assert big.fingerprint() == new_job(input={"n": 2**70}).fingerprint()
    assert big.fingerprint() != new_job(input={"n": 2**70 + 1}).fingerprint()


def test_retry_allowed_up_to_the_maximum_attempts() -> None:
    assert retry_allowed(0, 1)
    assert retry_allowed(99, 99)
    assert not retry_allowed(MAX_ATTEMPTS, MAX_ATTEMPTS)
    assert retry_allowed(120, 131)  # rows from before the cap keep what they were given
    assert not retry_allowed(131, 131)
