"""Turning a provider's HTTP failure into a `JobFailure` with a category.

One mapping for every outbound provider call (WhisperX, audio LLMs, the LLM
chat handler), so the same answer is always retried (or not) the same way:

    answer / exception                    category              retried
    ------------------------------------  --------------------  -------
    400, 422, other 4xx                   provider_error        no
    401, 403                              provider_auth         no
    404                                   provider_error        no
    408, read/write/pool timeout          timeout               yes
    429 (Retry-After kept in details)     rate_limited          yes
    5xx, connection refused/reset,        provider_unavailable  yes
    connect timeout, protocol error
    2xx with a body we cannot read        provider_error        no

Why 400 is `provider_error` and not `invalid_input`: the audio and text a job
brings are validated before any provider is called (audio is decoded locally
first), so a 400 from a provider almost always means *our* request does not
fit that server (context length, `max_tokens`, model options, a server
version without audio support). That is an operator problem, not the
caller's; retrying would not help, and blaming the caller would hide it.

Messages name the provider, the HTTP status and the server's own message
(both vLLM error shapes, FastAPI's `detail`, or the start of a text body);
URLs are shown through `redact_url`, and known secrets are masked.
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory
from ai_service.redact import redact_text, redact_url

# Longest server message kept in a failure message (bodies can be HTML pages).
_MAX_SERVER_MESSAGE = 300


def category_for_status(status_code: int) -> ErrorCategory:
    """The error category of a non-2xx HTTP status from a provider."""
    if status_code in (401, 403):
        return ErrorCategory.PROVIDER_AUTH
    if status_code == 408:
        return ErrorCategory.TIMEOUT
    if status_code == 429:
        return ErrorCategory.RATE_LIMITED
    if status_code >= 500:
        return ErrorCategory.PROVIDER_UNAVAILABLE
    return ErrorCategory.PROVIDER_ERROR


def server_message(response: httpx.Response, secrets: Sequence[str | None] = ()) -> str:
    """The human-readable error a server put in its body, or '' when none.

    Reads `{"error": {"message": ...}}` (OpenAI, current vLLM),
    `{"object": "error", "message": ...}` (older vLLM), `{"error": "..."}`,
    `{"detail": ...}` (FastAPI) and falls back to the body text. `secrets`
    are masked before the text is shortened (a cut through a secret would
    leave a piece of it unmasked).
    """
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError, LookupError):
        return ""
    text = text.strip()
    if not text:
        return ""
    try:
        body: Any = json.loads(text)
    except ValueError:
        return _shorten(text, secrets)
    return _shorten(_message_from_json(body) or text, secrets)


def _message_from_json(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    if body.get("message"):
        return str(body["message"])
    detail = body.get("detail")
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        # FastAPI validation errors: [{"loc": [...], "msg": "...", ...}]
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return None


def _shorten(text: str, secrets: Sequence[str | None], limit: int = _MAX_SERVER_MESSAGE) -> str:
    """`text` on one line, `secrets` masked, at most `limit` characters.

    Masked before the final cut (a cut through a secret would leave a piece
    of it unmasked); only the first `4 * limit` characters are masked, so a
    secret cut at that point lies beyond what is kept.
    """
    text = redact_text(" ".join(text.split())[: 4 * limit], secrets)
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header value asks for (seconds or an HTTP date), or None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; a zone-less one is read as such
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def failure_from_response(
    provider: str,
    response: httpx.Response,
    *,
    secrets: Sequence[str | None] = (),
) -> JobFailure:
    """A `JobFailure` for a non-2xx answer of `provider`.

    `details` carries `provider`, `status_code` and, for 429 and 503 with a
    `Retry-After` (seconds or an HTTP date), `retry_after` (seconds). `secrets`
    (API keys, URL passwords) are masked in the message in case a server echoes them.
    """
    status = response.status_code
    category = category_for_status(status)
    where = _request_url(response)
    message = f"{provider}: HTTP {status} {response.reason_phrase}".rstrip()
    if where:
        message += f" from {where}"
    said = server_message(response, secrets)
    if said:
        message += f": {said}"
    details: dict[str, Any] = {"provider": provider, "status_code": status}
    wait = retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    if wait is not None:
        details["retry_after"] = wait
    return JobFailure(category, redact_text(message, list(secrets)), details=details)


def failure_from_exception(
    provider: str,
    exc: BaseException,
    *,
    secrets: Sequence[str | None] = (),
) -> JobFailure:
    """A `JobFailure` for an exception raised while calling `provider`.

    Connection failures (refused, reset, DNS, connect timeout, the server
    dropping the connection) are `provider_unavailable`; a read, write or
    pool timeout is `timeout`; a bad URL or any other error is
    `provider_error`.
    """
    category: ErrorCategory
    if isinstance(exc, httpx.ConnectTimeout):
        category, what = ErrorCategory.PROVIDER_UNAVAILABLE, "connection timed out"
    elif isinstance(exc, httpx.TimeoutException | TimeoutError):
        category, what = ErrorCategory.TIMEOUT, "request timed out"
    elif isinstance(exc, httpx.ConnectError):
        category, what = ErrorCategory.PROVIDER_UNAVAILABLE, "cannot connect"
    elif isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        category, what = ErrorCategory.PROVIDER_UNAVAILABLE, "connection failed"
    elif isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        category, what = ErrorCategory.PROVIDER_ERROR, "invalid URL"
    else:
        category, what = ErrorCategory.PROVIDER_ERROR, "request failed"
    message = f"{provider}: {what}"
    where = _exception_url(exc)
    if where:
        message += f" ({where})"
    reason = str(exc).strip()
    message += f": {type(exc).__name__}" + (f": {_shorten(reason, secrets)}" if reason else "")
    return JobFailure(category, redact_text(message, list(secrets)), details={"provider": provider})


def malformed_response(
    provider: str,
    problem: str,
    response: httpx.Response | None = None,
    *,
    secrets: Sequence[str | None] = (),
) -> JobFailure:
    """A `JobFailure` (`provider_error`) for a 2xx answer we cannot use.

    `problem` says what is wrong (for example "the body is not JSON"); the
    start of the body is appended so an operator can see what came back.
    """
    message = f"{provider}: malformed response: {problem}"
    if response is not None:
        where = _request_url(response)
        if where:
            message = f"{provider}: malformed response from {where}: {problem}"
        try:
            body = response.text.strip()
        except (httpx.ResponseNotRead, UnicodeDecodeError, LookupError):
            body = ""
        if body:
            message += f" (body starts: {_shorten(body, secrets, 120)!r})"
    details: dict[str, Any] = {"provider": provider}
    if response is not None:
        details["status_code"] = response.status_code
    return JobFailure(
        ErrorCategory.PROVIDER_ERROR, redact_text(message, list(secrets)), details=details
    )


def _request_url(response: httpx.Response) -> str:
    try:
        request = response.request
    except RuntimeError:  # a Response built without a request (tests)
        return ""
    return _safe_url(request.url)


def _exception_url(exc: BaseException) -> str:
    if isinstance(exc, httpx.RequestError):
        try:
            return _safe_url(exc.request.url)
        except RuntimeError:  # raised without a request attached
            return ""
    return ""


def _safe_url(url: httpx.URL) -> str:
    # Scheme, host, port and path only: query strings can carry anything.
    return redact_url(str(url.copy_with(query=None, fragment=None)))
