"""OpenTelemetry tracing: on only when the standard `OTEL_*` variables name an exporter.

Off (the default), nothing here imports OpenTelemetry: every function is a check of one module
global and returns at once, so a process without tracing pays nothing on the submit or run path.
On, `setup` builds one TracerProvider for the process (not the global one, so in-process tests
cannot leak it into one another) with the OTLP/HTTP exporter, and the rest of taskd asks this
module for the spans it opens: the API's server span (`server_middlewares`), the task's trace
context kept with its record (`carrier`), the run on the worker (`run_span`), provider calls and
webhook POSTs (`client_trace_configs`, under `webhook_span`). docs/tracing.md says what is traced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from taskd.config import ConfigError
from taskd.logs import REDACTOR
from taskd.model import TaskRecord

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.typedefs import Handler, Middleware
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Link
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes, AttributeValue
    from yarl import URL

# The span attributes of a run and of a webhook delivery (docs/tracing.md lists them).
TASK_ID, TASK_TYPE, PROJECT_ID = "taskd.task.id", "taskd.task.type", "taskd.project.id"
QUEUE, ATTEMPT, DEVICE, OUTCOME = "taskd.queue", "taskd.attempt", "taskd.device", "taskd.outcome"
WEBHOOK_EVENT = "taskd.webhook.event"
TRACER = "taskd"


class _Headers(Protocol):
    """What the trace middleware reads of a request's headers (aiohttp's `CIMultiDictProxy`)."""

    def getall(self, key: str, default: None) -> list[str] | None: ...

    def __iter__(self) -> Iterator[str]: ...


# The W3C headers of a caller's that taskd does not read (`server_middlewares`; nor in a record an
# earlier taskd stored them in, `_submitted_in`): only its trace and parent are kept
# (docs/tracing.md, "The caller's trace context").
UNREAD_HEADERS = frozenset({"tracestate", "baggage"})
SERVICE_NAME = "taskd"
# Where the OTLP exporter reads the headers it sends the collector.
HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
# The exporters taskd installs (the `otel` extra): OTLP over HTTP, or spans printed to stdout.
EXPORTERS = ("otlp", "console")
# The longest value of a span's attribute (an event's too: an exception's message and traceback),
# in characters, unless OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise; the SDK's default is no
# limit. aiohttp's error for an answer it cannot parse quotes what it read, ~185 kB of whatever a
# webhook receiver sends, recorded on the POST's span at each attempt. As much as a task's traceback.
ATTRIBUTE_MAX_CHARS = 32_000

_provider: TracerProvider | None = None


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an exporter or an OTLP endpoint is set, the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    """Whether this process records spans (`setup` found tracing configured)."""
    return _provider is not None


def setup(environ: Mapping[str, str] = os.environ) -> None:
    """Start tracing for this process when `configured`; once per process. ConfigError names a bad variable."""
    global _provider
    if _provider is not None or not configured(environ):
        return
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter_name not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r}: taskd exports traces with one of {', '.join(EXPORTERS)}"
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    )
    if exporter_name == "otlp" and protocol.strip() not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: taskd's OTLP exporter speaks http/protobuf "
            "(a collector's port 4318)"
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"tracing is configured (OTEL_*) but {exc.name} is not installed: pip install 'taskd[otel]'"
        ) from None
    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The collector's credentials (a vendor's key in the headers) are masked like taskd's own:
        # the SDK logs a header it cannot parse whole (a value with a `;`, a `"` or a `\`).
        for name in HEADER_VARIABLES:
            for header in environ.get(name, "").split(","):
                REDACTOR.add(header.strip(), header.partition("=")[2].strip())
        # Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_* variables.
        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read here; without them the service is "taskd".
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # The sampler comes from OTEL_TRACES_SAMPLER; the batch's size and delay from OTEL_BSP_*.
    length = None if "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" in environ else ATTRIBUTE_MAX_CHARS
    try:
        # The SDK reads its OTEL_*_LIMIT variables here; one that is not a number is its ValueError.
        limits = SpanLimits(max_attribute_length=length)
    except ValueError as exc:
        raise ConfigError(_bad_limits(environ) or str(exc)) from None
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.sampler = _deciding_for_callers(provider.sampler)
    provider.add_span_processor(BatchSpanProcessor(_masking(exporter)))
    _provider = provider


def _deciding_for_callers(sampler: Sampler) -> Sampler:
    """`sampler`, deciding a request's span as it decides a new trace's, whatever the caller's flag says.

    The caller's `traceparent` names the trace and the parent of its request's span (a platform
    sees its task inside its own trace), but its sampled flag is a tenant's word: obeyed, a `-00`
    would hide the task's whole trace (submit, runs, provider calls, webhooks) from the operator's
    collector, and a `-01` would force every trace past a ratio the operator chose. The decision is
    the sampler's for a trace with no parent, drawn on a random id rather than the caller's trace id
    (a ratio sampler keeps the ids under a bound, which a caller could choose). The spans after the
    request's (the run, its calls, the webhooks) follow that decision, their parent's, whatever the
    sampler: a plain `traceidratio` decided each of them again on the trace id, the caller's, so a
    task's run was kept without its submit, or its submit without its run, about as often as not.

    The caller's `tracestate` is not kept either: the propagators are not shown it
    (`server_middlewares`), and a span's comes from its sampler, which decides here as for a root.
    """
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind, get_current_span

    ids = RandomIdGenerator()
    # A span with a parent takes its parent's decision (a parent-based sampler's own does the same).
    following = ParentBased(sampler)

    class DecidingForCallers(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            parent = get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                # A new trace: its id is taskd's own.
                return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links)
            if kind is SpanKind.SERVER and parent.is_remote:
                # The SERVER span is the API's request, its remote parent the caller's header.
                return sampler.should_sample(
                    Context(), ids.generate_trace_id(), name, kind, attributes, links
                )
            # The run and the webhooks (their parent the submit's context, kept with the task) and
            # every span inside one: the task's one decision.
            return following.should_sample(parent_context, trace_id, name, kind, attributes, links)

        def get_description(self) -> str:
            return f"DecidingForCallers{{{sampler.get_description()}}}"

    return DecidingForCallers()


def _bad_limits(environ: Mapping[str, str]) -> str:
    """The OTEL_*_LIMIT variables that are not a count, said in taskd's words: the SDK's own message
    depends on its version (at the floor, 1.20, its own format string raised instead of naming it)."""
    return "; ".join(
        f"{name} must be a non-negative integer but got {value}"
        for name, value in sorted(environ.items())
        if name.startswith("OTEL_")
        and name.endswith("_LIMIT")
        and value.strip()
        and not value.strip().isdigit()
    )


def _masking(exporter: SpanExporter) -> SpanExporter:
    """`exporter`, sent each span with its text masked as a log line is (`logs.REDACTOR`).

    A span carries text taskd does not choose: a failed run's error (its status), and the message
    and traceback of an exception recorded on it — aiohttp's ConnectionTimeoutError names the whole
    URL, `?X-Amz-Signature=` or a receiver's `?token=` included.
    """
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.util import BoundedList
    from opentelemetry.trace import Status

    def bounded(items: Sequence[Any], dropped: int) -> BoundedList[Any]:
        # The containers the SDK gives a span, with their dropped counts: the OTLP encoder of the
        # oldest SDK taskd allows (1.20) reads `.dropped` from each.
        kept: BoundedList[Any] = BoundedList(None)
        kept.extend(items)
        kept.dropped = dropped
        return kept

    def masked(span: ReadableSpan) -> ReadableSpan:
        status = span.status
        if status.description:
            status = Status(status.status_code, REDACTOR.redact(status.description))
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=_masked_attributes(span.attributes, span.dropped_attributes),
            events=bounded(
                [
                    Event(
                        event.name,
                        _masked_attributes(event.attributes, getattr(event.attributes, "dropped", 0)),
                        event.timestamp,
                    )
                    for event in span.events
                ],
                span.dropped_events,
            ),
            links=bounded(span.links, span.dropped_links),
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    class Masking(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return exporter.export([masked(span) for span in spans])

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return exporter.force_flush(timeout_millis)

    return Masking()


def _masked_attributes(attributes: Attributes, dropped: int) -> BoundedAttributes:
    """`attributes` with their text masked, in the container the SDK gives them (`dropped` kept)."""
    from opentelemetry.attributes import BoundedAttributes

    masked: dict[str, AttributeValue] = {}
    for name, value in (attributes or {}).items():
        if isinstance(value, str):
            masked[name] = REDACTOR.redact(value)
        elif isinstance(value, tuple | list) and value and isinstance(value[0], str):
            masked[name] = [REDACTOR.redact(str(item)) for item in value]
        else:
            masked[name] = value
    kept = BoundedAttributes(attributes=masked)
    kept.dropped = dropped
    return kept


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still batched (a stopping process); the provider stays for the rest of the process."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def server_middlewares() -> list[Middleware]:
    """A middleware that makes each request a SERVER span, a child of the caller's `traceparent`; none when off.

    taskd's own rather than opentelemetry-instrumentation-aiohttp-server's: that package's middleware
    reads module globals that only its `instrument()` sets, which also replaces
    `aiohttp.web.Application` with a subclass for the whole process.
    """
    if _provider is None:
        return []
    from aiohttp import web
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter

    tracer = _provider.get_tracer(TRACER)

    class TraceHeaders(Getter[_Headers]):
        """A request's headers as the propagators read them, without `tracestate` and `baggage`.

        taskd keeps neither (`_deciding_for_callers`), and the SDK's parsers log a WARNING quoting
        each member of them that does not parse: one request of anyone's, before its key is
        checked, wrote 181 lines of its own text (180 baggage members, the most the parser reads).
        """

        def get(self, carrier: _Headers, key: str) -> list[str] | None:
            if key.lower() in UNREAD_HEADERS:
                return None
            return carrier.getall(key, None)

        def keys(self, carrier: _Headers) -> list[str]:
            return [key for key in carrier if key.lower() not in UNREAD_HEADERS]

    headers = TraceHeaders()

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The route's pattern, not the path: a task id in a span name would make one name per task.
        route = request.match_info.route.resource
        pattern = route.canonical if route is not None else None
        with tracer.start_as_current_span(
            f"{request.method} {pattern}" if pattern else request.method,
            context=propagate.extract(request.headers, getter=headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ) as span:
            if pattern:
                span.set_attribute("http.route", pattern)
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.StatusCode.ERROR)
            return response

    return [trace_request]


def client_trace_configs() -> list[aiohttp.TraceConfig]:
    """The aiohttp client instrumentation: a CLIENT span per request, `traceparent` sent; none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    # A span keeps the URL without its query: presigned S3 URLs (X-Amz-Signature), taskd's signed
    # media links and receivers' tokens carry credentials there, which the instrumentation's own
    # redaction (a few named parameters) misses.
    config: aiohttp.TraceConfig = create_trace_config(url_filter=_without_query, tracer_provider=_provider)
    return [config]


def _without_query(url: URL) -> str:
    return str(url.with_query(None).with_fragment(None))


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (`traceparent`), kept with a new task; None when off."""
    if _provider is None:
        return None
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def _submitted_in(record: TaskRecord) -> Context:
    """The context of the span that submitted `record`, from its stored headers, `tracestate` not read.

    A record written before taskd stopped keeping a caller's `tracestate` (up to 94145fd) holds it:
    read back, it became the run's and the webhook's and went on in every provider call and webhook
    of the task, queued, scheduled or retried after the upgrade.
    """
    from opentelemetry import propagate

    stored = record.trace_context or {}
    return propagate.extract(
        {name: value for name, value in stored.items() if name.lower() not in UNREAD_HEADERS}
    )


@contextlib.contextmanager
def run_span(record: TaskRecord, device: str | None) -> Iterator[None]:
    """The span of one run of `record` on this worker: a child of the span that submitted it."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace

    attributes: dict[str, str | int] = {
        TASK_ID: record.task_id,
        TASK_TYPE: record.task_type,
        PROJECT_ID: record.project_id,
        QUEUE: record.queue,
        ATTEMPT: record.attempt,
    }
    if device is not None:
        attributes[DEVICE] = device
    with _provider.get_tracer(TRACER).start_as_current_span(
        f"run {record.task_type}",
        context=_submitted_in(record),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield


def note_outcome(kind: str, error: str | None) -> None:
    """Mark the current run span with how the run ended; a failure sets its status to error."""
    if _provider is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute(OUTCOME, kind)
    if kind == "failed":
        span.set_status(trace.StatusCode.ERROR, error)


@contextlib.contextmanager
def webhook_span(record: TaskRecord, event: str | None, attempt: int) -> Iterator[None]:
    """The span of one webhook attempt for `record`, in its task's trace (under the submit's span)."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace

    # An end's webhook has no event of its own: it is named for the status it reports.
    name = event or record.status.value
    with _provider.get_tracer(TRACER).start_as_current_span(
        f"webhook {name}",
        context=_submitted_in(record),
        kind=trace.SpanKind.PRODUCER,
        attributes={TASK_ID: record.task_id, WEBHOOK_EVENT: name, ATTEMPT: attempt},
    ):
        yield
