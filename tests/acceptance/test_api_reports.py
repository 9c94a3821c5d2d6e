"""The transcription A/B report over HTTP: a real worker compares three stub providers,
`GET /api/v1/reports/transcription` shows them, `/transcription/jobs/{id}` aligns the
texts; and every bad query is a 4xx naming the field."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ai_service.store import Store
from tests.helpers import job_body
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub, RecordedRequest
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

REPORT = "/api/v1/reports/transcription"
QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
VOXTRAL_MODEL = "mistralai/Voxtral-Small-24B-2507"


def reply(text: str) -> Any:
    def answer(request: RecordedRequest) -> str:
        return text

    return answer


async def transcribe(api: httpx.AsyncClient, audio: str, owner_ref: str) -> str:
    created = await api.post(
        "/api/v1/jobs",
        json={
            "owner_service": "telephony",
            "owner_ref": owner_ref,
            "task_type": "transcription",
            "model_profile": "whisperx",
            "input": {"audio_base64": audio, "audio_format": "wav", "language": "ru"},
        },
    )
    assert created.status_code == 201, created.text
    job_id: str = created.json()["id"]
    return job_id


async def test_a_worker_run_of_three_providers_shows_in_the_report(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    audio = base64.b64encode(sine_wav(5.0)).decode()
    # WhisperX (the reference) says "Segment 0 from wx." for a 5 s clip: the words
    # segment 0 from wx. Qwen says the same but for case and punctuation (WER 0);
    # Voxtral substitutes one word and inserts one:
    #   ref: segment 0    from -   wx
    #   hyp: segment zero from the wx
    #                S         I         -> 2 / 4 = 0.5
    with (
        WhisperXStub("wx", segment_seconds=10.0) as whisperx,
        OpenAIStub(models=[QWEN_MODEL], reply=reply("SEGMENT 0, from wx!")) as qwen,
        OpenAIStub(models=[VOXTRAL_MODEL], reply=reply("segment zero from the wx")) as voxtral,
    ):
        async with running_worker(
            database_url,
            TRANSCRIPTION_PROVIDERS="whisperx,qwen2-audio,voxtral-small",
            TRANSCRIPTION_MODE="compare",
            WHISPERX_URL=whisperx.base_url,
            QWEN_AUDIO_BASE_URL=qwen.base_url,
            VOXTRAL_BASE_URL=voxtral.base_url,
        ):
            first = await transcribe(api, audio, "beeline/call-1")
            second = await transcribe(api, audio, "beeline/call-2")
            await wait_until_finished(store, [first, second], timeout=60)

    job = (await api.get(f"/api/v1/jobs/{first}")).json()
    assert job["status"] == "completed", job["error_message"]
    attempts = job["result"]["attempts"]
    # The worker recorded each compared attempt's WER in the result.
    assert [a.get("wer") for a in attempts] == [None, 0.0, 0.5]

    answer = await api.get(REPORT)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["reference_provider"] == "whisperx"
    assert report["owner_service"] is None
    by_provider = {p["provider"]: p for p in report["providers"]}
    assert sorted(by_provider) == ["qwen2-audio", "voxtral-small", "whisperx"]
    for provider in by_provider.values():
        assert (provider["attempts"], provider["ok"], provider["errors"]) == (2, 2, 0)
        assert provider["success_rate"] == 1.0
        assert provider["duration_p50_ms"] is not None
        assert provider["duration_p95_ms"] >= provider["duration_p50_ms"]
        # Stubs answer at once: far faster than real time (5 s of audio each).
        assert 0 < provider["real_time_factor"] < 1
    assert by_provider["whisperx"]["model"] == "large-v3"
    assert by_provider["qwen2-audio"]["model"] == QWEN_MODEL
    assert by_provider["voxtral-small"]["model"] == VOXTRAL_MODEL
    assert (by_provider["whisperx"]["wer_mean"], by_provider["whisperx"]["wer_jobs"]) == (None, 0)
    assert by_provider["whisperx"]["reference_jobs"] == 2
    assert (by_provider["qwen2-audio"]["wer_mean"], by_provider["qwen2-audio"]["wer_jobs"]) == (
        0.0,
        2,
    )
    assert (
        by_provider["voxtral-small"]["wer_mean"],
        by_provider["voxtral-small"]["wer_jobs"],
    ) == (0.5, 2)

    assert {d["job_id"] for d in report["disagreements"]} == {first, second}
    top = report["disagreements"][0]
    assert top["max_wer"] == 0.5
    assert top["reference_provider"] == "whisperx"
    assert top["owner_ref"] in ("beeline/call-1", "beeline/call-2")
    assert [(p["provider"], p["reference"], p["wer"]) for p in top["providers"]] == [
        ("whisperx", True, None),
        ("qwen2-audio", False, 0.0),
        ("voxtral-small", False, 0.5),
    ]

    # The side-by-side view of one of them.
    compared = await api.get(f"{REPORT}/jobs/{first}")
    assert compared.status_code == 200, compared.text
    view = compared.json()
    assert view["reference_provider"] == "whisperx"
    assert view["owner_ref"] == "beeline/call-1"
    wx, qw, vx = view["attempts"]
    assert (wx["selected"], wx["text"], wx["wer"], wx["alignment"]) == (
        True,
        "Segment 0 from wx.",
        None,
        None,
    )
    assert (qw["text"], qw["wer"]) == ("SEGMENT 0, from wx!", 0.0)
    words = ["segment", "0", "from", "wx"]
    assert qw["alignment"] == [{"op": "equal", "ref": words, "hyp": words}]
    assert vx["wer"] == 0.5
    assert vx["alignment"] == [
        {"op": "equal", "ref": ["segment"], "hyp": ["segment"]},
        {"op": "substitute", "ref": ["0"], "hyp": ["zero"]},
        {"op": "equal", "ref": ["from"], "hyp": ["from"]},
        {"op": "insert", "ref": [], "hyp": ["the"]},
        {"op": "equal", "ref": ["wx"], "hyp": ["wx"]},
    ]

    # Another owner_service has nothing; a window before the jobs neither.
    assert (await api.get(REPORT, params={"owner_service": "crm"})).json()["providers"] == []
    before = datetime.now(UTC) - timedelta(days=2)
    earlier = await api.get(
        REPORT,
        params={"since": before.isoformat(), "until": (before + timedelta(hours=1)).isoformat()},
    )
    assert earlier.json()["providers"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no timezone
        ({"until": "1767225600"}, "until"),  # a number, not a date-time
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-02-02T00:00:00Z"}, "since"),
        ({"until": "2026-01-01T00:00:00+03:00", "since": "2025-11-01T00:00:00Z"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"owner_service": ""}, "owner_service"),
        ({"sinse": "2026-01-01T00:00:00Z"}, "sinse"),
        ({"job_id": "x"}, "job_id"),
    ],
)
async def test_a_bad_query_is_a_422_naming_the_field(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await api.get(REPORT, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] in ("invalid_request", "validation_error")
    assert field in body["message"], body
    fields = [e["field"] for e in body["details"]["errors"]]
    assert any(f.endswith(field) for f in fields), fields


async def test_the_window_defaults_and_bounds(api: httpx.AsyncClient) -> None:
    # Default: the last 24 hours.
    default = (await api.get(REPORT)).json()
    since, until = (datetime.fromisoformat(default[k]) for k in ("since", "until"))
    assert until - since == timedelta(hours=24)
    assert abs((until - datetime.now(UTC)).total_seconds()) < 60
    # Only `until`: the 24 hours before it; offsets are read and answered in UTC.
    only_until = await api.get(REPORT, params={"until": "2026-03-01T03:00:00+03:00"})
    assert only_until.status_code == 200
    assert only_until.json()["since"].startswith("2026-02-28T00:00:00")
    assert only_until.json()["until"].startswith("2026-03-01T00:00:00")
    # 31 days exactly is fine.
    longest = await api.get(
        REPORT, params={"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}
    )
    assert longest.status_code == 200, longest.text


async def test_comparing_a_job_that_is_no_completed_transcription(
    api: httpx.AsyncClient,
) -> None:
    missing = await api.get(f"{REPORT}/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "job_not_found"
    assert (await api.get(f"{REPORT}/jobs/not-a-uuid")).status_code == 422

    llm = (await api.post("/api/v1/jobs", json=job_body())).json()["id"]
    other = await api.get(f"{REPORT}/jobs/{llm}")
    assert other.status_code == 422
    assert other.json()["details"]["field"] == "job_id"
    assert "llm_chat" in other.json()["message"]

    pending = await api.post(
        "/api/v1/jobs",
        json=job_body(task_type="transcription", input={"audio_url": "https://a.example/1.wav"}),
    )
    waiting = await api.get(f"{REPORT}/jobs/{pending.json()['id']}")
    assert waiting.status_code == 409
    assert waiting.json()["error"] == "invalid_transition"
    assert "pending" in waiting.json()["message"]
    assert (await api.get(f"{REPORT}/jobs/{llm}", params={"x": "1"})).status_code == 422


async def test_the_openapi_document_describes_the_report(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    report = doc["paths"][REPORT]["get"]
    ok = report["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TranscriptionReportOut"}
    assert {p["name"] for p in report["parameters"]} == {"since", "until", "owner_service", "limit"}
    job = doc["paths"][f"{REPORT}/jobs/{{job_id}}"]["get"]
    assert {"404", "409", "422"} <= set(job["responses"])
    schemas = doc["components"]["schemas"]
    assert "wer_mean" in schemas["TranscriptionProviderOut"]["properties"]
    assert "alignment" in schemas["ComparedAttemptOut"]["properties"]
