"""Trace propagation and opt-in export (`ai_service.tracing`)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ai_service import tracing

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer recording into memory, in place of the process's."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = tracing.current
    tracing.current = tracing.Tracing(provider.get_tracer("test"), provider)
    try:
        yield exporter
    finally:
        tracing.current = before


@pytest.fixture
def not_exporting() -> Iterator[None]:
    before = tracing.current
    tracing.current = tracing.Tracing()
    try:
        yield
    finally:
        tracing.current = before


def parts(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),  # not shipped: nothing, no crash
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, None),
    ],
)
def test_export_only_when_the_otel_variables_ask_for_it(
    env: dict[str, str], wanted: str | None
) -> None:
    assert tracing.export_wanted(env) == wanted


def test_without_otel_variables_the_tracer_records_nothing() -> None:
    before = tracing.current
    try:
        configured = tracing.configure({}, "test")
        assert not configured.exporting
        assert tracing.current is configured
    finally:
        tracing.current = before


def test_an_invalid_traceparent_continues_nothing(not_exporting: None) -> None:
    with (
        tracing.job_span("job", "00-garbage-01", {}),
        tracing.provider_span("POST", "http://h") as h,
    ):
        assert h == {}


def test_not_exporting_the_job_span_passes_the_callers_trace_on(not_exporting: None) -> None:
    with tracing.job_span("job", CALLER, {}), tracing.provider_span("POST", "http://h/v1") as h:
        # No span is recorded, so the provider sees the caller's own span as parent.
        assert h == {"traceparent": CALLER}


def test_not_exporting_a_job_without_a_trace_sends_no_header(not_exporting: None) -> None:
    with tracing.job_span("job", None, {}), tracing.provider_span("POST", "http://h/v1") as h:
        assert h == {}


def test_outside_a_job_provider_requests_carry_no_header(recorded: InMemorySpanExporter) -> None:
    with tracing.provider_span("GET", "http://h/health") as headers:
        assert headers == {}
    assert recorded.get_finished_spans() == ()


def test_exporting_the_job_span_is_a_child_of_the_caller_and_the_call_of_the_job(
    recorded: InMemorySpanExporter,
) -> None:
    attributes = {"ai_service.job.id": "j1", "ai_service.job.attempt": 1}
    with (
        tracing.job_span("llm_chat job", CALLER, attributes),
        tracing.provider_span("POST", "http://10.0.0.5:8000/v1/chat?api_key=SECRET") as headers,
    ):
        tracing.status_code(200)
    client, job = recorded.get_finished_spans()
    assert job.name == "llm_chat job"
    assert job.kind is SpanKind.CONSUMER
    assert f"{job.context.trace_id:032x}" == TRACE_ID
    assert job.parent is not None
    assert f"{job.parent.span_id:016x}" == CALLER_SPAN
    assert job.attributes == attributes
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None
    assert client.parent.span_id == job.context.span_id
    assert client.attributes is not None
    assert client.attributes["url.path"] == "/v1/chat"  # no query string: keys sit there
    assert "SECRET" not in str(client.attributes)
    assert client.attributes["http.response.status_code"] == 200
    # The provider's parent is the client span, in the caller's trace.
    assert parts(headers["traceparent"]) == (TRACE_ID, f"{client.context.span_id:016x}")


def test_exporting_a_job_without_a_trace_starts_one(recorded: InMemorySpanExporter) -> None:
    with tracing.job_span("noop job", None, {}):
        pass
    [job] = recorded.get_finished_spans()
    assert job.parent is None


def test_a_failed_handler_marks_the_job_span_as_an_error(recorded: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.job_span("job", CALLER, {}):
        raise RuntimeError("provider down")
    [job] = recorded.get_finished_spans()
    assert not job.status.is_ok
    assert job.events[0].name == "exception"


async def test_the_transport_adds_the_header_and_a_client_span(
    recorded: InMemorySpanExporter,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    transport = tracing.TracingTransport(httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://127.0.0.1:9/outside")  # not in a job: untouched
        with tracing.job_span("transcription job", CALLER, {}):
            await client.post("http://127.0.0.1:9/asr?output=json")
    assert "traceparent" not in seen[0].headers
    client_span, _ = recorded.get_finished_spans()
    trace_id, parent = parts(seen[1].headers["traceparent"])
    assert (trace_id, parent) == (TRACE_ID, f"{client_span.context.span_id:016x}")
    assert client_span.attributes is not None
    assert client_span.attributes["http.response.status_code"] == 503
    assert not client_span.status.is_ok
