"""A transcription job end to end: created over HTTP, run by the worker, read back."""

from __future__ import annotations

import base64

import httpx

from ai_service.store import Store
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished


async def test_75_second_call_through_three_providers_via_api_and_worker(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    audio = base64.b64encode(sine_wav(75.0)).decode()
    with (
        WhisperXStub("wx") as whisperx,
        OpenAIStub(models=["Qwen/Qwen2-Audio-7B-Instruct"]) as qwen,
        OpenAIStub(models=["mistralai/Voxtral-Small-24B-2507"]) as voxtral,
    ):
        async with running_worker(
            database_url,
            TRANSCRIPTION_PROVIDERS="whisperx,qwen2-audio,voxtral-small",
            WHISPERX_URL=whisperx.base_url,
            QWEN_AUDIO_BASE_URL=qwen.base_url,
            VOXTRAL_BASE_URL=voxtral.base_url,
        ):
            created = await api.post(
                "/api/v1/jobs",
                json={
                    "owner_service": "telephony",
                    "owner_ref": "beeline/call-75",
                    "task_type": "transcription",
                    "model_profile": "whisperx",
                    "input": {"audio_base64": audio, "audio_format": "wav", "language": "ru"},
                },
            )
            assert created.status_code == 201
            job_id = created.json()["id"]
            await wait_until_finished(store, [job_id], timeout=60)
    job = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed", job["error_message"]
    result = job["result"]
    assert result["provider"] == "whisperx"
    assert result["segments"][0]["text"].endswith("from wx.")
    assert [a["provider"] for a in result["attempts"]] == [
        "whisperx",
        "qwen2-audio",
        "voxtral-small",
    ]
    assert all(a["status"] == "ok" and a["duration_ms"] >= 0 for a in result["attempts"])
    qwen_attempt = result["attempts"][1]
    assert [(c["start"], c["end"]) for c in qwen_attempt["chunks"]] == [
        (0.0, 30.0),
        (30.0, 60.0),
        (60.0, 75.0),
    ]
    assert [s["start"] for s in qwen_attempt["segments"]] == [0.0, 30.0, 60.0]
    assert len(qwen.requests) == 3
    assert len(voxtral.requests) == 1
