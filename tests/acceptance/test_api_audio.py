"""`/api/v1/audio` and audio kept out of the job rows, end to end over HTTP.

A recording is uploaded as a raw body (its own limit, `AUDIO_MAX_BYTES`, not
`MAX_BODY_BYTES`), named by `input.audio_id`, and read by the worker from
PostgreSQL; inline `audio_base64` is moved to the audio table at create. No job
row, job answer or job list carries audio bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ai_service.store import Store
from tests.conftest import ApiFactory
from tests.helpers import job_body
from tests.stubs import sine_wav, stereo_call_wav
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

API = "/api/v1"
WAV = {"Content-Type": "audio/wav"}


def transcription(**input_fields: Any) -> dict[str, Any]:
    return job_body(task_type="transcription", model_profile="whisperx", input=input_fields)


async def upload(api: httpx.AsyncClient, data: bytes, **params: str) -> dict[str, Any]:
    params.setdefault("owner_service", "telephony")
    response = await api.post(f"{API}/audio", params=params, content=data, headers=WAV)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{API}/audio/{body['audio_id']}"
    return body


async def row_sizes(store: Store, job_id: str) -> dict[str, int]:
    """Bytes of each payload column of the job row, as stored (SQL, not the API)."""
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT octet_length(input::text) AS input, "
            "coalesce(octet_length(result::text), 0) AS result, "
            "coalesce(octet_length(error_details::text), 0) AS error_details "
            "FROM jobs WHERE id = %s",
            (job_id,),
        )
        row: dict[str, int] = await cur.fetchone()
        return row


async def test_a_recording_is_uploaded_raw_and_read_back(api: httpx.AsyncClient) -> None:
    data = sine_wav(3.0)

    stored = await upload(api, data)

    assert stored["bytes"] == len(data)
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    assert (stored["owner_service"], stored["content_type"]) == ("telephony", "audio/wav")
    got = await api.get(f"{API}/audio/{stored['audio_id']}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "audio/wav"
    assert got.headers["etag"] == f'"{stored["sha256"]}"'
    missing = await api.get(f"{API}/audio/01900000-0000-7000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["error"] == "audio_not_found"


async def test_the_upload_has_its_own_limit_not_max_body_bytes(api_factory: ApiFactory) -> None:
    async with api_factory(MAX_BODY_BYTES="4096", AUDIO_MAX_BYTES="200000") as api:
        # Far over MAX_BODY_BYTES, within AUDIO_MAX_BYTES: accepted.
        stored = await upload(api, sine_wav(6.0))  # 96 kB
        assert stored["bytes"] > 4096
        # Over AUDIO_MAX_BYTES, declared or streamed: 413 naming the field and the setting.
        too_big = sine_wav(13.0)  # 208 kB

        async def streamed() -> AsyncIterator[bytes]:
            for start in range(0, len(too_big), 16384):
                yield too_big[start : start + 16384]

        for content in (too_big, streamed()):
            refused = await api.post(
                f"{API}/audio", params={"owner_service": "t"}, content=content, headers=WAV
            )
            assert refused.status_code == 413
            assert refused.json() == {
                "error": "payload_too_large",
                "message": "body: larger than AUDIO_MAX_BYTES (200000 bytes)",
                "details": {"field": "body", "limit_bytes": 200000, "setting": "AUDIO_MAX_BYTES"},
            }
        # JSON routes keep MAX_BODY_BYTES.
        big_json = await api.post(f"{API}/jobs", json=job_body(input={"x": "y" * 5000}))
        assert big_json.status_code == 413
        assert big_json.json()["details"] == {"limit_bytes": 4096}


async def test_an_upload_must_be_declared_as_audio_and_not_empty(api: httpx.AsyncClient) -> None:
    url = f"{API}/audio?owner_service=telephony"
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {}):
        refused = await api.post(url, content=b"RIFF", headers=headers)
        assert refused.status_code == 415, headers
        assert refused.json()["error"] == "unsupported_media_type"
        assert "audio/" in refused.json()["message"]
    octet = await api.post(
        url, content=sine_wav(0.5), headers={"Content-Type": "application/octet-stream"}
    )
    assert octet.status_code == 201
    empty = await api.post(url, content=b"", headers=WAV)
    assert empty.status_code == 422
    assert empty.json()["details"]["field"] == "body"
    no_owner = await api.post(f"{API}/audio", content=b"RIFF", headers=WAV)
    assert no_owner.status_code == 422
    assert no_owner.json()["details"]["field"] == "owner_service"


async def test_inline_base64_is_moved_out_of_the_job_row(
    api: httpx.AsyncClient, store: Store
) -> None:
    data = sine_wav(2.0)
    encoded = base64.b64encode(data).decode()
    body = transcription(audio_base64=encoded, audio_format="wav", language="en")
    body["idempotency_key"] = "call-1"

    created = await api.post(f"{API}/jobs", json=body)

    assert created.status_code == 201, created.text
    job_input = created.json()["input"]
    assert set(job_input) == {"audio_id", "audio_format", "language"}
    stored = await api.get(f"{API}/audio/{job_input['audio_id']}")
    assert stored.content == data
    # The same request again is the same job (the moved audio has a stable id).
    again = await api.post(f"{API}/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    assert (await row_sizes(store, created.json()["id"]))["input"] < 200
    # A batch moves each item's (and the defaults') audio the same way.
    batch = await api.post(
        f"{API}/jobs/batch",
        json={
            "defaults": transcription(audio_base64=encoded),
            "jobs": [{"owner_ref": "a"}, {"owner_ref": "b"}],
        },
    )
    assert batch.status_code == 201
    listed = await api.get(f"{API}/jobs", params={"include": "input", "limit": 100})
    assert len(listed.json()["jobs"]) == 3
    assert {j["input"]["audio_id"] for j in listed.json()["jobs"]} == {job_input["audio_id"]}
    assert encoded[:100] not in listed.text


@pytest.mark.parametrize(
    ("job_input", "status", "field"),
    [
        ({"audio_base64": "!!! not base64 !!!"}, 422, "input.audio_base64"),
        ({"audio_id": "not-a-uuid"}, 422, "input.audio_id"),
        ({"audio_id": "01900000-0000-7000-8000-000000000000"}, 422, "input.audio_id"),
    ],
)
async def test_bad_audio_in_a_job_is_refused_naming_the_field(
    api: httpx.AsyncClient, job_input: dict[str, Any], status: int, field: str
) -> None:
    refused = await api.post(f"{API}/jobs", json=transcription(**job_input))

    assert refused.status_code == status
    assert refused.json()["details"]["field"] == field
    assert refused.json()["message"].startswith(f"{field}: ")


async def test_inline_audio_over_audio_max_bytes_is_413(api_factory: ApiFactory) -> None:
    async with api_factory(AUDIO_MAX_BYTES="1000") as api:
        encoded = base64.b64encode(sine_wav(1.0)).decode()
        refused = await api.post(f"{API}/jobs", json=transcription(audio_base64=encoded))
        assert refused.status_code == 413
        assert refused.json()["details"] == {
            "field": "input.audio_base64",
            "limit_bytes": 1000,
            "setting": "AUDIO_MAX_BYTES",
        }


async def test_a_30_minute_stereo_call_by_audio_id_never_lands_in_a_job_row(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    call = stereo_call_wav(1800.0, rate=8000)  # 57.6 MB: about 8 times MAX_BODY_BYTES
    stored = await upload(api, call)
    assert stored["bytes"] == len(call)

    with WhisperXStub("wx", segment_seconds=60.0) as whisperx:
        async with running_worker(database_url, WHISPERX_URL=whisperx.base_url):
            created = await api.post(
                f"{API}/jobs",
                json=transcription(
                    audio_id=stored["audio_id"],
                    channels="split",
                    channel_speakers=["agent", "customer"],
                ),
            )
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            await wait_until_finished(store, [job_id], timeout=120)

    job = (await api.get(f"{API}/jobs/{job_id}")).json()
    assert job["status"] == "completed", job["error_message"]
    result = job["result"]
    assert result["audio_duration"] == pytest.approx(1800.0, abs=0.1)
    assert job["input"] == {
        "audio_id": stored["audio_id"],
        "channels": "split",
        "channel_speakers": ["agent", "customer"],
    }
    # Each channel went to the server on its own, as a whole 16 kHz mono WAV from disk.
    assert [r.audio_seconds for r in whisperx.requests] == [
        pytest.approx(1800.0, abs=0.1),
        pytest.approx(1800.0, abs=0.1),
    ]
    # The parties take 5 s turns, the agent first: 360 segments, labelled, in time order.
    segments = result["segments"]
    assert len(segments) == 360
    assert [s["speaker"] for s in segments] == ["agent", "customer"] * 180
    assert [s["start"] for s in segments] == pytest.approx([5.0 * n for n in range(360)], abs=0.2)
    assert result["channel_speakers"] == ["agent", "customer"]
    # Neither the row (SQL), nor the job, nor the list carries audio (57.6 MB of it):
    # the result is the transcript alone, its 360 segments with their words.
    sizes = await row_sizes(store, job_id)
    assert sizes["input"] < 200
    assert sizes["result"] < 400 * len(segments)
    listed = await api.get(f"{API}/jobs", params={"include": "input,result", "limit": 100})
    for answer in (json.dumps(job), listed.text):
        assert len(answer) < 500 * len(segments)
        assert base64.b64encode(call[:3000]).decode()[8:200] not in answer
    assert len((await api.get(f"{API}/jobs")).content) < 2000


async def test_a_job_whose_recording_is_gone_fails_as_invalid_input(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    stored = await upload(api, sine_wav(2.0))
    created = await api.post(f"{API}/jobs", json=transcription(audio_id=stored["audio_id"]))
    async with store.pool.connection() as conn:
        await conn.execute("DELETE FROM audio_blobs WHERE id = %s", (stored["audio_id"],))

    with WhisperXStub("wx") as whisperx:
        async with running_worker(database_url, WHISPERX_URL=whisperx.base_url):
            await wait_until_finished(store, [created.json()["id"]], timeout=30)

    job = (await api.get(f"{API}/jobs/{created.json()['id']}")).json()
    assert job["status"] == "failed"
    assert job["error_category"] == "invalid_input"
    assert job["error_message"].startswith("input.audio_id: no stored recording with this id")
    assert whisperx.requests_received == 0
