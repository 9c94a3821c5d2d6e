"""`GET /api/v1/providers/status` and `GET /api/v1/infra/status`.

Providers: every configured AI provider probed concurrently (see
`api.provider_status`), cached per app for `PROVIDER_STATUS_CACHE`
seconds. Infra: the AI-server sidecar's `/status` (at `INFRA_STATUS_URL`,
bearer `INFRA_STATUS_TOKEN`) passed through with `fetched_at`; 502 with the
error envelope when the sidecar cannot be read. Neither answer ever contains
a secret: URLs are redacted and error texts cleaned.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, ValidationError

from ai_service import errors
from ai_service.api import provider_status
from ai_service.api.deps import HttpDep, SettingsDep
from ai_service.api.errors import responses
from ai_service.config import Settings
from ai_service.error_envelope import ErrorOut
from ai_service.providers.probes import describe_error
from ai_service.redact import redact_url, settings_secrets
from ai_service.sidecar.schemas import (
    ContainersSection,
    GpuSection,
    SidecarStatus,
    VllmSection,
    WhisperxSection,
)
from ai_service.urls import request_target, url_path

# The sidecar bounds each of its sources by PROVIDER_PROBE_TIMEOUT; give it a
# little longer than that to answer so that a slow source shows up as an
# unavailable section rather than as a 502.
INFRA_EXTRA_SECONDS = 2.0

router = APIRouter(prefix="/api/v1", tags=["infra"])


class ProviderStatusOut(BaseModel):
    """One provider's probe result."""

    name: str = Field(description="`llm`, `whisperx`, `qwen2-audio` or `voxtral-small`.")
    instance: int | None = Field(
        description="1-based position in `WHISPERX_URL` for WhisperX instances, else null."
    )
    configured: bool
    ok: bool = Field(
        description="Reachable (or busy) and, for OpenAI-compatible servers, model listed."
    )
    busy: bool = Field(
        description="A WhisperX instance that accepted the probe's connection but did not "
        "answer in time: it is transcribing (it answers nothing meanwhile), not down."
    )
    latency_ms: float | None = Field(description="Duration of the probe; null when not probed.")
    base_url: str | None = Field(description="Configured URL with credentials removed.")
    model: str | None = Field(description="Model the service expects the server to list.")
    models: list[str] = Field(description="Models the server lists (`/v1/models`).")
    detail: str = Field(description="Served models, or why the provider is not ok.")


class ProvidersStatusOut(BaseModel):
    """Every provider, configured or not."""

    ok: bool = Field(description="Every configured provider is ok.")
    checked_at: datetime = Field(description="When the probes ran.")
    cached: bool = Field(description="Served from the cache (PROVIDER_STATUS_CACHE).")
    providers: list[ProviderStatusOut]


class InfraStatusOut(BaseModel):
    """The sidecar's telemetry, or only `configured: false` when INFRA_STATUS_URL is unset."""

    configured: bool
    fetched_at: datetime | None = None
    url: str | None = Field(default=None, description="The sidecar URL, credentials removed.")
    collected_at: datetime | None = Field(default=None, description="When the sidecar read it.")
    gpu: GpuSection | None = None
    containers: ContainersSection | None = None
    vllm: VllmSection | None = None
    whisperx: WhisperxSection | None = None


async def get_provider_cache(
    request: Request, settings: SettingsDep
) -> provider_status.ProviderStatusCache:
    """The app's provider-status cache, created on first use (one per app)."""
    state = request.app.state
    cache: provider_status.ProviderStatusCache | None = getattr(
        state, "provider_status_cache", None
    )
    if cache is None:
        # No await between the check and the assignment: concurrent requests
        # on the event loop cannot create two caches.
        cache = provider_status.ProviderStatusCache(settings.provider_status_cache)
        state.provider_status_cache = cache
    return cache


ProviderCacheDep = Annotated[provider_status.ProviderStatusCache, Depends(get_provider_cache)]


@router.get(
    "/providers/status",
    response_model=ProvidersStatusOut,
    responses=responses(),
    summary="Probe the configured AI providers (cached briefly, no secrets)",
)
async def providers_status(
    settings: SettingsDep, http: HttpDep, cache: ProviderCacheDep
) -> ProvidersStatusOut:
    report, cached = await cache.get(lambda: provider_status.probe_all(settings, http))
    return ProvidersStatusOut(
        ok=report.ok,
        checked_at=report.checked_at,
        cached=cached,
        providers=[
            ProviderStatusOut(
                name=p.name,
                instance=p.instance,
                configured=p.configured,
                ok=p.ok,
                busy=p.busy,
                latency_ms=p.latency_ms,
                base_url=p.base_url,
                model=p.model,
                models=list(p.models),
                detail=p.detail,
            )
            for p in report.providers
        ],
    )


_INFRA_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(),
    502: {"model": ErrorOut, "description": "The sidecar is down or answered an error"},
}


@router.get(
    "/infra/status",
    response_model=InfraStatusOut,
    response_model_exclude_unset=True,
    responses=_INFRA_RESPONSES,
    summary="AI-server telemetry from the sidecar (GPU, containers, vLLM, WhisperX)",
)
async def infra_status(settings: SettingsDep, http: HttpDep) -> InfraStatusOut:
    if not settings.infra_status_url:
        return InfraStatusOut(configured=False)
    status = await fetch_sidecar(settings, http)
    return InfraStatusOut(
        configured=True,
        fetched_at=datetime.now(UTC),
        url=redact_url(settings.infra_status_url),
        collected_at=status.collected_at,
        gpu=status.gpu,
        containers=status.containers,
        vllm=status.vllm,
        whisperx=status.whisperx,
    )


def sidecar_status_target(url: str) -> tuple[str, dict[str, str]]:
    """`INFRA_STATUS_URL` as given when its path ends with `/status`, else with `/status` added."""
    return request_target(url, "" if url_path(url).endswith("/status") else "/status")


async def fetch_sidecar(settings: Settings, http: httpx.AsyncClient) -> SidecarStatus:
    """Read the sidecar; raise `UpstreamUnavailable` (502) with a secret-free message."""
    assert settings.infra_status_url is not None
    shown = redact_url(settings.infra_status_url)
    secrets = settings_secrets(settings)
    timeout = settings.provider_probe_timeout + INFRA_EXTRA_SECONDS
    url, headers = sidecar_status_target(settings.infra_status_url)
    if settings.infra_status_token:
        headers["Authorization"] = f"Bearer {settings.infra_status_token}"
    try:
        response = await http.get(url, headers=headers, timeout=timeout)
    except Exception as exc:  # any transport failure is the sidecar being unavailable
        reason = describe_error(exc, secrets, timeout)
        raise errors.UpstreamUnavailable(
            f"sidecar at {shown} is unreachable: {reason}", {"url": shown}
        ) from None
    if not response.is_success:
        raise errors.UpstreamUnavailable(
            f"sidecar at {shown} answered HTTP {response.status_code}",
            {"url": shown, "status": response.status_code},
        )
    try:
        return SidecarStatus.model_validate(response.json())
    except (ValueError, ValidationError):
        # ValidationError texts quote the input: never pass them on.
        raise errors.UpstreamUnavailable(
            f"sidecar at {shown} answered a body that is not a status document", {"url": shown}
        ) from None
