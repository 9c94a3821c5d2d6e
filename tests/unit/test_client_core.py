"""The client's shared core: configuration, retry decisions, backoff, request building."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ai_service_client import _core, errors, models
from ai_service_client._core import Retry, RetryPolicy

JOB: _core.NewJob = {
    "owner_ref": "call-1",
    "task_type": "call_analysis",
    "model_profile": "m",
    "input": {"text": "hi"},
}


def config(**env: str) -> _core.Config:
    return _core.Config.resolve(
        None,
        None,
        timeout=10,
        retry=None,
        remote_task_types=None,
        owner_service=None,
        environ=env,
    )


def test_url_token_and_remote_task_types_come_from_the_environment() -> None:
    resolved = config(
        AI_SERVICE_URL="http://127.0.0.1:9/",
        AI_SERVICE_TOKEN="s3cret",
        AI_SERVICE_REMOTE_TASK_TYPES=" call_analysis, summary ,,",
    )
    assert resolved.base_url == "http://127.0.0.1:9"
    assert resolved.headers()["Authorization"] == "Bearer s3cret"
    assert resolved.remote_task_types == {"call_analysis", "summary"}


def test_arguments_override_the_environment() -> None:
    resolved = _core.Config.resolve(
        "http://127.0.0.1:7",
        "arg-token",
        timeout=1,
        retry=RetryPolicy(attempts=1),
        remote_task_types=[],
        owner_service="telephony",
        environ={"AI_SERVICE_TOKEN": "env", "AI_SERVICE_REMOTE_TASK_TYPES": "x"},
    )
    assert resolved.base_url == "http://127.0.0.1:7"
    assert resolved.token == "arg-token"
    assert resolved.remote_task_types == frozenset()


def test_without_a_token_no_authorization_header_is_sent() -> None:
    assert "Authorization" not in config().headers()


def test_repr_never_shows_the_token() -> None:
    resolved = config(AI_SERVICE_TOKEN="very-secret-token")
    assert "very-secret-token" not in repr(resolved)
    assert "very-secret-token" not in resolved.describe("Client")
    assert resolved.describe("Client") == "Client(base_url='http://127.0.0.1:8080', token=set)"


def test_create_is_retried_only_with_an_idempotency_key() -> None:
    assert _core.create(JOB, "telephony").retry is Retry.UNSENT_ONLY
    assert _core.create({**JOB, "idempotency_key": "k"}, "t").retry is Retry.IDEMPOTENT


def test_a_batch_is_retried_only_when_every_item_has_a_key() -> None:
    keyed: list[models.JobSpec] = [{"idempotency_key": "a"}, {"idempotency_key": "b"}]
    assert _core.create_batch(keyed, None).retry is Retry.IDEMPOTENT
    assert _core.create_batch([*keyed, {}], None).retry is Retry.UNSENT_ONLY


def test_per_call_retry_rules() -> None:
    assert _core.get("j").retry is Retry.IDEMPOTENT
    assert _core.cancel("j").retry is Retry.IDEMPOTENT
    assert _core.heartbeat("j", "t").retry is Retry.IDEMPOTENT
    assert _core.complete("j", {}, "t").retry is Retry.IDEMPOTENT
    assert _core.complete_many([("j", "t", {})]).retry is Retry.IDEMPOTENT
    assert _core.fail("j", category="c", message="m", lease_token="t").retry is Retry.IDEMPOTENT
    assert _core.fail("j", category="c", message="m").retry is Retry.UNSENT_ONLY
    assert _core.retry("j").retry is Retry.UNSENT_ONLY
    assert _core.claim("w").retry is Retry.UNSENT_ONLY


def test_retryable_statuses_and_transport_errors() -> None:
    idempotent, once = _core.get("j"), _core.retry("j")
    for status in (502, 503, 504):
        assert _core.should_retry_status(idempotent, status)
        assert not _core.should_retry_status(once, status)
    for status in (400, 404, 409, 422, 500):
        assert not _core.should_retry_status(idempotent, status)
    refused = httpx.ConnectError("refused")
    broken = httpx.ReadError("reset")
    assert _core.should_retry_error(once, refused)  # never sent: safe for any call
    assert not _core.should_retry_error(once, broken)  # may have arrived
    assert _core.should_retry_error(idempotent, broken)


def test_backoff_grows_exponentially_and_stays_under_its_ceiling() -> None:
    policy = RetryPolicy(attempts=10, backoff_base=0.5, backoff_max=4)
    for number, ceiling in enumerate([0.5, 1, 2, 4, 4, 4]):
        pauses = [policy.pause(number, None) for _ in range(200)]
        assert all(0 <= p <= ceiling for p in pauses)
        assert max(pauses) > ceiling / 2  # jitter spreads over the whole range


def test_backoff_honours_retry_after_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_base=0.01, backoff_max=0.02, retry_after_max=10)
    assert policy.pause(0, 3) == 3
    assert policy.pause(0, 3600) == 10


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert _core.retry_after(httpx.Headers({"Retry-After": "2"})) == 2
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= (_core.retry_after(httpx.Headers({"Retry-After": later})) or 0) <= 30
    assert _core.retry_after(httpx.Headers({})) is None
    assert _core.retry_after(httpx.Headers({"Retry-After": "soon"})) is None


def test_job_body_takes_the_clients_owner_service_and_moves_traceparent_to_a_header() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    call = _core.create({**JOB, "traceparent": "00-abc-def-01", "run_after": when}, "telephony")
    assert call.json["owner_service"] == "telephony"
    assert call.json["run_after"] == "2026-01-01T00:00:00+00:00"
    assert "traceparent" not in call.json
    assert call.headers == {"traceparent": "00-abc-def-01"}
    with pytest.raises(TypeError, match="owner_service"):
        _core.create(JOB, None)


def test_list_filters_repeat_list_values_and_add_the_cursor() -> None:
    call = _core.list_jobs({"status": ["failed", "running"], "limit": 5, "task_type": None}, "c1")
    assert list(call.params) == [
        ("status", "failed"),
        ("status", "running"),
        ("limit", "5"),
        ("cursor", "c1"),
    ]


def test_a_wait_asks_at_most_30_seconds_and_its_read_timeout_allows_for_it() -> None:
    call = _core.get("j", 120)
    assert list(call.params) == [("wait_seconds", "30.0")]
    timeout = config().timeout_for(call)
    assert timeout.read == 40
    assert timeout.connect == 10
    assert _core.wait_seconds(deadline=100, now=95) == 5
    assert _core.wait_seconds(deadline=100, now=101) == 0


def test_wait_pauses_only_when_an_answer_came_back_early() -> None:
    assert _core.wait_pause(asked=10, took=10, remaining=5) == 0
    assert _core.wait_pause(asked=10, took=0.01, remaining=5) == 0.5
    assert _core.wait_pause(asked=0, took=0, remaining=0.1) == 0.1


def test_job_ids_are_quoted_into_the_path() -> None:
    assert _core.get("a/b?c").path == "/api/v1/jobs/a%2Fb%3Fc"


def test_a_mirrored_job_runs_after_the_local_timeout() -> None:
    before = datetime.now(UTC)
    mirrored = _core.mirror_job(JOB, 3600)
    run_after = mirrored["run_after"]
    assert isinstance(run_after, datetime)
    assert before + timedelta(seconds=3600) <= run_after
    assert "run_after" not in JOB


def test_is_remote_follows_the_configured_task_types() -> None:
    resolved = config(AI_SERVICE_REMOTE_TASK_TYPES="call_analysis")
    assert _core.is_remote(resolved, "call_analysis")
    assert not _core.is_remote(resolved, "summary")


def test_local_result_must_be_a_json_object() -> None:
    assert _core.local_result({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError):
        _core.local_result(["not", "an", "object"])


def test_local_failure_records_a_non_retryable_local_error() -> None:
    call = _core.local_failure("j", ValueError("boom"))
    assert call.json == {
        "category": "local_error",
        "message": "ValueError: boom",
        "details": {"exception": "ValueError"},
        "retryable": False,
    }
    assert call.retry is Retry.UNSENT_ONLY


def test_a_failed_remote_job_raises_job_failed_with_it() -> None:
    job = models.Job.from_json(
        {
            "id": "j",
            "owner_service": "o",
            "owner_ref": "r",
            "task_type": "t",
            "model_profile": "m",
            "status": "failed",
            "priority": 0,
            "input": {},
            "result": None,
            "error_category": "provider_error",
            "error_message": "bad",
            "error_details": None,
            "errors": [],
            "error_count": 1,
            "attempt": 1,
            "max_attempts": 1,
            "run_after": "2026-01-01T00:00:00Z",
            "timeout_seconds": None,
            "worker_id": None,
            "lease_expires_at": None,
            "idempotency_key": None,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "started_at": None,
            "finished_at": "2026-01-01T00:00:01Z",
        }
    )
    with pytest.raises(errors.JobFailed) as caught:
        _core.remote_result(job)
    assert caught.value.job is job
    assert "provider_error" in str(caught.value)
