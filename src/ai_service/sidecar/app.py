"""`create_app(settings)`: the sidecar's HTTP app (`GET /status`, `GET /healthz`).

`/status` needs `Authorization: Bearer <SIDECAR_TOKEN>` when the token is set
(constant-time comparison); `/healthz` is always open, for container health
checks. The four sections are collected concurrently; each is bounded by
`PROVIDER_PROBE_TIMEOUT`, and a section that fails for any reason is reported
unavailable instead of failing the request.

The sidecar is a program of its own, deployed on the AI server: it imports
nothing of the job service (API, store, database, workers; see
tests/unit/test_sidecar_boundary.py), only the shared error envelope,
settings, probes and redaction.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ai_service import error_envelope, errors
from ai_service.config import Settings
from ai_service.error_envelope import ErrorOut
from ai_service.sidecar.containers import collect_containers
from ai_service.sidecar.gpu import GpuCollector
from ai_service.sidecar.schemas import (
    ContainersSection,
    GpuSection,
    HealthOut,
    SidecarStatus,
    VllmSection,
    WhisperxSection,
)
from ai_service.sidecar.vllm_metrics import collect_vllm
from ai_service.sidecar.whisperx import collect_whisperx

log = logging.getLogger("ai_service.sidecar")

S = TypeVar("S")

# Extra time a collector gets beyond the probe timeout before it is abandoned:
# the collectors bound themselves; this only catches one that does not.
_GRACE_SECONDS = 1.0

_bearer = HTTPBearer(auto_error=False, description="SIDECAR_TOKEN, when configured")


async def _guarded(
    section: str, work: Awaitable[S], unavailable: Callable[[str], S], timeout: float
) -> S:
    """Run one collector; any failure becomes an unavailable section with the reason."""
    try:
        return await asyncio.wait_for(work, timeout + _GRACE_SECONDS)
    except TimeoutError:
        return unavailable(f"no reading within {timeout:g} s")
    except Exception as exc:  # /status must answer whatever one source does
        log.warning("sidecar section %s failed: %s", section, type(exc).__name__)
        return unavailable(f"collector failed: {type(exc).__name__}")


def create_app(settings: Settings, *, nvml: Any | None = None) -> FastAPI:
    """Build the sidecar app. `nvml` replaces the `pynvml` module (tests)."""
    gpu = GpuCollector(nvml)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        http = httpx.AsyncClient(timeout=settings.provider_probe_timeout, follow_redirects=False)
        app.state.http = http
        try:
            yield
        finally:
            await http.aclose()
            await asyncio.to_thread(gpu.close)

    async def require_sidecar_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        expected = settings.sidecar_token
        if expected is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise errors.Unauthorized("missing or wrong bearer token")

    app = FastAPI(
        title="AI Service sidecar",
        version="0.1.0",
        description="AI-server telemetry: GPUs, containers, vLLM and WhisperX.",
        lifespan=lifespan,
    )
    error_envelope.install(app, log)

    @app.get("/healthz", response_model=HealthOut, summary="Process health (open)")
    async def healthz() -> HealthOut:
        return HealthOut(status="ok")

    @app.get(
        "/status",
        response_model=SidecarStatus,
        dependencies=[Depends(require_sidecar_token)],
        responses={401: {"model": ErrorOut, "description": "Missing or wrong bearer token"}},
        summary="GPU, container, vLLM and WhisperX telemetry",
    )
    async def status(request: Request) -> SidecarStatus:
        http: httpx.AsyncClient = request.app.state.http
        timeout = settings.provider_probe_timeout
        gpu_section, containers, vllm, whisperx = await asyncio.gather(
            _guarded(
                "gpu",
                gpu.collect(),
                lambda reason: GpuSection(available=False, reason=reason),
                timeout,
            ),
            _guarded(
                "containers",
                collect_containers(settings.docker_socket, timeout),
                lambda reason: ContainersSection(available=False, reason=reason),
                timeout,
            ),
            _guarded(
                "vllm",
                collect_vllm(http, settings.vllm_metrics_urls, timeout),
                lambda reason: VllmSection(available=False, reason=reason),
                timeout,
            ),
            _guarded(
                "whisperx",
                collect_whisperx(http, settings.whisperx_url, timeout),
                lambda reason: WhisperxSection(available=False, reason=reason),
                timeout,
            ),
        )
        return SidecarStatus(
            collected_at=datetime.now(UTC),
            gpu=gpu_section,
            containers=containers,
            vllm=vllm,
            whisperx=whisperx,
        )

    return app
