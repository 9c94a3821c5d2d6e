"""The transcription handler against real loopback stubs of WhisperX and vLLM.

`transcription.handle(job, ctx)` is called directly with a real
`httpx.AsyncClient`; audio is a real WAV generated here. No database.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ai_service.config import Settings, load_settings
from ai_service.errors import JobFailure
from ai_service.jobs import OUTAGE_CATEGORIES, is_retryable
from ai_service.worker import transcription
from ai_service.worker.handler import HandlerContext
from tests.factories import make_job
from tests.stubs import FileServer, closed_port_url, sine_wav, transcode
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub

QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
VOXTRAL_MODEL = "mistralai/Voxtral-Small-24B-2507"
QWEN_KEY = "qwen-key-0123456789"
SHARED_KEY = "audio-llm-key-9876543210"
ALL = "whisperx,qwen2-audio,voxtral-small"


@pytest.fixture(scope="module")
def wav75() -> bytes:
    return sine_wav(75.0)


@pytest.fixture(scope="module")
def wav5() -> bytes:
    return sine_wav(5.0)


@pytest.fixture
def whisperx() -> Iterator[WhisperXStub]:
    with WhisperXStub("wx-a") as stub:
        yield stub


@pytest.fixture
def qwen() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=[QWEN_MODEL], api_key=QWEN_KEY) as stub:
        yield stub


@pytest.fixture
def voxtral() -> Iterator[OpenAIStub]:
    # Voxtral has no key of its own: it must fall back to AUDIO_LLM_API_KEY.
    with OpenAIStub(models=[VOXTRAL_MODEL], api_key=SHARED_KEY) as stub:
        yield stub


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def settings_for(
    whisperx: WhisperXStub | str | None = None,
    qwen: OpenAIStub | str | None = None,
    voxtral: OpenAIStub | str | None = None,
    **env: str,
) -> Settings:
    """Settings as the worker reads them; stubs become their URLs."""

    def url(value: WhisperXStub | OpenAIStub | str | None) -> str:
        if value is None:
            return ""
        return value if isinstance(value, str) else value.base_url

    values = {
        "WORKER_ID": "test-worker",
        "TRANSCRIPTION_PROVIDERS": ALL,
        "WHISPERX_URL": url(whisperx),
        "QWEN_AUDIO_BASE_URL": url(qwen),
        "QWEN_AUDIO_API_KEY": QWEN_KEY,
        "VOXTRAL_BASE_URL": url(voxtral),
        "AUDIO_LLM_API_KEY": SHARED_KEY,
        "TRANSCRIPTION_TIMEOUT": "20s",
        "AUDIO_DOWNLOAD_TIMEOUT": "5s",
        # The audio stubs listen on loopback, which the default rules refuse.
        "AUDIO_URL_ALLOW": "127.0.0.1",
    }
    values.update(env)
    return load_settings(values)


def b64_job(audio: bytes, **fields: Any) -> Any:
    return make_job(
        input={"audio_base64": base64.b64encode(audio).decode(), "audio_format": "wav", **fields}
    )


async def run(settings: Settings, http: httpx.AsyncClient, job: Any) -> dict[str, Any]:
    return await transcription.handle(job, HandlerContext(settings=settings, http=http))


async def fail(settings: Settings, http: httpx.AsyncClient, job: Any) -> JobFailure:
    with pytest.raises(JobFailure) as caught:
        await run(settings, http, job)
    return caught.value


# -- the comparison -------------------------------------------------------------


async def test_75_seconds_through_three_providers(
    whisperx: WhisperXStub,
    qwen: OpenAIStub,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
    wav75: bytes,
) -> None:
    settings = settings_for(whisperx, qwen, voxtral)
    job = b64_job(
        wav75,
        language="ru",
        prompt="Names: Ivanov, Petrov.",
        diarize=True,
        min_speakers=1,
        max_speakers=2,
    )

    result = await run(settings, http, job)

    # main fields come from the first provider in order: whisperx
    assert result["provider"] == "whisperx"
    assert result["model"] == "large-v3"  # WHISPERX_MODEL, not the engine
    assert result["language"] == "ru"
    assert result["requested_language"] == "ru"
    assert result["detected_language"] is None  # forced, so not detected
    assert result["audio_duration"] == pytest.approx(75.0, abs=0.01)
    assert result["warnings"] == []
    assert result["diarization"] == "applied"
    assert result["diarization_reason"] is None
    assert [(s["start"], s["end"]) for s in result["segments"]] == [
        (0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 40.0),
        (40.0, 50.0), (50.0, 60.0), (60.0, 70.0), (70.0, 75.0),
    ]  # fmt: skip
    # the whole segment, words included, lives in the result only
    assert result["segments"][0] == {
        "start": 0.0,
        "end": 10.0,
        "text": "Segment 0 from wx-a.",
        "speaker": "SPEAKER_00",
        "avg_logprob": -0.21,
        "words": [
            {"word": "Segment", "start": 0.0, "end": 3.333, "score": 0.91, "speaker": "SPEAKER_00"},
            {"word": "0"},  # missing word timings stay missing
            {"word": "from wx-a.", "start": 6.667, "end": 10.0, "score": 0.84,
             "speaker": "SPEAKER_00"},
        ],
    }  # fmt: skip
    assert result["segments"][1]["speaker"] == "SPEAKER_01"
    assert result["text"].startswith("Segment 0 from wx-a. Segment 1 from wx-a.")

    attempts = result["attempts"]
    assert [a["provider"] for a in attempts] == ["whisperx", "qwen2-audio", "voxtral-small"]
    assert [a["status"] for a in attempts] == ["ok", "ok", "ok"]
    assert [a["selected"] for a in attempts] == [True, False, False]
    for attempt in attempts:
        assert isinstance(attempt["duration_ms"], int)
        assert attempt["duration_ms"] >= 0
        assert attempt["error"] is None

    wx = attempts[0]
    assert wx["instance"] == whisperx.base_url
    assert wx["engine"] == "whisperx"
    assert wx["model"] == "large-v3"
    assert [(i["url"], i["status"], i["error"]) for i in wx["instances"]] == [
        (whisperx.base_url, "ok", None)
    ]
    # the selected attempt does not repeat the result's transcript
    assert "segments" not in wx
    assert "text" not in wx

    qw = attempts[1]
    assert qw["model"] == QWEN_MODEL
    assert [(c["start"], c["end"]) for c in qw["chunks"]] == [
        (0.0, 30.0),
        (30.0, 60.0),
        (60.0, 75.0),
    ]
    assert all(isinstance(c["duration_ms"], int) for c in qw["chunks"])
    assert [(s["start"], s["end"], s["text"]) for s in qw["segments"]] == [
        (0.0, 30.0, "chunk of 30.0 s"),
        (30.0, 60.0, "chunk of 30.0 s"),
        (60.0, 75.0, "chunk of 15.0 s"),
    ]
    assert qw["text"] == "chunk of 30.0 s chunk of 30.0 s chunk of 15.0 s"

    vx = attempts[2]
    assert vx["model"] == VOXTRAL_MODEL
    assert "chunks" not in vx
    assert vx["segments"] == [{"start": 0.0, "end": 75.0, "text": "chunk of 75.0 s"}]

    # what the servers received
    assert whisperx.requests_received == 1
    asr = whisperx.requests[0]
    assert asr.query == {
        "output": "json",
        "task": "transcribe",
        "encode": "true",
        "language": "ru",
        "initial_prompt": "Names: Ivanov, Petrov.",
        "diarize": "true",
        "min_speakers": "1",
        "max_speakers": "2",
        "vad_filter": "true",  # WHISPERX_VAD_FILTER's default
    }
    # not the caller's 8 kHz file: the decoded audio as 16 kHz mono WAV
    assert asr.filename == "audio.wav"
    assert asr.content_type == "audio/wav"
    assert (asr.sample_rate, asr.channels) == (16000, 1)
    assert asr.size == 44 + 75 * 16000 * 2

    assert qwen.requests_received == 3
    assert [r.audio_seconds for r in qwen.requests] == [[30.0], [30.0], [15.0]]
    assert {f for r in qwen.requests for f in r.audio_formats} == {"wav"}
    first = qwen.requests[0]
    assert first.headers["authorization"] == f"Bearer {QWEN_KEY}"
    assert first.body["model"] == QWEN_MODEL
    assert first.body["temperature"] == 0
    assert first.body["max_tokens"] == settings.audio_llm_max_tokens
    assert len(first.body["messages"]) == 1
    assert first.body["messages"][0]["role"] == "user"
    assert first.text == (
        f"{settings.audio_llm_prompt}\nThe audio language is ru.\nNames: Ivanov, Petrov."
    )

    assert voxtral.requests_received == 1
    assert voxtral.requests[0].audio_seconds == [75.0]
    assert voxtral.requests[0].audio_formats == ["wav"]
    assert voxtral.requests[0].headers["authorization"] == f"Bearer {SHARED_KEY}"
    # the original WAV (8 kHz) went as is: its base64 is the job's
    sent = voxtral.requests[0].body["messages"][0]["content"][1]["input_audio"]["data"]
    assert base64.b64decode(sent) == wav75

    # no secret anywhere in the result
    dumped = json.dumps(result)
    assert QWEN_KEY not in dumped
    assert SHARED_KEY not in dumped


async def test_base_url_with_v1_and_text_only_whisperx_variant(
    qwen: OpenAIStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    with WhisperXStub("wx-list", variant="asr-service", segment_seconds=2.0) as wx:
        settings = settings_for(wx, qwen.base_url + "/v1/", None)
        result = await run(settings, http, b64_job(wav5))

    assert (
        result["text"] == "Segment 0 from wx-list. Segment 1 from wx-list. Segment 2 from wx-list."
    )
    assert [s["end"] for s in result["segments"]] == [2.0, 4.0, 5.0]
    assert "speaker" not in result["segments"][0]
    assert result["language"] == "en"
    assert result["attempts"][1]["status"] == "ok"
    assert qwen.requests_received == 1
    assert result["attempts"][2]["status"] == "skipped"


# -- modes ------------------------------------------------------------------


async def test_fallback_mode_stops_at_the_first_success(
    whisperx: WhisperXStub,
    qwen: OpenAIStub,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
    wav5: bytes,
) -> None:
    settings = settings_for(whisperx, qwen, voxtral, TRANSCRIPTION_MODE="fallback")

    result = await run(settings, http, b64_job(wav5))

    assert result["provider"] == "whisperx"
    assert [a["status"] for a in result["attempts"]] == ["ok", "skipped", "skipped"]
    for attempt in result["attempts"][1:]:
        assert attempt["reason"] == "fallback mode: an earlier provider succeeded"
        assert attempt["error"] is None
        assert attempt["duration_ms"] == 0
    assert qwen.requests_received == 0
    assert voxtral.requests_received == 0


async def test_fallback_mode_moves_on_after_a_failure(
    whisperx: WhisperXStub,
    qwen: OpenAIStub,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
    wav75: bytes,
) -> None:
    whisperx.fail_always("server_error")
    settings = settings_for(whisperx, qwen, voxtral, TRANSCRIPTION_MODE="fallback")

    result = await run(settings, http, b64_job(wav75))

    assert result["provider"] == "qwen2-audio"
    assert result["model"] == QWEN_MODEL
    assert [(s["start"], s["end"]) for s in result["segments"]] == [
        (0.0, 30.0),
        (30.0, 60.0),
        (60.0, 75.0),
    ]
    assert [a["status"] for a in result["attempts"]] == ["error", "ok", "skipped"]
    assert result["attempts"][0]["error"]["category"] == "provider_unavailable"
    assert "HTTP 500" in result["attempts"][0]["error"]["message"]
    assert voxtral.requests_received == 0


async def test_compare_mode_keeps_going_after_a_failure(
    whisperx: WhisperXStub,
    qwen: OpenAIStub,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
    wav5: bytes,
) -> None:
    qwen.fail_always("flat_error")
    settings = settings_for(whisperx, qwen, voxtral)

    result = await run(settings, http, b64_job(wav5))

    assert result["provider"] == "whisperx"
    assert [a["status"] for a in result["attempts"]] == ["ok", "error", "ok"]
    error = result["attempts"][1]["error"]
    assert error["category"] == "provider_error"
    assert error["message"] == (
        f"qwen2-audio: HTTP 400 Bad Request from {qwen.base_url}/v1/chat/completions: "
        "This model's maximum context length is 4096 tokens."
    )
    assert result["attempts"][1]["text"] is None
    assert result["attempts"][1]["segments"] == []


async def test_job_overrides_provider_order(
    whisperx: WhisperXStub, voxtral: OpenAIStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(whisperx, None, voxtral)

    result = await run(settings, http, b64_job(wav5, providers=["voxtral-small", "whisperx"]))

    assert result["provider"] == "voxtral-small"
    assert result["segments"] == [{"start": 0.0, "end": 5.0, "text": "chunk of 5.0 s"}]
    assert [a["provider"] for a in result["attempts"]] == ["voxtral-small", "whisperx"]


@pytest.mark.parametrize(
    ("container", "codec", "sent_format", "original"),
    [("mp3", "libmp3lame", "mp3", True), ("ogg", "libopus", "wav", False)],
)
async def test_voxtral_gets_wav_or_mp3(
    container: str,
    codec: str,
    sent_format: str,
    original: bool,
    whisperx: WhisperXStub,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
) -> None:
    audio = transcode(sine_wav(3.0), container, codec, rate=48000 if codec == "libopus" else 16000)
    settings = settings_for(whisperx, None, voxtral)

    result = await run(settings, http, b64_job(audio, audio_format=container))

    assert result["audio_duration"] == pytest.approx(3.0, abs=0.1)
    [request] = voxtral.requests
    assert request.audio_formats == [sent_format]
    sent = base64.b64decode(request.body["messages"][0]["content"][1]["input_audio"]["data"])
    assert (sent == audio) is original
    assert request.audio_seconds[0] == pytest.approx(3.0, abs=0.1)
    # whisperx never gets the caller's file: the decoded audio as 16 kHz mono WAV
    assert whisperx.requests[0].filename == "audio.wav"
    assert (whisperx.requests[0].sample_rate, whisperx.requests[0].channels) == (16000, 1)


@pytest.mark.parametrize(
    "providers",
    [["whisperx", "deepgram"], [], "whisperx", [1], {"whisperx": True}],
    ids=["unknown", "empty", "string", "not-names", "object"],
)
async def test_bad_provider_override_is_invalid_input(
    providers: Any, whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(whisperx)
    job_input = {"audio_base64": base64.b64encode(wav5).decode(), "providers": providers}

    failure = await fail(settings, http, make_job(input=job_input))

    assert failure.category == "invalid_input"
    assert failure.retryable is False
    assert failure.message.startswith("input.providers")
    assert whisperx.requests_received == 0


async def test_unconfigured_provider_is_skipped_with_the_reason(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(whisperx, None, None)

    result = await run(settings, http, b64_job(wav5))

    assert [a["status"] for a in result["attempts"]] == ["ok", "skipped", "skipped"]
    assert result["attempts"][1]["reason"] == "QWEN_AUDIO_BASE_URL is not set"
    assert result["attempts"][2]["reason"] == "VOXTRAL_BASE_URL is not set"
    assert result["attempts"][2]["model"] == VOXTRAL_MODEL


async def test_no_configured_provider_fails_before_downloading(
    files: FileServer, http: httpx.AsyncClient
) -> None:
    settings = settings_for(None, None, None, TRANSCRIPTION_PROVIDERS="whisperx,qwen2-audio")
    url = files.add("/a.wav", sine_wav(1.0))

    failure = await fail(settings, http, make_job(input={"audio_url": url}))

    assert failure.category == "provider_error"
    assert failure.retryable is False
    assert "WHISPERX_URL is not set" in failure.message
    assert [a["status"] for a in failure.details["attempts"]] == ["skipped", "skipped"]
    assert files.hits["/a.wav"] == 0


# -- failing providers ------------------------------------------------------------


async def test_unreachable_provider_is_recorded_and_others_still_run(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(whisperx, closed_port_url(), None)

    result = await run(settings, http, b64_job(wav5))

    assert result["provider"] == "whisperx"
    error = result["attempts"][1]["error"]
    assert error["category"] == "provider_unavailable"
    assert error["message"].startswith("qwen2-audio: cannot connect (http://127.0.0.1:")


async def test_all_providers_unreachable_fails_retryably_with_attempts(
    http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(closed_port_url(), closed_port_url(), None)

    failure = await fail(settings, http, b64_job(wav5))

    assert failure.category == "provider_unavailable"
    assert is_retryable(failure.category, failure.retryable)
    assert failure.message.startswith("whisperx: cannot connect")
    attempts = failure.details["attempts"]
    assert [(a["provider"], a["status"]) for a in attempts] == [
        ("whisperx", "error"),
        ("qwen2-audio", "error"),
        ("voxtral-small", "skipped"),
    ]
    json.dumps(failure.details)  # stored as JSON: must serialise


async def test_garbage_from_whisperx_is_a_permanent_provider_error(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    whisperx.fail_always("garbage")
    settings = settings_for(whisperx, TRANSCRIPTION_PROVIDERS="whisperx")

    failure = await fail(settings, http, b64_job(wav5))

    assert failure.category == "provider_error"
    assert not is_retryable(failure.category, failure.retryable)
    assert "malformed response" in failure.message
    assert "502 Bad Gateway" in failure.message  # the start of the body is shown
    assert whisperx.requests_received == 1  # not handed to another instance


async def test_malformed_json_from_an_audio_llm(
    qwen: OpenAIStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    qwen.fail_next("malformed")
    settings = settings_for(None, qwen, None, TRANSCRIPTION_PROVIDERS="qwen2-audio")

    failure = await fail(settings, http, b64_job(wav5))

    assert failure.category == "provider_error"
    assert failure.message.startswith("qwen2-audio: malformed response from http://127.0.0.1:")


@pytest.mark.parametrize(
    ("kind", "category", "retried"),
    [
        ("rate_limit", "rate_limited", True),
        ("server_error", "provider_unavailable", True),
        ("unauthorized", "provider_auth", False),
        ("not_found", "provider_error", False),
        ("bad_request", "provider_error", False),
    ],
)
async def test_audio_llm_failures_map_to_categories(
    kind: str,
    category: str,
    retried: bool,
    voxtral: OpenAIStub,
    http: httpx.AsyncClient,
    wav5: bytes,
) -> None:
    voxtral.fail_next(kind)
    settings = settings_for(None, None, voxtral, TRANSCRIPTION_PROVIDERS="voxtral-small")

    failure = await fail(settings, http, b64_job(wav5))

    assert failure.category == category
    assert is_retryable(failure.category, failure.retryable) is retried
    assert failure.message.startswith("voxtral-small: HTTP ")
    assert failure.details["attempts"][0]["error"] == {
        "category": category,
        "message": failure.message,
    }


async def test_a_failed_chunk_stops_the_chunked_attempt(
    qwen: OpenAIStub, http: httpx.AsyncClient, wav75: bytes
) -> None:
    qwen.fail_next("rate_limit")
    settings = settings_for(None, qwen, None, TRANSCRIPTION_PROVIDERS="qwen2-audio")

    failure = await fail(settings, http, b64_job(wav75))

    assert failure.category == "rate_limited"
    assert "Too many requests" in failure.message
    assert qwen.requests_received == 1


async def test_a_hung_provider_times_out(
    qwen: OpenAIStub, whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    qwen.fail_always("hang")
    settings = settings_for(whisperx, qwen, None, TRANSCRIPTION_TIMEOUT="0.5s")

    result = await run(settings, http, b64_job(wav5))

    error = result["attempts"][1]["error"]
    assert error["category"] == "timeout"
    assert result["attempts"][1]["duration_ms"] < 5000
    assert result["provider"] == "whisperx"


# -- several WhisperX instances -----------------------------------------------------


async def test_whisperx_instances_are_used_in_turn(http: httpx.AsyncClient, wav5: bytes) -> None:
    with WhisperXStub("wx-a") as a, WhisperXStub("wx-b") as b:
        settings = settings_for(f"{a.base_url},{b.base_url}", TRANSCRIPTION_PROVIDERS="whisperx")
        results = [await run(settings, http, b64_job(wav5)) for _ in range(4)]

    assert a.requests_received == 2
    assert b.requests_received == 2
    instances = [r["attempts"][0]["instance"] for r in results]
    assert instances[0] != instances[1]
    assert instances[0] == instances[2]
    assert instances[1] == instances[3]
    for result in results:
        name = "wx-a" if result["attempts"][0]["instance"] == a.base_url else "wx-b"
        assert result["segments"][0]["text"] == f"Segment 0 from {name}."


async def test_an_unreachable_instance_hands_over_to_the_next(
    http: httpx.AsyncClient, wav5: bytes
) -> None:
    dead = closed_port_url()
    with WhisperXStub("wx-b") as b, WhisperXStub("wx-c") as c:
        c.fail_always("unavailable")
        settings = settings_for(
            f"{dead},{c.base_url},{b.base_url}", TRANSCRIPTION_PROVIDERS="whisperx"
        )
        results = [await run(settings, http, b64_job(wav5)) for _ in range(3)]

    assert all(r["provider"] == "whisperx" for r in results)
    assert {r["attempts"][0]["instance"] for r in results} == {b.base_url}
    assert b.requests_received == 3
    # each job started on another instance, c answered 503 whenever tried
    assert c.requests_received == 2


# -- audio input ----------------------------------------------------------------------


async def test_audio_url_is_downloaded(
    whisperx: WhisperXStub, files: FileServer, http: httpx.AsyncClient, wav5: bytes
) -> None:
    url = files.add("/calls/1.wav", wav5, chunked=True)
    settings = settings_for(whisperx, TRANSCRIPTION_PROVIDERS="whisperx")

    result = await run(settings, http, make_job(input={"audio_url": url}))

    assert result["audio_duration"] == pytest.approx(5.0)
    assert files.hits["/calls/1.wav"] == 1
    assert whisperx.requests[0].audio_seconds == pytest.approx(5.0)


async def test_audio_url_answering_404_is_invalid_input(
    whisperx: WhisperXStub, files: FileServer, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx)

    failure = await fail(settings, http, make_job(input={"audio_url": files.url("/gone.wav")}))

    assert failure.category == "invalid_input"
    assert failure.retryable is False
    # No URL, no reason phrase, no body: the message cannot serve to probe a network.
    assert failure.message == "audio_url: HTTP 404"
    assert whisperx.requests_received == 0


async def test_audio_url_answering_500_is_retried(
    whisperx: WhisperXStub, files: FileServer, http: httpx.AsyncClient
) -> None:
    url = files.add("/broken.wav", b"oops", status=500)
    settings = settings_for(whisperx)

    failure = await fail(settings, http, make_job(input={"audio_url": url}))

    # Retried while attempts remain, but the caller's server is not our provider:
    # no outage (an outage would defer the job for free for hours).
    assert failure.category == "provider_error"
    assert is_retryable(failure.category, failure.retryable)
    assert failure.category not in OUTAGE_CATEGORIES
    assert failure.message == "audio_url: HTTP 500"


async def test_audio_url_unreachable_is_retried(
    whisperx: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx)

    failure = await fail(
        settings, http, make_job(input={"audio_url": closed_port_url() + "/a.wav"})
    )

    assert failure.category == "provider_error"
    assert is_retryable(failure.category, failure.retryable)
    assert failure.message == "audio_url: cannot connect"


async def test_audio_url_too_slow_times_out(
    whisperx: WhisperXStub, files: FileServer, http: httpx.AsyncClient, wav5: bytes
) -> None:
    url = files.add("/slow.wav", wav5, delay=10)
    settings = settings_for(whisperx, AUDIO_DOWNLOAD_TIMEOUT="0.3s")

    failure = await fail(settings, http, make_job(input={"audio_url": url}))

    assert failure.category == "timeout"
    assert is_retryable(failure.category, failure.retryable)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_audio_url_is_invalid_input(
    chunked: bool,
    whisperx: WhisperXStub,
    files: FileServer,
    http: httpx.AsyncClient,
    wav75: bytes,
) -> None:
    url = files.add("/big.wav", wav75, chunked=chunked)
    settings = settings_for(whisperx, AUDIO_MAX_BYTES="100000")

    failure = await fail(settings, http, make_job(input={"audio_url": url}))

    assert failure.category == "invalid_input"
    assert failure.retryable is False
    assert failure.message == "audio_url: the audio is larger than AUDIO_MAX_BYTES (100000 bytes)"


async def test_oversized_base64_is_invalid_input(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav75: bytes
) -> None:
    settings = settings_for(whisperx, AUDIO_MAX_BYTES="100000")

    failure = await fail(settings, http, b64_job(wav75))

    assert failure.category == "invalid_input"
    assert "input.audio_base64: the audio is larger than AUDIO_MAX_BYTES" in failure.message
    assert whisperx.requests_received == 0


async def test_audio_longer_than_audio_max_seconds_is_invalid_input(
    whisperx: WhisperXStub, http: httpx.AsyncClient, files: FileServer, wav75: bytes
) -> None:
    settings = settings_for(whisperx, AUDIO_MAX_SECONDS="60")
    url = files.add("/long.wav", wav75)

    for job in (b64_job(wav75), make_job(input={"audio_url": url})):
        failure = await fail(settings, http, job)

        assert failure.category == "invalid_input"
        assert failure.retryable is False
        assert failure.message.endswith(
            ": the audio lasts 75 s, longer than AUDIO_MAX_SECONDS (60 s)"
        )
    assert whisperx.requests_received == 0


async def test_base64_data_url_with_line_breaks_is_accepted(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    encoded = base64.encodebytes(wav5).decode()  # 76-character lines
    settings = settings_for(whisperx, TRANSCRIPTION_PROVIDERS="whisperx")

    result = await run(
        settings, http, make_job(input={"audio_base64": "data:audio/wav;base64," + encoded})
    )

    assert result["audio_duration"] == pytest.approx(5.0)
    assert whisperx.requests[0].audio_seconds == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({}, "input.audio_url, input.audio_id or input.audio_base64 is required"),
        ({"audio_id": "not-a-uuid"}, "input.audio_id must be the audio_id (a UUID string)"),
        ({"audio_id": 7}, "input.audio_id must be the audio_id (a UUID string)"),
        (
            {"audio_id": "0190a5a0-0000-7000-8000-000000000000", "audio_base64": "AAAA"},
            "not both input.audio_base64 and input.audio_id",
        ),
        ({"audio_base64": "!!! not base64 !!!"}, "input.audio_base64 is not valid base64"),
        (
            {"audio_base64": base64.b64encode(b"plain text, not audio" * 50).decode(),
             "audio_format": "mp3"},
            "audio (declared format mp3): the audio cannot be decoded",
        ),
        ({"audio_url": "ftp://host/a.wav"}, "input.audio_url must be an http(s) URL"),
        ({"audio_url": "http://h/a.wav", "audio_base64": "AAAA"}, "not both"),
        ({"audio_base64": "AAAA", "diarize": "yes"}, "input.diarize must be true or false"),
        ({"audio_base64": "AAAA", "max_speakers": 0}, "input.max_speakers must be a positive"),
        ({"audio_base64": "AAAA", "language": 5}, "input.language must be a string"),
        ({"audio_base64": "AAAA", "min_speakers": 3, "max_speakers": 2}, "must not exceed"),
        ({"audio_base64": "AAAA", "audio_format": "w a v"}, "input.audio_format"),
    ],
)  # fmt: skip
async def test_bad_audio_input_is_invalid_input(
    job_input: dict[str, Any], message: str, whisperx: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx)

    failure = await fail(settings, http, make_job(input=job_input))

    assert failure.category == "invalid_input"
    assert failure.retryable is False
    assert message in failure.message
    assert whisperx.requests_received == 0


# -- secrets ---------------------------------------------------------------------------


async def test_secrets_never_reach_results_errors_or_logs(
    whisperx: WhisperXStub,
    qwen: OpenAIStub,
    voxtral: OpenAIStub,
    files: FileServer,
    http: httpx.AsyncClient,
    wav5: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ai_service")
    password = "wx-passw0rd-secret"
    whisperx_url = whisperx.base_url.replace("http://", f"http://admin:{password}@")
    url_password = "dl-passw0rd-secret"
    audio_url = files.add("/s.wav", wav5).replace("http://", f"http://me:{url_password}@")
    settings = settings_for(
        f"{whisperx_url},{closed_port_url()}",
        qwen,
        voxtral,
        QWEN_AUDIO_API_KEY="wrong-qwen-key-123",  # qwen answers 401
        AUDIO_LLM_API_KEY=SHARED_KEY,
    )
    voxtral.fail_always("server_error")
    secrets = [password, url_password, "wrong-qwen-key-123", SHARED_KEY]

    # compare mode: whisperx succeeds, qwen 401, voxtral 500
    result = await run(settings, http, make_job(input={"audio_url": audio_url}))
    # and a whole failure: whisperx dead as well
    whisperx.fail_always("server_error")
    failure = await fail(settings, http, make_job(input={"audio_url": audio_url}))

    assert result["attempts"][1]["error"]["category"] == "provider_auth"
    assert result["attempts"][0]["instance"] == whisperx.base_url  # redacted
    assert failure.category == "provider_unavailable"
    texts = [json.dumps(result), failure.message, json.dumps(failure.details), caplog.text]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "admin" not in json.dumps(result)


# -- handler spec -----------------------------------------------------------------------


def test_spec_is_enabled_when_a_listed_provider_is_configured() -> None:
    settings = load_settings(
        {
            "TRANSCRIPTION_PROVIDERS": "whisperx,qwen2-audio",
            "WHISPERX_URL": "http://u:pw@10.0.0.1:9000,http://10.0.0.2:9000",
            "QWEN_AUDIO_BASE_URL": "http://10.0.0.3:8003/v1?api_key=abc",
            "WORKER_ID": "w",
        }
    )

    spec = transcription.spec(settings)

    assert spec.enabled
    assert spec.disabled_reason is None
    assert spec.task_types == {"transcription", "transcribe"}
    assert spec.model_profiles is None
    assert spec.handle is transcription.handle
    assert spec.providers == {
        "whisperx": ["http://10.0.0.1:9000", "http://10.0.0.2:9000"],
        "qwen2-audio": "http://10.0.0.3:8003/v1?api_key=%2A%2A%2A",
        "voxtral-small": None,
    }


def test_spec_is_disabled_without_a_configured_listed_provider() -> None:
    settings = load_settings(
        {
            "TRANSCRIPTION_PROVIDERS": "whisperx,voxtral-small",
            "QWEN_AUDIO_BASE_URL": "http://10.0.0.3:8003",
            "WORKER_ID": "w",
        }
    )

    spec = transcription.spec(settings)

    assert not spec.enabled
    assert spec.disabled_reason == (
        "no provider of TRANSCRIPTION_PROVIDERS (whisperx,voxtral-small) is configured: "
        "WHISPERX_URL is not set; VOXTRAL_BASE_URL is not set"
    )


async def test_transcribe_task_type_alias_runs_the_same(
    whisperx: WhisperXStub, http: httpx.AsyncClient, wav5: bytes
) -> None:
    settings = settings_for(whisperx, TRANSCRIPTION_PROVIDERS="whisperx")
    job = make_job(task_type="transcribe", input={"audio_base64": base64.b64encode(wav5).decode()})

    result = await run(settings, http, job)

    assert result["provider"] == "whisperx"
    assert "transcribe" in transcription.spec(settings).task_types


def test_compare_attempts_sets_wer_on_the_other_successful_attempts() -> None:
    reference = {"provider": "whisperx", "status": "ok", "text": "Алло, добрый день!"}
    attempts = [
        reference,
        # ref: алло добрый день ; hyp: алло добрый вечер -> 1 substitution / 3
        {"provider": "qwen2-audio", "status": "ok", "text": "алло добрый вечер"},
        {"provider": "voxtral-small", "status": "error", "text": None},
        {"provider": "voxtral-small", "status": "skipped", "text": None},
    ]
    transcription.compare_attempts(attempts, reference)
    assert [a.get("wer") for a in attempts] == [None, 0.3333, None, None]
    assert "wer" not in reference
    assert "wer" not in attempts[2]
