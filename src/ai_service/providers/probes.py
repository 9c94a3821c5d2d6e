"""Probes of the remote AI servers, and secret-free descriptions of their failures.

    server kind          probe                                   ok when
    -------------------  --------------------------------------  ---------------------------
    OpenAI-compatible    GET {base}/v1/models (Bearer key)       200 and the model is listed
    WhisperX             GET {base}/docs, else GET {base}/health  one of them answers 200, or
                                                                 it is busy (below)

A WhisperX server that is transcribing answers nothing at all:
whisper-asr-webservice runs the model in its event loop's thread, so even
`GET /docs` waits until the transcription ends. A probe that connected but
got no answer in time is therefore `busy` (up, working), not down: `ok` and
`busy` are both true. Down is what never connects: connection refused, a
name that does not resolve, a connect timeout, or an HTTP answer other than
200 (a proxy's 502).

Used by the API's provider status (`api.provider_status`) and by the
sidecar, which runs on the AI server as a program of its own: this module
depends on nothing but httpx and the URL and redaction helpers.

Error texts (which may quote URLs) have URLs redacted and every known secret
masked (`redact.redact_text`), and are shortened. Probe URLs are built with
`urls.request_target`, as the workers build theirs (the path goes before a
base URL's query string, credentials embedded in a URL become HTTP Basic auth).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ai_service.redact import redact_text, redact_url
from ai_service.urls import request_target, url_path

# Longest error detail kept (server bodies can be whole HTML pages).
_MAX_DETAIL = 300
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


@dataclass(frozen=True)
class ProbeOutcome:
    """What one probe found: ok or not, why, and the models a server lists."""

    ok: bool
    detail: str
    models: tuple[str, ...] = ()
    busy: bool = False  # connected, but no answer in time: working, not down (WhisperX)


def clean_text(text: str, secrets: Sequence[str | None]) -> str:
    """`text` with every URL redacted and every known secret masked, shortened."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    text = redact_text(text, list(secrets))
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return text


def describe_error(exc: BaseException, secrets: Sequence[str | None], timeout: float) -> str:
    """A short, secret-free description of a failed request."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        prefix = "connection failed"
    elif isinstance(exc, httpx.HTTPError):
        prefix = "request failed"
    else:
        prefix = type(exc).__name__
    message = clean_text(str(exc), secrets)
    return f"{prefix}: {message}" if message else prefix


def models_path(url: str) -> str:
    """`/v1/models`, or `/models` when the base URL already ends with `/v1`."""
    return "/models" if url_path(url).endswith("/v1") else "/v1/models"


def _server_text(response: httpx.Response) -> str:
    """The error message of a non-2xx answer, from the common JSON shapes or the text."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return ""


async def probe_openai(
    client: httpx.AsyncClient,
    url: str,
    model: str | None,
    api_key: str | None,
    timeout: float,
    secrets: Sequence[str | None],
) -> ProbeOutcome:
    """An OpenAI-compatible server at `url`: ok when `GET /v1/models` lists `model`.

    `api_key` goes in a Bearer header. Transport errors propagate to the caller.
    """
    target, headers = request_target(url, models_path(url))
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    response = await client.get(target, headers=headers, timeout=timeout)
    if response.status_code != 200:
        message = clean_text(_server_text(response), secrets)
        hint = " (check the API key)" if response.status_code in (401, 403) else ""
        detail = f"GET /v1/models answered HTTP {response.status_code}{hint}"
        return ProbeOutcome(False, f"{detail}: {message}" if message else detail)
    try:
        body: Any = response.json()
        models = tuple(str(item["id"]) for item in body["data"])
    except (ValueError, KeyError, TypeError):
        return ProbeOutcome(False, "GET /v1/models answered 200 without a model list")
    served = ", ".join(models) if models else "nothing"
    if model not in models:
        return ProbeOutcome(False, f"model {model} is not served; serves: {served}", models)
    return ProbeOutcome(True, f"serves: {served}", models)


async def probe_whisperx(
    client: httpx.AsyncClient, url: str, timeout: float, secrets: Sequence[str | None] = ()
) -> ProbeOutcome:
    """Reachability of one WhisperX instance: `/docs` 200, else `/health` 200, or busy.

    whisper-asr-webservice has no health endpoint (its FastAPI `/docs`
    answers); whisperx-asr-service has `GET /health`. The whole probe takes at
    most `timeout` seconds and never raises: a failure is an outcome whose
    detail says why (secret-free). An instance that accepted the connection
    but did not answer within `timeout` is busy transcribing (see the module
    doc): `ok=True, busy=True`.
    """
    connected = False

    async def trace(event: str, info: dict[str, Any]) -> None:
        # Headers go out only on an established connection (new or kept alive).
        nonlocal connected
        if event.endswith("send_request_headers.started"):
            connected = True

    answers: list[str] = []
    path = "/docs"
    try:
        async with asyncio.timeout(timeout):
            for path in ("/docs", "/health"):
                target, headers = request_target(url, path)
                response = await client.get(
                    target, headers=headers, timeout=timeout, extensions={"trace": trace}
                )
                if response.status_code == 200:
                    return ProbeOutcome(True, f"reachable (GET {path} answered 200)")
                answers.append(f"GET {path} answered HTTP {response.status_code}")
    except (TimeoutError, httpx.TimeoutException) as exc:
        if connected and not isinstance(exc, httpx.ConnectTimeout):
            return ProbeOutcome(
                True,
                f"busy: connected, but GET {path} did not answer within {timeout:g} s "
                "(the server answers nothing while it transcribes)",
                busy=True,
            )
        return ProbeOutcome(False, f"no connection within {timeout:g} s")
    except Exception as exc:  # a probe reports any failure, never raises
        return ProbeOutcome(False, describe_error(exc, secrets, timeout))
    return ProbeOutcome(False, clean_text("; ".join(answers), secrets))
