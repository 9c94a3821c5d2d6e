"""`GET /api/v1/providers/status` against stub AI servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tests.conftest import ApiFactory
from tests.stubs import FileServer, closed_port_url
from tests.stubs.vllm_metrics_server import VllmStub
from tests.stubs.whisperx_server import WhisperXStub, start_transcription


def rows(body: dict[str, Any]) -> dict[tuple[str, int | None], dict[str, Any]]:
    return {(p["name"], p["instance"]): p for p in body["providers"]}


async def test_one_up_one_down_one_unconfigured_gives_three_honest_rows(
    api_factory: ApiFactory,
) -> None:
    with VllmStub(models=["qwen2.5-14b", "other"]) as llm:
        dead = closed_port_url()
        async with api_factory(
            LLM_BASE_URL=llm.base_url, WHISPERX_URL=dead, PROVIDER_PROBE_TIMEOUT="2s"
        ) as api:
            started = time.monotonic()
            response = await api.get("/api/v1/providers/status")
            elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False
    assert body["cached"] is False
    by_key = rows(body)
    assert list(by_key) == [
        ("llm", None),
        ("whisperx", 1),
        ("qwen2-audio", None),
        ("voxtral-small", None),
    ]
    llm_row = by_key[("llm", None)]
    assert llm_row["configured"] is True
    assert llm_row["ok"] is True
    assert llm_row["base_url"] == llm.base_url
    assert llm_row["model"] == "qwen2.5-14b"
    assert llm_row["models"] == ["qwen2.5-14b", "other"]
    assert llm_row["detail"] == "serves: qwen2.5-14b, other"
    assert llm_row["latency_ms"] >= 0
    down = by_key[("whisperx", 1)]
    assert (down["configured"], down["ok"], down["base_url"]) == (True, False, dead)
    assert down["detail"].startswith("connection failed")
    assert down["latency_ms"] is not None
    unconfigured = by_key[("qwen2-audio", None)]
    assert (unconfigured["configured"], unconfigured["ok"]) == (False, False)
    assert unconfigured["latency_ms"] is None
    assert unconfigured["base_url"] is None
    assert unconfigured["detail"] == "not configured (set QWEN_AUDIO_BASE_URL)"
    assert elapsed < 2.0  # well within the probe timeout


async def test_a_hung_provider_is_reported_after_the_probe_timeout(
    api_factory: ApiFactory,
) -> None:
    with VllmStub(latency=30) as hung, VllmStub() as healthy:
        async with api_factory(
            LLM_BASE_URL=hung.base_url,
            QWEN_AUDIO_BASE_URL=healthy.base_url,
            QWEN_AUDIO_MODEL="qwen2.5-14b",
            PROVIDER_PROBE_TIMEOUT="0.5s",
        ) as api:
            started = time.monotonic()
            response = await api.get("/api/v1/providers/status")
            elapsed = time.monotonic() - started
    by_key = rows(response.json())
    assert by_key[("llm", None)]["ok"] is False
    assert by_key[("llm", None)]["detail"] == "no answer within 0.5 s"
    assert by_key[("qwen2-audio", None)]["ok"] is True  # probed concurrently, not blocked
    assert 0.5 <= elapsed < 3.0


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_llm_base_url_with_or_without_v1(api_factory: ApiFactory, suffix: str) -> None:
    with VllmStub() as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url + suffix) as api:
            body = (await api.get("/api/v1/providers/status")).json()
    assert rows(body)[("llm", None)]["ok"] is True


async def test_a_server_not_listing_the_model_is_not_ok(api_factory: ApiFactory) -> None:
    with VllmStub(models=["llama-3"]) as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url, LLM_MODEL="qwen2.5-14b") as api:
            row = rows((await api.get("/api/v1/providers/status")).json())[("llm", None)]
    assert row["ok"] is False
    assert row["models"] == ["llama-3"]
    assert row["detail"] == "model qwen2.5-14b is not served; serves: llama-3"


async def test_bearer_keys_are_sent_to_openai_compatible_providers(
    api_factory: ApiFactory,
) -> None:
    with (
        VllmStub(api_key="llm-key-1") as llm,
        VllmStub(models=["Qwen/Qwen2-Audio-7B-Instruct"], api_key="audio-key-2") as qwen,
        VllmStub(models=["mistralai/Voxtral-Small-24B-2507"], api_key="vox-key-3") as vox,
    ):
        async with api_factory(
            LLM_BASE_URL=llm.base_url,
            LLM_API_KEY="llm-key-1",
            QWEN_AUDIO_BASE_URL=qwen.base_url,
            AUDIO_LLM_API_KEY="audio-key-2",
            VOXTRAL_BASE_URL=vox.base_url + "/v1",
            VOXTRAL_API_KEY="vox-key-3",
        ) as api:
            body = (await api.get("/api/v1/providers/status")).json()
    by_key = rows(body)
    for name in ("llm", "qwen2-audio", "voxtral-small"):
        assert by_key[(name, None)]["ok"] is True, by_key[(name, None)]
    assert llm.authorization == ["Bearer llm-key-1"]
    assert qwen.authorization == ["Bearer audio-key-2"]
    assert vox.authorization == ["Bearer vox-key-3"]


async def test_a_rejected_key_is_not_ok_and_says_why(api_factory: ApiFactory) -> None:
    with VllmStub(api_key="right") as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url, LLM_API_KEY="wrong-key") as api:
            row = rows((await api.get("/api/v1/providers/status")).json())[("llm", None)]
    assert row["ok"] is False
    assert row["detail"] == ("GET /v1/models answered HTTP 401 (check the API key): Unauthorized")


async def test_whisperx_instances_are_probed_by_docs_or_health(api_factory: ApiFactory) -> None:
    with WhisperXStub("wx-a") as webservice, FileServer() as health_only, FileServer() as neither:
        health_only.add("/health", b'{"status": "ok"}', content_type="application/json")
        urls = f"{webservice.base_url},{health_only.base_url},{neither.base_url}"
        async with api_factory(WHISPERX_URL=urls) as api:
            body = (await api.get("/api/v1/providers/status")).json()
    by_key = rows(body)
    assert by_key[("whisperx", 1)]["ok"] is True
    assert by_key[("whisperx", 1)]["detail"] == "reachable (GET /docs answered 200)"
    assert by_key[("whisperx", 2)]["ok"] is True
    assert by_key[("whisperx", 2)]["detail"] == "reachable (GET /health answered 200)"
    assert by_key[("whisperx", 3)]["ok"] is False
    assert by_key[("whisperx", 3)]["detail"] == (
        "GET /docs answered HTTP 404; GET /health answered HTTP 404"
    )


async def test_a_whisperx_instance_that_is_transcribing_is_busy_not_down(
    api_factory: ApiFactory,
) -> None:
    with WhisperXStub("busy", latency=30.0) as busy, WhisperXStub("idle") as idle:
        dead = closed_port_url()
        urls = f"{busy.base_url},{idle.base_url},{dead}"
        async with api_factory(WHISPERX_URL=urls, PROVIDER_PROBE_TIMEOUT="0.5s") as api:
            transcribing = await start_transcription(busy)
            body = (await api.get("/api/v1/providers/status")).json()
            assert busy.busy  # its event loop stayed blocked through the probe
            busy.stop()
            await asyncio.gather(transcribing, return_exceptions=True)
    by_key = rows(body)
    working = by_key[("whisperx", 1)]
    assert (working["ok"], working["busy"]) == (True, True)
    assert working["detail"] == (
        "busy: connected, but GET /docs did not answer within 0.5 s "
        "(the server answers nothing while it transcribes)"
    )
    assert (by_key[("whisperx", 2)]["ok"], by_key[("whisperx", 2)]["busy"]) == (True, False)
    down = by_key[("whisperx", 3)]
    assert (down["ok"], down["busy"]) == (False, False)
    assert down["detail"].startswith("connection failed")
    assert by_key[("llm", None)]["busy"] is False  # the field is on every row


async def test_a_second_call_within_the_cache_time_does_not_probe_again(
    api_factory: ApiFactory,
) -> None:
    with VllmStub() as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url, PROVIDER_STATUS_CACHE="60s") as api:
            first = (await api.get("/api/v1/providers/status")).json()
            second = (await api.get("/api/v1/providers/status")).json()
    assert llm.models_requests == 1
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["checked_at"] == first["checked_at"]


async def test_concurrent_requests_share_one_probe(api_factory: ApiFactory) -> None:
    with VllmStub(latency=0.3) as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url, PROVIDER_STATUS_CACHE="60s") as api:
            responses = await asyncio.gather(
                *(api.get("/api/v1/providers/status") for _ in range(8))
            )
    assert [r.status_code for r in responses] == [200] * 8
    assert llm.models_requests == 1
    assert len({r.json()["checked_at"] for r in responses}) == 1


async def test_without_cache_time_every_call_probes(api_factory: ApiFactory) -> None:
    with VllmStub() as llm:
        async with api_factory(LLM_BASE_URL=llm.base_url, PROVIDER_STATUS_CACHE="0") as api:
            await api.get("/api/v1/providers/status")
            await api.get("/api/v1/providers/status")
    assert llm.models_requests == 2


SECRETS = (
    "llm-jwt-1001",
    "llm-q-1002",
    "sk-llm-1003",
    "wx-pw-2001",
    "wx-q-2002",
    "qwen-sig-3001",
    "qwen-q-3002",
    "sk-audio-3003",
    "vox-q-4001",
    "svc-token-5001",
)


async def test_no_secret_in_the_answer_or_the_logs(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ai_service")
    with (
        VllmStub(api_key="sk-llm-1003") as llm,
        WhisperXStub("wx") as wx,
        VllmStub(models=["mistralai/Voxtral-Small-24B-2507"], api_key="right-key") as vox,
    ):
        dead = closed_port_url().removeprefix("http://")
        env = {
            "AI_SERVICE_TOKEN": "svc-token-5001",
            "LLM_BASE_URL": f"{llm.base_url}/v1?api_key=llm-q-1002&jwt=llm-jwt-1001",
            "LLM_API_KEY": "sk-llm-1003",
            "WHISPERX_URL": (
                f"http://wxuser:wx-pw-2001@{wx.base_url[7:]}/?token=wx-q-2002,"
                f"http://wxuser:wx-pw-2001@{dead}/?token=wx-q-2002"
            ),
            "QWEN_AUDIO_BASE_URL": f"http://{dead}/v1?api_key=qwen-q-3002&sig=qwen-sig-3001",
            "AUDIO_LLM_API_KEY": "sk-audio-3003",
            "VOXTRAL_BASE_URL": f"{vox.base_url}/v1?access_token=vox-q-4001",
            "PROVIDER_PROBE_TIMEOUT": "2s",
        }
        async with api_factory(**env) as api:
            response = await api.get(
                "/api/v1/providers/status", headers={"Authorization": "Bearer svc-token-5001"}
            )
    assert response.status_code == 200
    by_key = rows(response.json())
    # Every kind of outcome happened: up, down, rejected key.
    assert by_key[("llm", None)]["ok"] is True
    assert by_key[("whisperx", 1)]["ok"] is True
    assert by_key[("whisperx", 2)]["ok"] is False
    assert by_key[("qwen2-audio", None)]["ok"] is False
    assert "401" in by_key[("voxtral-small", None)]["detail"]
    assert by_key[("llm", None)]["base_url"] == f"{llm.base_url}/v1?api_key=%2A%2A%2A&jwt=%2A%2A%2A"
    for text in (response.text, caplog.text):
        for secret in SECRETS:
            assert secret not in text
    assert "provider whisperx#2" in caplog.text  # the failures were logged, cleaned


async def test_providers_status_requires_the_service_token(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN="svc") as api:
        response = await api.get("/api/v1/providers/status")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_openapi_documents_providers_status(api_factory: ApiFactory) -> None:
    async with api_factory() as api:
        spec = (await api.get("/openapi.json")).json()
    operation = spec["paths"]["/api/v1/providers/status"]["get"]
    schema_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/ProvidersStatusOut")
    assert "401" in operation["responses"]
    fields = spec["components"]["schemas"]["ProviderStatusOut"]["properties"]
    assert {"name", "configured", "ok", "latency_ms", "detail", "base_url"} <= set(fields)
