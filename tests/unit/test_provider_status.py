"""The API's provider status without I/O: targets, rows, the report, the cache."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from ai_service.api.provider_status import (
    ProviderResult,
    ProvidersReport,
    ProviderStatusCache,
    ProviderTarget,
    probe_provider,
    provider_targets,
)
from tests.helpers import make_settings


def _report(*oks: tuple[bool, bool]) -> ProvidersReport:
    rows = tuple(
        ProviderResult(
            name=f"p{i}",
            instance=None,
            configured=configured,
            ok=ok,
            latency_ms=None,
            base_url=None,
            model=None,
            models=(),
            detail="",
        )
        for i, (configured, ok) in enumerate(oks)
    )
    return ProvidersReport(checked_at=datetime.now(UTC), providers=rows)


def test_targets_list_every_provider_in_order_even_unconfigured() -> None:
    targets = provider_targets(make_settings())
    assert [(t.name, t.url) for t in targets] == [
        ("llm", None),
        ("whisperx", None),
        ("qwen2-audio", None),
        ("voxtral-small", None),
    ]
    assert [t.variable for t in targets] == [
        "LLM_BASE_URL",
        "WHISPERX_URL",
        "QWEN_AUDIO_BASE_URL",
        "VOXTRAL_BASE_URL",
    ]


def test_targets_number_whisperx_instances_and_use_effective_audio_keys() -> None:
    settings = make_settings(
        WHISPERX_URL="http://a:9000,http://b:9001",
        LLM_BASE_URL="http://llm:8000",
        LLM_API_KEY="llm-key",
        QWEN_AUDIO_BASE_URL="http://q:8003",
        VOXTRAL_BASE_URL="http://v:8004",
        VOXTRAL_API_KEY="vox-key",
    )
    by_name = {(t.name, t.instance): t for t in provider_targets(settings)}
    assert by_name[("whisperx", 1)].url == "http://a:9000"
    assert by_name[("whisperx", 2)].url == "http://b:9001"
    assert by_name[("llm", None)].api_key == "llm-key"
    assert by_name[("llm", None)].model == "qwen2.5-14b"
    assert by_name[("qwen2-audio", None)].api_key == "llm-key"  # falls back to LLM_API_KEY
    assert by_name[("voxtral-small", None)].api_key == "vox-key"


async def test_unconfigured_provider_row_names_its_variable_and_is_not_probed() -> None:
    target = ProviderTarget(
        name="voxtral-small", kind="openai", variable="VOXTRAL_BASE_URL", url=None
    )
    # A client that fails any request proves that no request is made.
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: pytest.fail("probed")))
    async with client:
        row = await probe_provider(client, target, 1.0, [])
    assert (row.configured, row.ok, row.latency_ms, row.base_url) == (False, False, None, None)
    assert row.detail == "not configured (set VOXTRAL_BASE_URL)"


def test_report_is_ok_when_every_configured_provider_is_ok() -> None:
    assert _report((True, True), (False, False)).ok
    assert not _report((True, True), (True, False)).ok


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_cache_serves_the_same_report_within_ttl_without_probing() -> None:
    clock = FakeClock()
    cache = ProviderStatusCache(5.0, clock=clock)
    calls = 0

    async def probe() -> ProvidersReport:
        nonlocal calls
        calls += 1
        return _report((True, True))

    first, first_cached = await cache.get(probe)
    clock.now += 4.9
    second, second_cached = await cache.get(probe)
    assert calls == 1
    assert (first_cached, second_cached) == (False, True)
    assert second is first


async def test_cache_probes_again_after_ttl() -> None:
    clock = FakeClock()
    cache = ProviderStatusCache(5.0, clock=clock)
    calls = 0

    async def probe() -> ProvidersReport:
        nonlocal calls
        calls += 1
        return _report((True, True))

    await cache.get(probe)
    clock.now += 5.0
    _, cached = await cache.get(probe)
    assert calls == 2
    assert not cached


async def test_concurrent_misses_share_one_probe() -> None:
    cache = ProviderStatusCache(5.0)
    release = asyncio.Event()
    calls = 0

    async def probe() -> ProvidersReport:
        nonlocal calls
        calls += 1
        await release.wait()
        return _report((True, True))

    waiters = [asyncio.create_task(cache.get(probe)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters)
    assert calls == 1
    assert len({id(report) for report, _ in results}) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_probe() -> None:
    cache = ProviderStatusCache(5.0)
    release = asyncio.Event()

    async def probe() -> ProvidersReport:
        await release.wait()
        return _report((True, True))

    impatient = asyncio.create_task(cache.get(probe))
    patient = asyncio.create_task(cache.get(probe))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    report, cached = await patient
    assert report.ok
    assert not cached
    assert impatient.cancelled()


async def test_zero_ttl_probes_every_time() -> None:
    cache = ProviderStatusCache(0.0)
    calls = 0

    async def probe() -> ProvidersReport:
        nonlocal calls
        calls += 1
        return _report((True, True))

    await cache.get(probe)
    await cache.get(probe)
    assert calls == 2


async def test_a_failed_probe_is_not_cached() -> None:
    cache = ProviderStatusCache(60.0)
    outcomes: list[ProvidersReport | Exception] = [RuntimeError("boom"), _report((True, True))]

    async def probe() -> ProvidersReport:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(RuntimeError):
        await cache.get(probe)
    report, cached = await cache.get(probe)
    assert report.ok
    assert not cached
