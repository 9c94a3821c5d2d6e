"""Probing the configured AI providers, for `GET /api/v1/providers/status`.

One row per provider: the text LLM (`LLM_BASE_URL`), every WhisperX instance
(`WHISPERX_URL`), Qwen2-Audio (`QWEN_AUDIO_BASE_URL`) and Voxtral
(`VOXTRAL_BASE_URL`). Unconfigured providers get a row too (`configured`
false), so a dashboard shows what is missing instead of hiding it.

    provider kind        probe                                   ok when
    -------------------  --------------------------------------  ---------------------------
    OpenAI-compatible    GET {base}/v1/models (Bearer key)       200 and the model is listed
    WhisperX             GET {base}/docs, else GET {base}/health  one of them answers 200

All probes run concurrently, each bounded by `PROVIDER_PROBE_TIMEOUT`.
`ProviderStatusCache` keeps the last report for `PROVIDER_STATUS_CACHE`
seconds and lets concurrent callers share one probe, so dashboards cannot
storm the AI server.

Secrets never leave this module: base URLs are shown through `redact_url`,
and error texts (which may quote URLs) have URLs redacted and every known
secret masked (`redact.Redactor`: values and their encoded forms). Probe
URLs are built with `urls.request_target`, as the workers build theirs (the
path goes before a base URL's query string). Credentials embedded in a
WhisperX URL (`user:password@`, a basic-auth proxy) are sent as HTTP Basic
auth; OpenAI-compatible base URLs cannot hold any (refused at start, their
key variables carry the Bearer key).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from ai_service.config import Settings
from ai_service.redact import redact_text, redact_url, settings_secrets
from ai_service.urls import request_target, url_path

log = logging.getLogger("ai_service.provider_status")

ProviderKind = Literal["openai", "whisperx"]

# Longest error detail kept in a row (server bodies can be whole HTML pages).
_MAX_DETAIL = 300
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


@dataclass(frozen=True)
class ProviderTarget:
    """One provider to probe, as configured (the URL is raw: never show it)."""

    name: str
    kind: ProviderKind
    variable: str  # the environment variable that configures it
    url: str | None
    model: str | None = None
    api_key: str | None = None
    instance: int | None = None


@dataclass(frozen=True)
class ProviderResult:
    """The outcome of probing one provider. `base_url` is already redacted."""

    name: str
    instance: int | None
    configured: bool
    ok: bool
    latency_ms: float | None
    base_url: str | None
    model: str | None
    models: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class ProvidersReport:
    """Every provider's result, in a stable order, and when they were probed."""

    checked_at: datetime
    providers: tuple[ProviderResult, ...]

    @property
    def ok(self) -> bool:
        """True when every configured provider answered as expected."""
        return all(p.ok for p in self.providers if p.configured)


def provider_targets(settings: Settings) -> list[ProviderTarget]:
    """The providers to report on, configured or not, in display order."""
    targets = [
        ProviderTarget(
            name="llm",
            kind="openai",
            variable="LLM_BASE_URL",
            url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
        )
    ]
    if settings.whisperx_url:
        targets.extend(
            ProviderTarget(
                name="whisperx", kind="whisperx", variable="WHISPERX_URL", url=url, instance=i
            )
            for i, url in enumerate(settings.whisperx_url, start=1)
        )
    else:
        targets.append(
            ProviderTarget(name="whisperx", kind="whisperx", variable="WHISPERX_URL", url=None)
        )
    for name in ("qwen2-audio", "voxtral-small"):
        endpoint = settings.audio_llm(name)
        targets.append(
            ProviderTarget(
                name=name,
                kind="openai",
                variable=endpoint.variable,
                url=endpoint.base_url,
                model=endpoint.model,
                api_key=endpoint.api_key,
            )
        )
    return targets


# -- URLs and secrets ---------------------------------------------------------


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


# -- probes ---------------------------------------------------------------------


@dataclass
class _Outcome:
    ok: bool
    detail: str
    models: list[str] = field(default_factory=list)


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


async def _probe_openai(
    client: httpx.AsyncClient, target: ProviderTarget, timeout: float, secrets: list[str | None]
) -> _Outcome:
    assert target.url is not None
    url, headers = request_target(target.url, models_path(target.url))
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    response = await client.get(url, headers=headers, timeout=timeout)
    if response.status_code != 200:
        message = clean_text(_server_text(response), secrets)
        hint = " (check the API key)" if response.status_code in (401, 403) else ""
        detail = f"GET /v1/models answered HTTP {response.status_code}{hint}"
        return _Outcome(False, f"{detail}: {message}" if message else detail)
    try:
        body: Any = response.json()
        models = [str(item["id"]) for item in body["data"]]
    except (ValueError, KeyError, TypeError):
        return _Outcome(False, "GET /v1/models answered 200 without a model list")
    served = ", ".join(models) if models else "nothing"
    if target.model not in models:
        return _Outcome(False, f"model {target.model} is not served; serves: {served}", models)
    return _Outcome(True, f"serves: {served}", models)


async def probe_whisperx(
    client: httpx.AsyncClient, url: str, timeout: float, secrets: Sequence[str | None] = ()
) -> tuple[bool, str]:
    """Reachability of one WhisperX instance: `/docs` 200, else `/health` 200.

    whisper-asr-webservice has no health endpoint (its FastAPI `/docs`
    answers); whisperx-asr-service has `GET /health`. Returns `(ok, detail)`;
    transport errors propagate to the caller.
    """
    answers: list[str] = []
    for path in ("/docs", "/health"):
        target, headers = request_target(url, path)
        response = await client.get(target, headers=headers, timeout=timeout)
        if response.status_code == 200:
            return True, f"reachable (GET {path} answered 200)"
        answers.append(f"GET {path} answered HTTP {response.status_code}")
    return False, clean_text("; ".join(answers), secrets)


async def probe_provider(
    client: httpx.AsyncClient,
    target: ProviderTarget,
    timeout: float,
    secrets: list[str | None],
) -> ProviderResult:
    """Probe one provider; never raises (failures become the row's detail)."""
    if target.url is None:
        return ProviderResult(
            name=target.name,
            instance=None,
            configured=False,
            ok=False,
            latency_ms=None,
            base_url=None,
            model=target.model,
            models=(),
            detail=f"not configured (set {target.variable})",
        )
    shown_url = redact_url(target.url)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if target.kind == "openai":
                outcome = await _probe_openai(client, target, timeout, secrets)
            else:
                ok, detail = await probe_whisperx(client, target.url, timeout, secrets)
                outcome = _Outcome(ok, detail)
    except Exception as exc:  # a status row must describe any failure, never raise
        outcome = _Outcome(False, describe_error(exc, secrets, timeout))
    latency_ms = round((time.perf_counter() - start) * 1000, 1)
    if not outcome.ok:
        log.info(
            "provider %s%s at %s is not ok: %s",
            target.name,
            f"#{target.instance}" if target.instance else "",
            shown_url,
            outcome.detail,
        )
    return ProviderResult(
        name=target.name,
        instance=target.instance,
        configured=True,
        ok=outcome.ok,
        latency_ms=latency_ms,
        base_url=shown_url,
        model=target.model,
        models=tuple(outcome.models),
        detail=outcome.detail,
    )


async def probe_all(settings: Settings, client: httpx.AsyncClient) -> ProvidersReport:
    """Probe every provider concurrently; the whole call takes about one probe timeout."""
    timeout = settings.provider_probe_timeout
    secrets = settings_secrets(settings)
    targets = provider_targets(settings)
    results = await asyncio.gather(
        *(probe_provider(client, target, timeout, secrets) for target in targets)
    )
    return ProvidersReport(checked_at=datetime.now(UTC), providers=tuple(results))


# -- cache ----------------------------------------------------------------------


class ProviderStatusCache:
    """The last report, kept for `ttl` seconds; concurrent misses share one probe.

    One per application (kept in `app.state`), so each API replica probes at
    most once per `ttl` however many dashboards poll it. `clock` is injectable
    for tests.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._report: ProvidersReport | None = None
        self._stored_at = 0.0
        self._inflight: asyncio.Task[ProvidersReport] | None = None

    async def get(
        self, probe: Callable[[], Awaitable[ProvidersReport]]
    ) -> tuple[ProvidersReport, bool]:
        """The report and whether it came from the cache (False: probed for this call)."""
        if self._report is not None and self._clock() - self._stored_at < self.ttl:
            return self._report, True
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh(probe))
        # Shielded: a caller that disconnects must not cancel the probe others await.
        return await asyncio.shield(self._inflight), False

    async def _refresh(self, probe: Callable[[], Awaitable[ProvidersReport]]) -> ProvidersReport:
        try:
            report = await probe()
            self._report = report
            self._stored_at = self._clock()
            return report
        finally:
            self._inflight = None
