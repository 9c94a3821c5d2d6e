"""A job continues its caller's trace: the `traceparent` given at create reaches the
provider requests the worker makes for it, and, with the `OTEL_*` variables set, the
worker exports the job's span and its provider calls to an OTLP collector on loopback.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from ai_service.jobs import JobStatus
from ai_service.store import Store
from tests.conftest import ApiFactory
from tests.helpers import job_body, new_job, wait_for
from tests.processes import ServiceGroup
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.otlp_collector import OTLPCollector, ReceivedSpan
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
CONSUMER, CLIENT = 5, 3  # OTLP SpanKind numbers
MODEL = "qwen2.5-14b"  # the model_profile of `job_body` and `new_job`


async def create(api: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> UUID:
    response = await api.post("/api/v1/jobs", json=job_body(**fields), headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["traceparent"] == headers.get("traceparent")
    return UUID(response.json()["id"])


async def test_provider_requests_carry_the_callers_trace_without_any_export(
    api_factory: ApiFactory, store: Store, database_url: str
) -> None:
    audio = {"audio_base64": base64.b64encode(sine_wav(2.0)).decode(), "audio_format": "wav"}
    with OpenAIStub(models=[MODEL]) as llm, WhisperXStub("wx-trace") as wx:
        env = {
            "LLM_BASE_URL": llm.base_url,
            "LLM_MODEL": MODEL,
            "WHISPERX_URL": wx.base_url,
            "TRANSCRIPTION_PROVIDERS": "whisperx",
        }
        async with api_factory() as api, running_worker(database_url, **env):
            traced = {"traceparent": CALLER}
            chat = await create(api, traced, owner_ref="traced-chat")
            speech = await create(
                api, traced, task_type="transcription", model_profile="whisperx", input=audio
            )
            plain = await create(api, {}, owner_ref="untraced-chat")
            ids = [chat, speech, plain]
            await wait_until_finished(store, ids)
        for job_id in ids:
            assert (await store.get_job(job_id)).status is JobStatus.COMPLETED
        sent = [r.headers for r in llm.requests]
        assert len(sent) == 2
        # Nothing is recorded, so the provider's parent is the caller's own span; the
        # job created without a trace sends no header at all.
        assert sorted(h.get("traceparent", "") for h in sent) == ["", CALLER]
        assert wx.requests[-1].headers["traceparent"] == CALLER


def job_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    [span] = [s for s in spans if s.kind == CONSUMER]
    return span


async def test_with_an_otlp_endpoint_the_worker_exports_the_job_and_its_provider_call(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    with OpenAIStub(models=[MODEL]) as llm, OTLPCollector() as collector:
        env = {
            "LLM_BASE_URL": llm.base_url,
            "LLM_MODEL": MODEL,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base_url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        async with ServiceGroup(tmp_path, database_url, **env) as services:
            await services.start("worker", "traced", WORKER_ID="traced-worker")
            [created] = await store.create_jobs([new_job(traceparent=CALLER, owner_ref="otel")])
            await wait_until_finished(store, [created.job.id])
            await wait_for(lambda: len(collector.spans) >= 2, timeout=10, what="spans exported")
        spans = list(collector.spans)
    job = job_span(spans)
    assert job.trace_id == TRACE_ID
    assert job.parent_span_id == CALLER_SPAN
    assert job.name == "llm_chat job"
    assert job.service_name == "ai-service-worker"
    assert job.attributes["ai_service.job.id"] == str(created.job.id)
    assert job.attributes["ai_service.worker.id"] == "traced-worker"
    [call] = [s for s in spans if s.kind == CLIENT]
    assert call.trace_id == TRACE_ID
    assert call.parent_span_id == job.span_id
    assert call.attributes["http.response.status_code"] == 200
    # The provider saw the client span as its parent, in the caller's trace.
    assert llm.requests[-1].headers["traceparent"] == f"00-{TRACE_ID}-{call.span_id}-01"


async def test_without_otel_variables_nothing_is_exported(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    with OpenAIStub(models=[MODEL]) as llm, OTLPCollector() as collector:
        env = {"LLM_BASE_URL": llm.base_url, "LLM_MODEL": MODEL}
        async with ServiceGroup(tmp_path, database_url, **env) as services:
            worker = await services.start("worker", "quiet", WORKER_ID="quiet-worker")
            [created] = await store.create_jobs([new_job(traceparent=CALLER, owner_ref="q")])
            await wait_until_finished(store, [created.job.id])
            await worker.terminate()  # a stop flushes whatever an exporter would hold
        assert collector.requests == 0
        assert llm.requests[-1].headers["traceparent"] == CALLER
