"""Reachability of the WhisperX instances (`WHISPERX_URL`).

whisper-asr-webservice has no health endpoint, so the probe is the one the
API's provider status uses (`providers.probes.probe_whisperx`: `/docs` 200,
else `/health` 200). An instance that accepts the connection but answers
nothing in time is transcribing: `reachable` and `busy`, not down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx

from ai_service.providers.probes import probe_whisperx
from ai_service.redact import redact_url, url_secrets
from ai_service.sidecar.schemas import WhisperxInstance, WhisperxSection


async def check_whisperx(client: httpx.AsyncClient, url: str, timeout: float) -> WhisperxInstance:
    """Probe one instance; failures become `reachable=False` with the reason."""
    secrets: list[str | None] = [*url_secrets(url)]
    start = time.perf_counter()
    # Bounded by `timeout` and never raising: one instance cannot hide the others.
    outcome = await probe_whisperx(client, url, timeout, secrets)
    return WhisperxInstance(
        url=redact_url(url),
        reachable=outcome.ok,
        busy=outcome.busy,
        latency_ms=round((time.perf_counter() - start) * 1000, 1),
        detail=outcome.detail,
    )


async def collect_whisperx(
    client: httpx.AsyncClient, urls: Sequence[str], timeout: float
) -> WhisperxSection:
    """The `whisperx` section: every instance, probed concurrently."""
    if not urls:
        return WhisperxSection(available=False, reason="WHISPERX_URL is not set")
    instances = await asyncio.gather(*(check_whisperx(client, url, timeout) for url in urls))
    return WhisperxSection(available=True, instances=list(instances))
