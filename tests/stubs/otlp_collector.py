"""An OpenTelemetry collector on loopback: OTLP/HTTP protobuf `POST /v1/traces`.

The real exporter (`opentelemetry-exporter-otlp-proto-http`) sends to it what a
collector would get; the stub decodes every `ExportTraceServiceRequest` with the
protocol's own generated classes and keeps the spans, ids in hex.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.stubs import StubServer


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # the protocol's SpanKind number (CLIENT 3, CONSUMER 5)
    attributes: dict[str, Any]
    service_name: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


class OTLPCollector(StubServer):
    """Collects the spans exported to `{base_url}/v1/traces`."""

    def __init__(self, **kwargs: Any) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        super().__init__(**kwargs)

    def build_app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.body())
            received = []
            for resource_spans in message.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                service_name=str(resource.get("service.name", "")),
                            )
                        )
            with self._lock:
                self.requests += 1
                self.spans.extend(received)
            body = ExportTraceServiceResponse().SerializeToString()
            return Response(body, media_type="application/x-protobuf")

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
