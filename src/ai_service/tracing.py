"""Trace propagation (W3C `traceparent`) and opt-in OpenTelemetry export.

A job created with a `traceparent` header carries it (`jobs.traceparent`).
The worker continues that trace: `job_span` opens the job's span as a child of
the caller's, and every provider request made inside it (`TracingTransport`,
the transport of the provider HTTP clients) gets a client span and a
`traceparent` header naming it, so vLLM or WhisperX logs line up with the
caller's trace.

Export is opt-in through the standard variables: `configure` installs an SDK
tracer only when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`,
`console`) or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and never with `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none`; the exporter reads its other `OTEL_*`
variables itself. Without them the tracer is OpenTelemetry's no-op one: no
span is recorded or exported, but a job's `traceparent` is still passed on
to its provider requests (with the caller's own span id), and a job without
one sends none. URLs in span attributes have no query string (provider keys
may sit there).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ai_service.traceparent import parse_traceparent

log = logging.getLogger("ai_service.tracing")

INSTRUMENTATION = "ai_service"
_PROPAGATOR = TraceContextTextMapPropagator()
_EXPORTERS = {"otlp", "console"}


def export_wanted(env: Mapping[str, str]) -> str | None:
    """The exporter the `OTEL_*` variables ask for (`otlp`, `console`), or None."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [e for e in named if e]
    if named:
        wanted = [e for e in named if e in _EXPORTERS]
        return wanted[0] if wanted else None  # `none` or one this build does not ship
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if any(env.get(name, "").strip() for name in endpoints) else None


@dataclass
class Tracing:
    """The process's tracer, and how to flush it at exit."""

    tracer: Tracer = field(default_factory=trace.NoOpTracer)
    provider: Any = None  # the SDK's TracerProvider when exporting

    @property
    def exporting(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Export what is still buffered (bounded by the SDK's own timeouts)."""
        if self.provider is not None:
            self.provider.shutdown()


current = Tracing()


def configure(env: Mapping[str, str], service_name: str) -> Tracing:
    """Install the tracer the `OTEL_*` variables ask for (none: the no-op tracer)."""
    global current
    exporter_name = export_wanted(env)
    if exporter_name is None:
        current = Tracing()
        return current
    # Imported only when exporting: a process that does not export loads no SDK.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # OTEL_SERVICE_NAME (read by the SDK) wins over the process's own name.
    resource = Resource.create(
        {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    current = Tracing(provider.get_tracer(INSTRUMENTATION), provider)
    log.info("exporting traces (%s)", exporter_name)
    return current


def _parent(traceparent: str | None) -> Context | None:
    valid = parse_traceparent(traceparent)
    return _PROPAGATOR.extract({"traceparent": valid}) if valid else None


@contextlib.contextmanager
def job_span(
    name: str, traceparent: str | None, attributes: Mapping[str, str | int]
) -> Iterator[trace.Span]:
    """The span of one job attempt, a child of the job's `traceparent` (if any).

    A job without a `traceparent` starts a trace of its own when exporting and
    opens no span otherwise (nothing to continue, nothing to record).
    """
    parent = _parent(traceparent)
    if parent is None and not current.exporting:
        yield trace.INVALID_SPAN
        return
    with current.tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=dict(attributes),
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


@contextlib.contextmanager
def provider_span(method: str, url: str) -> Iterator[dict[str, str]]:
    """A client span for one provider request made inside a job's span; yields the
    headers that carry it (`traceparent`), empty outside a job's trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        yield {}
        return
    parts = httpx.URL(url)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "server.address": parts.host,
        "url.path": parts.path,  # no query string: a provider key may sit there
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    with current.tracer.start_as_current_span(
        f"{method} {parts.path}", kind=SpanKind.CLIENT, attributes=attributes
    ):
        headers: dict[str, str] = {}
        inject(headers)
        yield headers


def status_code(code: int) -> None:
    """Record a provider answer's HTTP status on the current client span."""
    span = trace.get_current_span()
    span.set_attribute("http.response.status_code", code)
    if code >= 500:
        span.set_status(Status(StatusCode.ERROR))


def inject(headers: dict[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to `headers`."""
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(headers)


class TracingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that gives each request made inside a job a client span
    and passes the trace on in its `traceparent` header."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not trace.get_current_span().get_span_context().is_valid:
            return await self._inner.handle_async_request(request)
        with provider_span(request.method, str(request.url)) as headers:
            request.headers.update(headers)
            response = await self._inner.handle_async_request(request)
            status_code(response.status_code)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def transport(limits: httpx.Limits) -> TracingTransport:
    """A pooled HTTP transport with `limits`, traced."""
    return TracingTransport(httpx.AsyncHTTPTransport(limits=limits))
