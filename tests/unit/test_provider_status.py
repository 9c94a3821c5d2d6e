"""Provider-status logic without I/O: targets, URLs, secret cleaning, the cache."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime

import httpx
import pytest

from ai_service import redact
from ai_service.provider_status import (
    ProviderResult,
    ProvidersReport,
    ProviderStatusCache,
    ProviderTarget,
    clean_text,
    describe_error,
    models_path,
    probe_provider,
    provider_targets,
    request_target,
)
from ai_service.redact import url_secrets
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


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1/models"),
        ("http://h:8000/", "http://h:8000/v1/models"),
        ("http://h:8000/v1", "http://h:8000/v1/models"),
        ("http://h:8000/v1/", "http://h:8000/v1/models"),
        ("http://h/proxy/v1?api_key=x", "http://h/proxy/v1/models?api_key=x"),
    ],
)
def test_models_url_accepts_base_urls_with_or_without_v1(base: str, expected: str) -> None:
    url, _ = request_target(base, models_path(base))
    assert str(url) == expected


def test_request_target_moves_credentials_into_a_basic_header() -> None:
    url, headers = request_target("http://us%40er:p%3Ass@h:9000/?token=t1", "/docs")
    assert str(url) == "http://h:9000/docs?token=t1"
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"us@er:p:ss").decode()}


def test_request_target_without_credentials_has_no_header() -> None:
    assert request_target("http://h:9000", "/docs")[1] == {}


def test_url_secrets_finds_user_info_and_secret_query_values() -> None:
    secrets = url_secrets("http://alice:pa%40ss@h/v1?api_key=abc123&model=m&access_token=tok9")
    assert {"pa%40ss", "pa@ss", "alice:pa@ss", "abc123", "tok9"} <= set(secrets)
    assert "m" not in secrets
    assert "alice" not in secrets  # an account name, not a secret, next to a password
    assert url_secrets("https://ghp_token123@h/") == ["ghp_token123"]


def test_clean_text_redacts_urls_and_masks_known_secrets() -> None:
    text = (
        "failed GET http://bob:hunter22@10.0.0.1:8000/v1/models?api_key=qs-secret "
        "with key sk-live-1234"
    )
    cleaned = clean_text(text, ["sk-live-1234"])
    for secret in ("bob", "hunter22", "qs-secret", "sk-live-1234"):
        assert secret not in cleaned
    assert "10.0.0.1:8000/v1/models" in cleaned


def test_clean_text_shortens_long_bodies() -> None:
    assert len(clean_text("x" * 5000, [])) == 300


def test_describe_error_never_quotes_a_url_with_credentials() -> None:
    exc = httpx.ConnectError("cannot connect to http://u:secret-pw@h:1/?api_key=k-99")
    described = describe_error(exc, ["secret-pw"], 3.0)
    assert described.startswith("connection failed: ")
    assert "secret-pw" not in described
    assert "k-99" not in described


def test_describe_error_names_the_timeout() -> None:
    assert describe_error(httpx.ReadTimeout("x"), [], 2.5) == "no answer within 2.5 s"
    assert describe_error(TimeoutError(), [], 1.0) == "no answer within 1 s"


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


def test_settings_secrets_cover_keys_tokens_and_url_credentials() -> None:
    settings = make_settings(
        AI_SERVICE_TOKEN="svc-token",
        LLM_BASE_URL="http://h:8000?api_key=llm-q",
        WHISPERX_URL="http://u:llm-pw@h:9000",
        VLLM_METRICS_URLS="http://m:metrics-pw@h:8000/metrics",
        INFRA_STATUS_TOKEN="infra-tok",
    )
    secrets = redact.settings_secrets(settings)
    for secret in ("svc-token", "llm-pw", "llm-q", "metrics-pw", "infra-tok"):
        assert secret in secrets
