"""The transcription handler against a stub that answers like the measured
whisper-asr-webservice (engine faster_whisper): every finding of issue 13 that
is about what the worker sends and how it reads the answer.

`transcription.handle(job, ctx)` is called with a real `httpx.AsyncClient`;
the audio is real WAV/M4A generated here. The end-to-end tests run the
in-process worker against PostgreSQL.
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
from ai_service.jobs import JobStatus
from ai_service.store import Store
from ai_service.worker import transcription
from ai_service.worker.handler import HandlerContext
from tests.factories import make_job
from tests.helpers import new_job
from tests.stubs import closed_port_url, sine_wav, tone_wav, transcode
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"


@pytest.fixture
def server() -> Iterator[WhisperXStub]:
    with WhisperXStub("fw", engine="faster_whisper") as stub:
        yield stub


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def settings_for(*urls: str, **env: str) -> Settings:
    values = {
        "WORKER_ID": "test-worker",
        "TRANSCRIPTION_PROVIDERS": "whisperx",
        "WHISPERX_URL": ",".join(urls),
        "TRANSCRIPTION_TIMEOUT": "20s",
    }
    values.update(env)
    return load_settings(values)


def job_for(audio: bytes, **fields: Any) -> Any:
    return make_job(input={"audio_base64": base64.b64encode(audio).decode(), **fields})


async def run(settings: Settings, http: httpx.AsyncClient, job: Any) -> dict[str, Any]:
    return await transcription.handle(job, HandlerContext(settings=settings, http=http))


async def fail(settings: Settings, http: httpx.AsyncClient, job: Any) -> JobFailure:
    with pytest.raises(JobFailure) as caught:
        await run(settings, http, job)
    return caught.value


async def post_file(stub: WhisperXStub, data: bytes, name: str) -> httpx.Response:
    """Upload `data` as is, the way the worker used to (to show the server's behaviour)."""
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{stub.base_url}/asr",
            params={"output": "json", "encode": "true"},
            files={"audio_file": (name, data, "application/octet-stream")},
        )


# -- 1. normalised audio, and no silent empty transcript ----------------------------------


async def test_an_m4a_with_its_index_at_the_end_is_transcribed_from_the_decoded_audio(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    m4a = transcode(sine_wav(12.0), "mp4", "aac")
    # As measured: the raw upload gives 200 and nothing, served like the real server.
    raw = await post_file(server, m4a, "call.m4a")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["asr-engine"] == "faster_whisper"
    assert raw.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in raw.headers
    assert json.loads(raw.text) == {"language": "en", "segments": [], "text": ""}

    result = await run(settings_for(server.base_url), http, job_for(m4a, audio_format="m4a"))

    assert result["text"] == "Segment 0 from fw. Segment 1 from fw."
    assert result["warnings"] == []
    sent = server.requests[-1]
    assert (sent.filename, sent.content_type) == ("audio.wav", "audio/wav")
    assert (sent.sample_rate, sent.channels) == (16000, 1)


async def test_an_empty_transcript_of_audio_with_sound_is_flagged(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    server.fail_next("empty")  # 200 with nothing, as for an unseekable upload

    result = await run(settings_for(server.base_url), http, job_for(sine_wav(6.0)))

    assert result["text"] == ""
    assert result["segments"] == []
    [warning] = result["warnings"]
    assert warning["code"] == "empty_transcript"
    assert warning["provider"] == "whisperx"
    assert "6 s of sound" in warning["message"]


async def test_an_empty_transcript_of_silence_is_no_warning(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(settings_for(server.base_url), http, job_for(tone_wav(10.0, [])))

    assert result["text"] == ""
    assert result["warnings"] == []


# -- 2. a file the worker decodes but the server cannot -------------------------------------


def data_before_fmt(wav: bytes) -> bytes:
    """The same WAV with its `data` chunk before `fmt ` (PyAV reads it, the server does not)."""
    fmt_size = int.from_bytes(wav[16:20], "little")
    fmt = wav[12 : 20 + fmt_size]
    data = wav[20 + fmt_size :]
    body = b"WAVE" + data + fmt
    return b"RIFF" + len(body).to_bytes(4, "little") + body


async def test_a_wav_the_server_cannot_read_is_sent_normalised_and_transcribed(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    odd = data_before_fmt(sine_wav(4.0))
    raw = await post_file(server, odd, "odd.wav")
    assert raw.status_code == 500
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.text == "Internal Server Error"

    result = await run(settings_for(server.base_url), http, job_for(odd))

    assert result["text"] == "Segment 0 from fw."
    assert result["audio_duration"] == pytest.approx(4.0)


async def test_a_500_for_one_input_with_a_healthy_probe_is_the_jobs_error_not_an_outage(
    store: Store, database_url: str
) -> None:
    with (
        WhisperXStub("a", engine="faster_whisper") as a,
        WhisperXStub("b", engine="faster_whisper") as b,
    ):
        a.fail_always("server_error")  # /docs still answers: the probe is healthy
        env = {"WHISPERX_URL": f"{a.base_url},{b.base_url}", "BREAKER_FAILURES": "3"}
        async with running_worker(database_url, **env) as runner:
            [created] = await store.create_jobs(
                [
                    new_job(
                        task_type="transcription",
                        model_profile="whisperx",
                        input={"audio_base64": base64.b64encode(sine_wav(2.0)).decode()},
                        max_attempts=1,
                    )
                ]
            )
            await wait_until_finished(store, [created.job.id], timeout=30)
            breaker = runner.breakers.breakers["whisperx#1"]
            state = breaker.state
        job = await store.get_job(created.job.id)

    assert job.status is JobStatus.FAILED
    assert job.error_category == "provider_error"
    assert "the server's probe answers" in (job.error_message or "")
    [attempt] = (job.error_details or {})["attempts"]
    assert [(i["url"], i["status"], i["error"]["category"]) for i in attempt["instances"]] == [
        (a.base_url, "error", "provider_error")
    ]
    assert b.requests_received == 0  # not handed to the other instance
    assert str(state) == "closed"  # and the instance is not counted down


# -- 3. language -----------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["en", "EN", "English", " english "])
async def test_language_is_normalised_before_it_is_sent(
    given: str, server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(settings_for(server.base_url), http, job_for(sine_wav(2.0), language=given))

    assert server.requests[0].query["language"] == "en"
    assert result["language"] == "en"
    assert result["requested_language"] == "en"
    assert result["detected_language"] is None


@pytest.mark.parametrize("given", ["xx", "Klingon", "en-GB"])
async def test_an_unknown_language_is_invalid_input_and_nothing_is_sent(
    given: str, server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    failure = await fail(
        settings_for(server.base_url), http, job_for(sine_wav(1.0), language=given)
    )

    assert failure.category == "invalid_input"
    assert failure.message.startswith(f"input.language: {given!r} is not a language")
    assert server.requests_received == 0


async def test_without_a_language_the_detected_one_is_reported(http: httpx.AsyncClient) -> None:
    with WhisperXStub("de", engine="faster_whisper", language="de") as german:
        result = await run(settings_for(german.base_url), http, job_for(sine_wav(2.0)))

    assert "language" not in german.requests[0].query
    assert result["language"] == "de"
    assert result["detected_language"] == "de"
    assert result["requested_language"] is None


# -- 4. diarization is applied or says why not ---------------------------------------------


@pytest.mark.parametrize(
    ("engine", "hf_token", "status", "reason"),
    [
        ("faster_whisper", True, "unavailable",
         "the server's engine faster_whisper does not diarize"),
        ("whisperx", False, "unavailable", "the server returned no speakers (whisperx diarizes "
                                           "only when the server has HF_TOKEN set)"),
        ("whisperx", True, "applied", None),
    ],
)  # fmt: skip
async def test_diarization_status(
    engine: str, hf_token: bool, status: str, reason: str | None, http: httpx.AsyncClient
) -> None:
    with WhisperXStub("wx", engine=engine, hf_token=hf_token) as stub:
        result = await run(settings_for(stub.base_url), http, job_for(sine_wav(3.0), diarize=True))

    assert stub.requests[0].query["diarize"] == "true"
    assert result["diarization"] == status
    assert result["diarization_reason"] == reason
    assert ("speaker" in result["segments"][0]) is (status == "applied")


async def test_an_audio_llm_says_it_does_not_diarize(http: httpx.AsyncClient) -> None:
    with OpenAIStub(models=[QWEN_MODEL]) as qwen:
        settings = settings_for(
            "", TRANSCRIPTION_PROVIDERS="qwen2-audio", QWEN_AUDIO_BASE_URL=qwen.base_url
        )
        result = await run(settings, http, job_for(sine_wav(3.0), diarize=True))

    assert result["diarization"] == "unavailable"
    assert result["diarization_reason"] == "qwen2-audio does not diarize"


async def test_without_diarize_there_is_no_diarization_field(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(settings_for(server.base_url), http, job_for(sine_wav(1.0)))
    assert "diarization" not in result


# -- 5. silence, hallucinations, VAD, word timestamps, filters ------------------------------


async def test_silence_without_vad_gives_the_hallucinated_you_with_its_scores(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(server.base_url)

    result = await run(settings, http, job_for(tone_wav(10.0, []), vad_filter=False))

    assert server.requests[0].query["vad_filter"] == "false"
    assert result["text"] == "You"
    [segment] = result["segments"]
    assert segment["no_speech_prob"] == 0.9512
    assert segment["avg_logprob"] == -0.6931


async def test_drop_no_speech_removes_the_hallucination(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    job = job_for(tone_wav(10.0, []), vad_filter=False, drop_no_speech=True)

    result = await run(settings_for(server.base_url), http, job)

    assert result["text"] == ""
    assert result["segments"] == []
    assert result["warnings"] == []  # silence: nothing was lost
    assert result["attempts"][0]["dropped_segments"] == 1


async def test_vad_is_on_by_default_and_gives_the_right_timings(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    speech_between_pauses = tone_wav(12.0, [(4.66, 8.66)])

    with_vad = await run(settings_for(server.base_url), http, job_for(speech_between_pauses))
    without = await run(
        settings_for(server.base_url, WHISPERX_VAD_FILTER="false"),
        http,
        job_for(speech_between_pauses),
    )

    assert [r.query["vad_filter"] for r in server.requests] == ["true", "false"]
    [segment] = with_vad["segments"]
    assert segment["start"] == pytest.approx(4.6, abs=0.11)
    assert segment["end"] == pytest.approx(8.7, abs=0.11)
    [whisper_timing] = without["segments"]
    assert whisper_timing["start"] == 0.0  # Whisper alone: from the start of the file


async def test_silence_with_vad_gives_no_segment(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(settings_for(server.base_url), http, job_for(tone_wav(10.0, [])))

    assert server.requests[0].query["vad_filter"] == "true"
    assert result["segments"] == []
    assert result["text"] == ""


async def test_word_timestamps_keep_probability_without_the_leading_space(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(
        settings_for(server.base_url), http, job_for(sine_wav(3.0), word_timestamps=True)
    )

    assert server.requests[0].query["word_timestamps"] == "true"
    words = result["segments"][0]["words"]
    assert [w["word"] for w in words] == ["Segment", "0", "from", "fw."]
    assert words[0] == {"word": "Segment", "start": 0.0, "end": 0.75, "probability": 0.8123}
    assert words[3]["end"] == 3.0  # 3.0000000000000004 on the wire


async def test_without_word_timestamps_nothing_is_sent_and_no_words_come_back(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    result = await run(settings_for(server.base_url), http, job_for(sine_wav(3.0)))

    assert "word_timestamps" not in server.requests[0].query
    assert "words" not in result["segments"][0]


async def test_min_confidence_drops_unsure_segments(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    # The stub's segments have avg_logprob -0.1877: confidence exp(-0.1877) = 0.829.
    kept = await run(
        settings_for(server.base_url), http, job_for(sine_wav(3.0), min_confidence=0.8)
    )
    dropped = await run(
        settings_for(server.base_url), http, job_for(sine_wav(3.0), min_confidence=0.9)
    )

    assert kept["text"] == "Segment 0 from fw."
    assert dropped["text"] == ""
    assert dropped["attempts"][0]["dropped_segments"] == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vad_filter", "yes", "input.vad_filter must be true or false"),
        ("word_timestamps", 1, "input.word_timestamps must be true or false"),
        ("min_confidence", 1.5, "input.min_confidence must be a number between 0 and 1"),
        ("min_confidence", "high", "input.min_confidence must be a number between 0 and 1"),
        ("drop_no_speech", 0, "input.drop_no_speech must be true, false or a number in (0, 1]"),
        ("drop_no_speech", 2, "input.drop_no_speech must be a number between 0 and 1"),
        ("channels", "stereo", 'input.channels must be "mix" or "split"'),
        ("channel_speakers", ["a", "b"], 'input.channel_speakers needs input.channels "split"'),
    ],
)
async def test_bad_options_are_invalid_input_naming_the_field(
    field: str, value: Any, message: str, server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    failure = await fail(
        settings_for(server.base_url), http, job_for(sine_wav(1.0), **{field: value})
    )

    assert failure.category == "invalid_input"
    assert failure.message == message
    assert server.requests_received == 0


# -- 6. call recordings: one channel per side --------------------------------------------------


async def test_split_channels_label_each_side_and_merge_by_time(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    # agent speaks 0.5-3 s and 8-10 s, the customer 4-7 s
    call = tone_wav(10.0, [(0.5, 3.0), (8.0, 10.0)], [(4.0, 7.0)])
    job = job_for(call, channels="split", channel_speakers=["agent", "customer"], diarize=True)

    result = await run(settings_for(server.base_url), http, job)

    assert [(s["speaker"], s["channel"], s["start"], s["end"]) for s in result["segments"]] == [
        ("agent", 0, 0.5, 3.0),
        ("customer", 1, 4.0, 7.0),
        ("agent", 0, 8.0, 10.0),
    ]
    assert result["channel_speakers"] == ["agent", "customer"]
    assert result["text"] == "Segment 0 from fw. Segment 0 from fw. Segment 1 from fw."
    assert result["diarization"] == "unavailable"
    # one request per channel, each 16 kHz mono, no diarization asked of the server
    assert [(r.sample_rate, r.channels) for r in server.requests] == [(16000, 1), (16000, 1)]
    assert all("diarize" not in r.query for r in server.requests)
    assert [i["channel"] for i in result["attempts"][0]["instances"]] == [0, 1]


async def test_split_channels_default_to_channel_n_names(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    call = tone_wav(4.0, [(0.0, 1.0)], [(2.0, 3.0)])

    result = await run(settings_for(server.base_url), http, job_for(call, channels="split"))

    assert [s["speaker"] for s in result["segments"]] == ["channel_0", "channel_1"]


async def test_an_empty_channel_with_sound_is_flagged_on_that_channel(
    server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    call = tone_wav(4.0, [(0.0, 1.0)], [(2.0, 3.0)])
    server.fail_next("empty")  # the first channel's request

    result = await run(
        settings_for(server.base_url),
        http,
        job_for(call, channels="split", channel_speakers=["agent", "customer"]),
    )

    assert [s["speaker"] for s in result["segments"]] == ["customer"]
    [warning] = result["warnings"]
    assert warning["channel"] == "agent"


@pytest.mark.parametrize(
    ("audio", "names", "message"),
    [
        (sine_wav(1.0), None, 'input.channels: "split" needs audio with two or more channels'),
        (tone_wav(1.0, [(0, 1)], [(0, 1)]), ["agent"],
         "input.channel_speakers: 1 name(s) for audio with 2 channels"),
    ],
)  # fmt: skip
async def test_split_needs_channels_and_a_name_for_each(
    audio: bytes,
    names: list[str] | None,
    message: str,
    server: WhisperXStub,
    http: httpx.AsyncClient,
) -> None:
    extra = {"channel_speakers": names} if names else {}
    failure = await fail(
        settings_for(server.base_url), http, job_for(audio, channels="split", **extra)
    )

    assert failure.category == "invalid_input"
    assert failure.message.startswith(message)
    assert server.requests_received == 0


# -- 8. failover leaves a trace ------------------------------------------------------------------


async def test_every_instance_tried_is_recorded_and_logged(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ai_service")
    dead = closed_port_url()
    with (
        WhisperXStub("busy", engine="faster_whisper") as busy,
        WhisperXStub("ok", engine="faster_whisper") as ok,
    ):
        busy.fail_always("unavailable")
        settings = settings_for(dead, busy.base_url, ok.base_url)
        transcription._whisperx_pickers.pop(settings.whisperx_url, None)  # start at the first
        result = await run(settings, http, job_for(sine_wav(2.0)))

    instances = result["attempts"][0]["instances"]
    assert [(i["url"], i["status"]) for i in instances] == [
        (dead, "error"),
        (busy.base_url, "error"),
        (ok.base_url, "ok"),
    ]
    assert instances[0]["error"]["category"] == "provider_unavailable"
    assert "cannot connect" in instances[0]["error"]["message"]
    assert "HTTP 503" in instances[1]["error"]["message"]
    assert instances[2]["error"] is None
    assert all(isinstance(i["duration_ms"], int) for i in instances)
    assert result["attempts"][0]["instance"] == ok.base_url
    for entry in instances:
        assert f"whisperx instance {entry['url']} {entry['status']} in" in caplog.text


async def test_a_failed_attempt_keeps_its_instances(http: httpx.AsyncClient) -> None:
    dead = closed_port_url()
    with WhisperXStub("down", engine="faster_whisper") as down:
        down.fail_always("unavailable")
        failure = await fail(settings_for(dead, down.base_url), http, job_for(sine_wav(1.0)))

    [attempt] = failure.details["attempts"]
    assert {i["url"] for i in attempt["instances"]} == {dead, down.base_url}
    assert all(i["status"] == "error" for i in attempt["instances"])


# -- 11. what callers read ---------------------------------------------------------------------


async def test_timings_are_rounded_model_is_configured_and_engine_is_separate(
    http: httpx.AsyncClient,
) -> None:
    with WhisperXStub("fw", engine="faster_whisper", segment_seconds=7.06) as stub:
        settings = settings_for(stub.base_url, WHISPERX_MODEL="tiny.en")
        result = await run(settings, http, job_for(sine_wav(15.0)))

    assert [(s["start"], s["end"]) for s in result["segments"]] == [
        (0.0, 7.06),
        (7.06, 14.12),  # 14.120000000000001 on the wire
        (14.12, 15.0),
    ]
    assert result["model"] == "tiny.en"
    attempt = result["attempts"][0]
    assert attempt["model"] == "tiny.en"
    assert attempt["engine"] == "faster_whisper"
    assert attempt["selected"] is True
    assert "segments" not in attempt  # stored once, in the result


# -- end to end through the worker ----------------------------------------------------------------


async def test_a_split_call_through_the_api_and_the_worker(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    call = tone_wav(20.0, [(1.0, 5.0), (12.0, 15.0)], [(6.0, 10.0)])
    dead = closed_port_url()
    with WhisperXStub("fw", engine="faster_whisper") as stub:
        async with running_worker(database_url, WHISPERX_URL=f"{dead},{stub.base_url}"):
            created = await api.post(
                "/api/v1/jobs",
                json={
                    "owner_service": "telephony",
                    "owner_ref": "call-split",
                    "task_type": "transcription",
                    "model_profile": "whisperx",
                    "input": {
                        "audio_base64": base64.b64encode(call).decode(),
                        "channels": "split",
                        "channel_speakers": ["agent", "customer"],
                        "language": "English",
                    },
                },
            )
            assert created.status_code == 201
            job_id = created.json()["id"]
            await wait_until_finished(store, [job_id], timeout=30)
    job = (await api.get(f"/api/v1/jobs/{job_id}")).json()

    assert job["status"] == "completed", job["error_message"]
    result = job["result"]
    assert [(s["speaker"], s["start"]) for s in result["segments"]] == [
        ("agent", 1.0),
        ("customer", 6.0),
        ("agent", 12.0),
    ]
    assert result["language"] == "en"
    assert result["warnings"] == []
    urls = {i["url"] for i in result["attempts"][0]["instances"] if i["status"] == "ok"}
    assert urls == {stub.base_url}


# -- the stub itself answers in the measured shape -----------------------------------------------


async def test_the_stub_answers_in_the_shape_of_the_recorded_server(server: WhisperXStub) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.base_url}/asr",
            params={"output": "json", "word_timestamps": "true", "language": "xx"},
            files={"audio_file": ("hello.wav", sine_wav(3.0), "audio/wav")},
        )
        docs = await client.get(f"{server.base_url}/docs")
        health = await client.get(f"{server.base_url}/health")

    body = json.loads(response.text)
    assert list(body) == ["language", "segments", "text"]
    assert body["language"] == "xx"  # echoed unchecked
    [segment] = body["segments"]
    assert list(segment) == [
        "id", "seek", "start", "end", "text", "tokens", "avg_logprob",
        "compression_ratio", "no_speech_prob", "words", "temperature",
    ]  # fmt: skip
    assert segment["id"] == 1
    assert segment["text"].startswith(" ")
    assert segment["end"] == 3.0000000000000004  # float noise, as measured
    assert list(segment["words"][0]) == ["start", "end", "word", "probability"]
    assert segment["words"][0]["word"] == " Segment"
    assert response.headers["content-disposition"] == 'attachment; filename="hello.wav.json"'
    assert docs.status_code == 200
    assert health.status_code == 404


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["agent", "a" * 65], "input.channel_speakers: names are at most 64 characters"),
        (["agent", "agent"], "input.channel_speakers: the names must differ"),
        (["agent", " "], "input.channel_speakers must be a non-empty list of names"),
        ("agent", "input.channel_speakers must be a non-empty list of names"),
    ],
)
async def test_channel_speakers_are_checked(
    names: Any, message: str, server: WhisperXStub, http: httpx.AsyncClient
) -> None:
    call = tone_wav(1.0, [(0, 1)], [(0, 1)])
    job = job_for(call, channels="split", channel_speakers=names)

    failure = await fail(settings_for(server.base_url), http, job)

    assert failure.category == "invalid_input"
    assert failure.message == message
    assert server.requests_received == 0
