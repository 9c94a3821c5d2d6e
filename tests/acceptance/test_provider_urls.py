"""Provider base URLs with a query string: every request path goes before the query."""

from __future__ import annotations

import base64

import httpx

from ai_service.config import load_settings
from ai_service.worker import transcription
from ai_service.worker.handler import HandlerContext
from tests.factories import make_job
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub

QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
VOXTRAL_MODEL = "mistralai/Voxtral-Small-24B-2507"


async def test_every_transcription_provider_keeps_the_query_after_its_path() -> None:
    wav = sine_wav(2.0)
    with (
        WhisperXStub("wx") as whisperx,
        OpenAIStub(models=[QWEN_MODEL]) as qwen,
        OpenAIStub(models=[VOXTRAL_MODEL]) as voxtral,
    ):
        settings = load_settings(
            {
                "TRANSCRIPTION_PROVIDERS": "whisperx,qwen2-audio,voxtral-small",
                "WHISPERX_URL": f"{whisperx.base_url}/?api_key=wx-K",
                "QWEN_AUDIO_BASE_URL": f"{qwen.base_url}?api_key=qwen-K",
                "VOXTRAL_BASE_URL": f"{voxtral.base_url}/v1/?api_key=vox-K",
            }
        )
        job = make_job(input={"audio_base64": base64.b64encode(wav).decode()})
        async with httpx.AsyncClient() as http:
            result = await transcription.handle(job, HandlerContext(settings=settings, http=http))

    assert [a["status"] for a in result["attempts"]] == ["ok", "ok", "ok"], result["attempts"]
    # The stubs route only /asr and /v1/chat/completions: "ok" means the path was right,
    # and the query arrived whole (merged with WhisperX's own parameters).
    assert whisperx.requests[0].query["api_key"] == "wx-K"
    assert whisperx.requests[0].query["output"] == "json"
    assert qwen.requests[0].query == {"api_key": "qwen-K"}
    assert voxtral.requests[0].query == {"api_key": "vox-K"}


async def test_whisperx_credentials_go_in_a_basic_header_not_the_url() -> None:
    wav = sine_wav(2.0)
    with WhisperXStub("wx") as whisperx:
        url = whisperx.base_url.replace("http://", "http://wx%40user:p%3Ass@") + "?k=1"
        settings = load_settings({"TRANSCRIPTION_PROVIDERS": "whisperx", "WHISPERX_URL": url})
        job = make_job(input={"audio_base64": base64.b64encode(wav).decode()})
        async with httpx.AsyncClient() as http:
            result = await transcription.handle(job, HandlerContext(settings=settings, http=http))

    assert result["provider"] == "whisperx"
    expected = "Basic " + base64.b64encode(b"wx@user:p:ss").decode()
    assert whisperx.requests[0].headers["authorization"] == expected
    assert result["attempts"][0]["instance"] == f"{whisperx.base_url}?k=%2A%2A%2A"
