"""Live figures of vLLM servers from their Prometheus `/metrics`.

The text is parsed by `providers.vllm_metrics` (shared with the worker's
adaptive LLM limit); this module fetches it and shapes the sidecar's section.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict

import httpx

from ai_service.providers.probes import clean_text, describe_error
from ai_service.providers.vllm_metrics import MetricsFormatError, metrics_url
from ai_service.providers.vllm_metrics import parse_vllm_metrics as parse_figures
from ai_service.redact import redact_url, url_secrets
from ai_service.sidecar.schemas import VllmInstance, VllmSection

__all__ = ["MetricsFormatError", "collect_vllm", "metrics_url", "parse_vllm_metrics", "read_vllm"]


def parse_vllm_metrics(text: str, url: str) -> VllmInstance:
    """Turn one `/metrics` text into a `VllmInstance` (`url` is shown as given).

    Raises `MetricsFormatError` when the text cannot be parsed or has no
    `vllm:` samples at all (a URL pointing at some other exporter).
    """
    figures = asdict(parse_figures(text))
    shown = {k: v for k, v in figures.items() if k in VllmInstance.model_fields}
    return VllmInstance(url=url, ok=True, **shown)


async def read_vllm(client: httpx.AsyncClient, url: str, timeout: float) -> VllmInstance:
    """Fetch and parse one server's metrics; failures become `ok=False` with the reason."""
    shown = redact_url(url)
    secrets: list[str | None] = [*url_secrets(url)]
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            target, headers = metrics_url(url)
            response = await client.get(target, headers=headers, timeout=timeout)
        if response.status_code != 200:
            raise MetricsFormatError(f"GET /metrics answered HTTP {response.status_code}")
        instance = parse_vllm_metrics(response.text, shown)
    except MetricsFormatError as exc:
        return VllmInstance(url=shown, ok=False, error=clean_text(str(exc), secrets))
    except Exception as exc:  # one unreadable server must not hide the others
        return VllmInstance(url=shown, ok=False, error=describe_error(exc, secrets, timeout))
    instance.latency_ms = round((time.perf_counter() - start) * 1000, 1)
    return instance


async def collect_vllm(
    client: httpx.AsyncClient, urls: Sequence[str], timeout: float
) -> VllmSection:
    """The `vllm` section: every `VLLM_METRICS_URLS` entry, read concurrently."""
    if not urls:
        return VllmSection(available=False, reason="VLLM_METRICS_URLS is not set")
    instances = await asyncio.gather(*(read_vllm(client, url, timeout) for url in urls))
    if not any(instance.ok for instance in instances):
        return VllmSection(
            available=False,
            reason="no vLLM metrics endpoint could be read",
            instances=list(instances),
        )
    return VllmSection(available=True, instances=list(instances))
