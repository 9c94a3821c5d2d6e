"""Voxtral through vLLM's `POST /v1/audio/transcriptions` (`VOXTRAL_API=transcriptions`).

The handler is called with a real `httpx.AsyncClient` against the OpenAI stub,
which answers that route like vLLM; one job goes through the API and the real
worker. The chat path (`input_audio`) stays the default.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ai_service.jobs import is_retryable
from ai_service.store import Store
from tests.acceptance.test_transcription import (
    SHARED_KEY,
    VOXTRAL_MODEL,
    b64_job,
    fail,
    run,
    settings_for,
)
from tests.stubs import sine_wav, transcode
from tests.stubs.openai_server import OpenAIStub
from tests.workers import running_worker, wait_until_finished

ONLY_VOXTRAL = {"TRANSCRIPTION_PROVIDERS": "voxtral-small"}
TRANSCRIPTIONS = {**ONLY_VOXTRAL, "VOXTRAL_API": "transcriptions"}


@pytest.fixture
def voxtral() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=[VOXTRAL_MODEL], api_key=SHARED_KEY) as stub:
        yield stub


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def shape(value: Any) -> Any:
    """The keys and value types of a JSON document, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "duration_ms"}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


async def test_the_transcriptions_endpoint_gets_the_file_and_the_fields(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    wav = sine_wav(5.0)
    settings = settings_for(None, None, voxtral, **TRANSCRIPTIONS)

    result = await run(settings, http, b64_job(wav, language="de", prompt="Names: Weber."))

    [request] = voxtral.requests
    assert request.route == "transcriptions"
    assert request.headers["authorization"] == f"Bearer {SHARED_KEY}"
    assert request.body == {
        "model": VOXTRAL_MODEL,
        "response_format": "json",
        "temperature": "0",
        "language": "de",
        "prompt": "Names: Weber.",
    }
    assert request.filename == "audio.wav"  # the caller's PCM WAV, as the chat path sends it
    assert request.audio_seconds == [5.0]
    assert result["provider"] == "voxtral-small"
    assert result["model"] == VOXTRAL_MODEL
    assert result["text"] == "transcript of 5.0 s"
    assert result["segments"] == [{"start": 0.0, "end": 5.0, "text": "transcript of 5.0 s"}]
    assert result["language"] == "de"
    assert [a["status"] for a in result["attempts"]] == ["ok"]
    assert SHARED_KEY not in json.dumps(result)


async def test_without_a_language_or_prompt_those_fields_are_not_sent(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(None, None, voxtral, **TRANSCRIPTIONS)

    await run(settings, http, b64_job(sine_wav(1.0)))

    assert set(voxtral.requests[0].body) == {"model", "response_format", "temperature"}


async def test_chat_stays_the_default(voxtral: OpenAIStub, http: httpx.AsyncClient) -> None:
    settings = settings_for(None, None, voxtral, **ONLY_VOXTRAL)
    assert settings.voxtral_api == "chat"

    await run(settings, http, b64_job(sine_wav(1.0)))

    assert [r.route for r in voxtral.requests] == ["chat"]


async def test_both_apis_give_the_same_attempt_and_result_shape(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    job = b64_job(sine_wav(3.0), language="en")
    chat = await run(settings_for(None, None, voxtral, **ONLY_VOXTRAL), http, job)
    transcriptions = await run(settings_for(None, None, voxtral, **TRANSCRIPTIONS), http, job)

    assert [r.route for r in voxtral.requests] == ["chat", "transcriptions"]
    assert shape(transcriptions) == shape(chat)
    assert transcriptions["segments"][0]["end"] == chat["segments"][0]["end"] == 3.0


async def test_an_mp3_goes_as_is_and_other_codecs_as_wav(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    mp3 = transcode(sine_wav(2.0), "mp3", "libmp3lame")
    opus = transcode(sine_wav(2.0), "ogg", "libopus", rate=48000)
    settings = settings_for(None, None, voxtral, **TRANSCRIPTIONS)

    await run(settings, http, b64_job(mp3, audio_format="mp3"))
    await run(settings, http, b64_job(opus, audio_format="ogg"))

    assert [r.filename for r in voxtral.requests] == ["audio.mp3", "audio.wav"]
    assert all(r.audio_seconds[0] == pytest.approx(2.0, abs=0.1) for r in voxtral.requests)


@pytest.mark.parametrize(
    ("kind", "category", "retried"),
    [
        ("rate_limit", "rate_limited", True),
        ("server_error", "provider_unavailable", True),
        ("unauthorized", "provider_auth", False),
        ("bad_request", "provider_error", False),
        ("malformed", "provider_error", False),
    ],
)
async def test_failures_map_to_the_same_categories_as_chat(
    kind: str, category: str, retried: bool, voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    voxtral.fail_next(kind)
    settings = settings_for(None, None, voxtral, **TRANSCRIPTIONS)

    failure = await fail(settings, http, b64_job(sine_wav(1.0)))

    assert failure.category == category
    assert is_retryable(failure.category, failure.retryable) is retried
    assert failure.message.startswith("voxtral-small: ")
    [attempt] = failure.details["attempts"]
    assert attempt["error"] == {"category": category, "message": failure.message}
    assert voxtral.requests[0].route == "transcriptions"


async def test_a_file_above_the_servers_limit_is_a_provider_error_naming_it(
    http: httpx.AsyncClient,
) -> None:
    with OpenAIStub(models=[VOXTRAL_MODEL], max_file_mb=0.05) as small:
        settings = settings_for(None, None, small, **TRANSCRIPTIONS)
        failure = await fail(settings, http, b64_job(sine_wav(5.0)))  # 80 kB

    assert failure.category == "provider_error"
    assert "HTTP 400" in failure.message
    assert "Maximum file size exceeded" in failure.message


async def test_a_model_the_server_does_not_serve_is_a_provider_error(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(None, None, voxtral, VOXTRAL_MODEL="other/model", **TRANSCRIPTIONS)

    failure = await fail(settings, http, b64_job(sine_wav(1.0)))

    assert failure.category == "provider_error"
    assert "HTTP 404" in failure.message
    assert "The model `other/model` does not exist." in failure.message


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/", "/v1/audio/transcriptions"])
async def test_the_base_url_may_end_with_v1_or_name_the_endpoint(
    suffix: str, voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(None, None, voxtral.base_url + suffix, **TRANSCRIPTIONS)

    result = await run(settings, http, b64_job(sine_wav(1.0)))

    assert result["text"] == "transcript of 1.0 s"
    assert voxtral.requests[0].route == "transcriptions"


async def test_the_base_urls_query_stays_after_the_endpoint_path(
    voxtral: OpenAIStub, http: httpx.AsyncClient
) -> None:
    url = f"{voxtral.base_url}/v1/?api_key=vox-K"
    settings = settings_for(None, None, url, **TRANSCRIPTIONS)

    result = await run(settings, http, b64_job(sine_wav(1.0)))

    assert result["attempts"][0]["status"] == "ok"
    assert voxtral.requests[0].route == "transcriptions"
    assert voxtral.requests[0].query == {"api_key": "vox-K"}


async def test_a_job_through_the_api_and_the_worker(
    api: httpx.AsyncClient, store: Store, database_url: str, voxtral: OpenAIStub
) -> None:
    audio = base64.b64encode(sine_wav(4.0)).decode()
    async with running_worker(
        database_url,
        VOXTRAL_BASE_URL=voxtral.base_url,
        AUDIO_LLM_API_KEY=SHARED_KEY,
        **TRANSCRIPTIONS,
    ):
        created = await api.post(
            "/api/v1/jobs",
            json={
                "owner_service": "telephony",
                "owner_ref": "call-vox",
                "task_type": "transcription",
                "model_profile": "whisperx",
                "input": {"audio_base64": audio, "audio_format": "wav", "language": "fr"},
            },
        )
        assert created.status_code == 201
        job_id = created.json()["id"]
        await wait_until_finished(store, [job_id], timeout=30)
    job = (await api.get(f"/api/v1/jobs/{job_id}")).json()

    assert job["status"] == "completed", job["error_message"]
    result = job["result"]
    assert result["provider"] == "voxtral-small"
    assert result["text"] == "transcript of 4.0 s"
    assert result["language"] == "fr"
    [attempt] = result["attempts"]
    assert (attempt["provider"], attempt["status"], attempt["selected"]) == (
        "voxtral-small",
        "ok",
        True,
    )
    [request] = voxtral.requests
    assert request.route == "transcriptions"
    assert request.body["language"] == "fr"
