"""A local OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf ExportTraceServiceRequest, as a
collector's port 4318 takes it; keeps every span it is sent, in memory, for a test to read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import attrs
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


@attrs.frozen
class ReceivedSpan:
    """One span as exported: ids in the lower-case hex of a `traceparent`, the sender's service.name."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    # The status's description (a failed run's error), and each event as (name, attributes).
    status_message: str = ""
    events: tuple[tuple[str, dict[str, object]], ...] = ()


def _value(value: AnyValue) -> object:
    field = value.WhichOneof("value")
    return None if field is None else getattr(value, field)


def _attributes(items: Iterable[KeyValue]) -> dict[str, object]:
    return {item.key: _value(item.value) for item in items}


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name")),
                        name=span.name,
                        kind=KINDS.get(span.kind, "unspecified"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        status_message=span.status.message,
                        events=tuple((event.name, _attributes(event.attributes)) for event in span.events),
                    )
                )
    return spans


class OtlpCollector:
    """Receives OTLP/HTTP protobuf exports on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 20) -> None:
        """Wait until `found` holds for the spans received so far."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: found(self.spans))

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        spans = _decode(await request.read())
        async with self._arrived:
            self.spans.extend(spans)
            self._arrived.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def __aenter__(self) -> OtlpCollector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
