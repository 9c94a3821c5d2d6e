"""Provider HTTP failures mapped to JobFailure categories and readable messages."""

from __future__ import annotations

import email.utils
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ai_service.jobs import ErrorCategory, is_retryable
from ai_service.providers.http_errors import (
    category_for_status,
    failure_from_exception,
    failure_from_response,
    malformed_response,
    server_message,
)

URL = "http://user:s3cret-pw@10.2.3.5:8003/v1/chat/completions?api_key=k-123456"


def response(
    status: int,
    body: Any = None,
    *,
    text: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = text if text is not None else (json.dumps(body) if body is not None else "")
    return httpx.Response(
        status, content=content, headers=headers, request=httpx.Request("POST", URL)
    )


@pytest.mark.parametrize(
    ("status", "category", "retried"),
    [
        (400, ErrorCategory.PROVIDER_ERROR, False),
        (401, ErrorCategory.PROVIDER_AUTH, False),
        (403, ErrorCategory.PROVIDER_AUTH, False),
        (404, ErrorCategory.PROVIDER_ERROR, False),
        (408, ErrorCategory.TIMEOUT, True),
        (413, ErrorCategory.PROVIDER_ERROR, False),
        (422, ErrorCategory.PROVIDER_ERROR, False),
        (429, ErrorCategory.RATE_LIMITED, True),
        (500, ErrorCategory.PROVIDER_UNAVAILABLE, True),
        (502, ErrorCategory.PROVIDER_UNAVAILABLE, True),
        (503, ErrorCategory.PROVIDER_UNAVAILABLE, True),
        (504, ErrorCategory.PROVIDER_UNAVAILABLE, True),
    ],
)
def test_status_codes_map_to_categories(status: int, category: str, retried: bool) -> None:
    failure = failure_from_response("qwen2-audio", response(status))

    assert category_for_status(status) == category
    assert failure.category == category
    assert is_retryable(failure.category, failure.retryable) is retried
    assert failure.details["status_code"] == status
    assert failure.details["provider"] == "qwen2-audio"
    assert failure.message.startswith(f"qwen2-audio: HTTP {status}")


def test_current_vllm_error_shape_gives_the_message() -> None:
    body = {"error": {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}}

    failure = failure_from_response("voxtral-small", response(400, body))

    assert failure.message == (
        "voxtral-small: HTTP 400 Bad Request from http://10.2.3.5:8003/v1/chat/completions: "
        "max_tokens is too large"
    )


def test_flat_vllm_error_shape_gives_the_message() -> None:
    body = {
        "object": "error",
        "message": "This model's maximum context length is 4096 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }

    failure = failure_from_response("qwen2-audio", response(400, body))

    assert failure.message.endswith(": This model's maximum context length is 4096 tokens.")
    assert failure.category == ErrorCategory.PROVIDER_ERROR


@pytest.mark.parametrize(
    ("body", "text", "expected"),
    [
        ({"error": "Unauthorized"}, None, "Unauthorized"),  # vLLM --api-key
        ({"detail": "Not Found"}, None, "Not Found"),  # FastAPI
        (
            {"detail": [{"loc": ["body", "audio_file"], "msg": "Field required"}]},
            None,
            "Field required",
        ),
        (None, "Internal Server Error", "Internal Server Error"),
        (
            None,
            "<html>\n <body>bad   gateway</body></html>",
            "<html> <body>bad gateway</body></html>",
        ),
        (None, "", ""),
        ([1, 2], None, "[1, 2]"),
    ],
)
def test_server_message_reads_common_shapes(body: Any, text: str | None, expected: str) -> None:
    assert server_message(response(500, body, text=text)) == expected


def test_long_bodies_are_shortened() -> None:
    said = server_message(response(502, text="x" * 5000))

    assert len(said) == 300
    assert said.endswith("...")


def test_empty_body_message_has_status_and_reason_only() -> None:
    failure = failure_from_response("whisperx", response(503))

    assert failure.message == (
        "whisperx: HTTP 503 Service Unavailable from http://10.2.3.5:8003/v1/chat/completions"
    )


def test_url_credentials_and_query_never_appear() -> None:
    failure = failure_from_response("qwen2-audio", response(500, {"error": {"message": "boom"}}))

    assert "s3cret-pw" not in failure.message
    assert "user" not in failure.message
    assert "k-123456" not in failure.message


def test_secrets_echoed_by_a_server_are_masked() -> None:
    body = {"error": {"message": "invalid api key sk-live-abcdef"}}

    failure = failure_from_response(
        "voxtral-small", response(401, body), secrets=["sk-live-abcdef", None]
    )

    assert "sk-live-abcdef" not in failure.message
    assert "invalid api key ***" in failure.message
    assert failure.category == ErrorCategory.PROVIDER_AUTH


def test_retry_after_is_kept_for_rate_limits() -> None:
    failure = failure_from_response(
        "qwen2-audio",
        response(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "7"}),
    )

    assert failure.category == ErrorCategory.RATE_LIMITED
    assert failure.details["retry_after"] == 7.0
    assert failure.message.endswith(": slow down")


def test_retry_after_as_an_http_date_becomes_the_seconds_until_then() -> None:
    future = datetime.now(UTC) + timedelta(seconds=120)
    headers = {"Retry-After": email.utils.format_datetime(future, usegmt=True)}

    failure = failure_from_response("qwen2-audio", response(429, headers=headers))

    assert 100 < failure.details["retry_after"] <= 120


def test_retry_after_as_a_date_in_the_past_means_now() -> None:
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}

    failure = failure_from_response("qwen2-audio", response(429, headers=headers))

    assert failure.details["retry_after"] == 0.0


def test_retry_after_is_kept_for_503_and_unreadable_values_are_dropped() -> None:
    kept = failure_from_response("whisperx", response(503, headers={"Retry-After": "30"}))
    dropped = failure_from_response("whisperx", response(429, headers={"Retry-After": "soon"}))
    ignored = failure_from_response("whisperx", response(500, headers={"Retry-After": "30"}))

    assert kept.details["retry_after"] == 30.0
    assert "retry_after" not in dropped.details
    assert "retry_after" not in ignored.details


@pytest.mark.parametrize(
    ("exc", "category", "what"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "provider_unavailable",
            "cannot connect",
        ),
        (httpx.ConnectTimeout("timed out"), "provider_unavailable", "connection timed out"),
        (httpx.ReadTimeout("timed out"), "timeout", "request timed out"),
        (httpx.WriteTimeout("timed out"), "timeout", "request timed out"),
        (httpx.PoolTimeout("timed out"), "timeout", "request timed out"),
        (TimeoutError(), "timeout", "request timed out"),
        (
            httpx.RemoteProtocolError("Server disconnected"),
            "provider_unavailable",
            "connection failed",
        ),
        (httpx.ReadError("reset by peer"), "provider_unavailable", "connection failed"),
        (
            httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'"),
            "provider_error",
            "invalid URL",
        ),
        (RuntimeError("something odd"), "provider_error", "request failed"),
    ],
)
def test_exceptions_map_to_categories(exc: BaseException, category: str, what: str) -> None:
    if isinstance(exc, httpx.RequestError):
        exc.request = httpx.Request("POST", URL)

    failure = failure_from_exception("whisperx", exc)

    assert failure.category == category
    assert failure.message.startswith(f"whisperx: {what}")
    assert type(exc).__name__ in failure.message
    assert "s3cret-pw" not in failure.message
    assert "k-123456" not in failure.message


def test_exception_without_request_has_no_url() -> None:
    failure = failure_from_exception("whisperx", httpx.ConnectError("refused"))

    assert failure.message == "whisperx: cannot connect: ConnectError: refused"


def test_malformed_response_shows_the_start_of_the_body() -> None:
    failure = malformed_response(
        "qwen2-audio", "the body is not JSON", response(200, text="<html>oops</html>")
    )

    assert failure.category == ErrorCategory.PROVIDER_ERROR
    assert failure.retryable is None
    assert not is_retryable(failure.category, failure.retryable)
    assert "the body is not JSON" in failure.message
    assert "<html>oops</html>" in failure.message
    assert failure.details == {"provider": "qwen2-audio", "status_code": 200}
