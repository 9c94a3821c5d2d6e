"""`GET /api/v1/providers/status`: the configured AI providers, probed and cached.

One row per provider: the text LLM (`LLM_BASE_URL`), every WhisperX instance
(`WHISPERX_URL`), Qwen2-Audio (`QWEN_AUDIO_BASE_URL`) and Voxtral
(`VOXTRAL_BASE_URL`). Unconfigured providers get a row too (`configured`
false), so a dashboard shows what is missing instead of hiding it. The
probes themselves (what each kind of server must answer) are
`providers.probes`. A WhisperX instance that is transcribing accepts the
connection but answers nothing: its row is `ok` and `busy`, not down.

All probes run concurrently, each bounded by `PROVIDER_PROBE_TIMEOUT`.
`ProviderStatusCache` keeps the last report for `PROVIDER_STATUS_CACHE`
seconds and lets concurrent callers share one probe, so dashboards cannot
storm the AI server.

No secret reaches a row: base URLs are shown through `redact_url`, and the
probes clean every error text of its URLs and of every secret of the settings
(`redact.settings_secrets`). Credentials embedded in a WhisperX URL
(`user:password@`, a basic-auth proxy) are sent as HTTP Basic auth;
OpenAI-compatible base URLs cannot hold any (refused at start, their key
variables carry the Bearer key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import httpx

from ai_service.config import Settings
from ai_service.providers.probes import ProbeOutcome, describe_error, probe_openai, probe_whisperx
from ai_service.redact import redact_url, settings_secrets

log = logging.getLogger("ai_service.provider_status")

ProviderKind = Literal["openai", "whisperx"]


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
    busy: bool = False  # a WhisperX instance that is transcribing (ok, but no answer)


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


# -- probes ---------------------------------------------------------------------


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
    if target.kind == "whisperx":
        # Bounded by `timeout` itself: an outer deadline would hide a busy instance.
        outcome = await probe_whisperx(client, target.url, timeout, secrets)
    else:
        try:
            async with asyncio.timeout(timeout):
                outcome = await probe_openai(
                    client, target.url, target.model, target.api_key, timeout, secrets
                )
        except Exception as exc:  # a status row must describe any failure, never raise
            outcome = ProbeOutcome(False, describe_error(exc, secrets, timeout))
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
        models=outcome.models,
        detail=outcome.detail,
        busy=outcome.busy,
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
