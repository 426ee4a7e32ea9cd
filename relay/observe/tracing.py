"""OpenTelemetry traces: off by default, and then free.

``CODER_TRACE_ENABLE`` (``--trace``, as in Coder) turns them on; the exporter
and the sampler are the SDK's, configured by the standard variables
(``OTEL_TRACES_EXPORTER`` = ``otlp`` (default), ``console`` or ``none``;
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, ``_HEADERS``,
``_TIMEOUT``, ``_COMPRESSION``; ``OTEL_TRACES_SAMPLER`` and its ``_ARG``;
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). Spans are exported from
the SDK's batch thread, never from the event loop.

While tracing is off nothing of OpenTelemetry is imported by this module and
no span object is made: ``span`` hands back one shared ``nullcontext``, and
``begin`` returns None (``tests/observe/test_tracing.py`` checks both; the
cost is in docs/observability.md).

Spans (Coder AI Gateway's names): ``Intercept`` (one per interception, its
parent the client's W3C ``traceparent`` when it sent one), and under it
``Intercept.ProcessRequest.Upstream`` (each upstream request, which carries
the span's ``traceparent``), ``Intercept.ToolCall`` (each injected MCP tool
call), ``Intercept.RecordInterception`` and ``Intercept.RecordInterceptionEnded``
(the rows handed to the recorder); ``Passthrough`` with its
``Passthrough.Upstream``. Attributes follow the GenAI semantic conventions
(``gen_ai.*``) where they apply, and ``relay.*`` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from relay.errors import ConfigurationError
from relay.observe.context import current_ids

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from relay.facts import Facts

Headers = list[tuple[bytes, bytes]]

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext(None)
_TRACE_HEADERS = (b"traceparent", b"tracestate")
SERVICE_NAME = "coder-ai-gateway-relay"

#: gen_ai.provider.name of each provider type (semantic conventions' well-known values).
GENAI_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "bedrock": "aws.bedrock"}


class TracingConfigError(ConfigurationError):
    """An OTEL_* variable the relay cannot honour (said at startup)."""


def enabled() -> bool:
    return _tracer is not None


def configure(enable: bool, env: Mapping[str, str]) -> bool:
    """Set up the SDK from the OTEL_* variables when ``enable``; otherwise nothing at all.

    True when it did (its ``shutdown`` is then the caller's).
    """
    if not enable or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    unknown = set(exporters) - {"otlp", "console", "none"}
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(sorted(unknown))} is not available "
            "(use otlp, console or none)"
        )
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if "otlp" in exporters and protocol.strip() not in ("", "http/protobuf"):
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf is available"
        )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    install(provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Trace through ``provider`` (None: off again). Tests hand it an in-memory exporter."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("relay") if provider is not None else None


def shutdown() -> None:
    """Export what is still buffered (blocking: at the very end of the process)."""
    provider = _provider
    install(None)
    if provider is not None:
        provider.shutdown()


# --- spans ------------------------------------------------------------------------------------


def span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """A child span of the current one for the ``with`` block; a shared no-op when off."""
    tracer = _tracer
    if tracer is None:
        return _NULL
    return tracer.start_as_current_span(name, attributes=attributes)


def upstream_span(
    name: str, method: str, url: str, headers: Headers
) -> contextlib.AbstractContextManager[tuple[Span | None, Headers]]:
    """The upstream request's span, and ``headers`` with its ``traceparent`` (replacing
    the client's, whose trace it continues). Off: no span, the headers as they are."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext((None, headers))
    return _upstream_span(tracer, name, method, url, headers)


@contextlib.contextmanager
def _upstream_span(
    tracer: Tracer, name: str, method: str, url: str, headers: Headers
) -> Iterator[tuple[Span | None, Headers]]:
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "url.path": parts.path,  # no query string: it may carry anything
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as s:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        traced = [(k, v) for k, v in headers if k.lower() not in _TRACE_HEADERS]
        traced += [(k.encode("ascii"), v.encode("ascii")) for k, v in carrier.items()]
        yield s, traced


def response_status(span: Span | None, status: int) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


class Trace:
    """A span begun in one place and ended in another of the same task (``begin``), or,
    detached (``begin_detached``, no token), begun and ended by different tasks."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span, token: object | None) -> None:
        self.span = span
        self._token = token

    def end(self) -> None:
        from opentelemetry import context

        try:
            if self._token is not None:
                context.detach(self._token)  # type: ignore[arg-type]
        finally:
            self.span.end()


@contextlib.contextmanager
def within(trace: Trace | None) -> Iterator[None]:
    """Make a detached span the current one for a ``with`` block (its children's parent)."""
    if trace is None:
        yield
        return
    from opentelemetry import context
    from opentelemetry import trace as otel_trace

    token = context.attach(otel_trace.set_span_in_context(trace.span))
    try:
        yield
    finally:
        context.detach(token)


def begin(
    name: str,
    client_headers: Headers,
    attributes: Mapping[str, Any] | None = None,
    *,
    detached: bool = False,
) -> Trace | None:
    """Start a server span (``Intercept``, ``Passthrough``) as the current one, its parent
    the client's W3C ``traceparent`` if it sent one; None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {
        k.decode("latin-1").lower(): v.decode("latin-1")
        for k, v in client_headers
        if k.lower() in _TRACE_HEADERS
    }
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    attrs = dict(attributes or {})
    ids = current_ids()
    if ids is not None:
        attrs["relay.request_id"] = ids.request_id
        if ids.interception_id is not None:
            attrs["relay.interception_id"] = ids.interception_id
        if ids.user_id is not None:
            attrs["enduser.id"] = ids.user_id
        if ids.provider is not None:
            attrs["relay.provider"] = ids.provider
    s = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)
    if detached:
        return Trace(s, None)
    token = context.attach(trace.set_span_in_context(s))
    return Trace(s, token)


def begin_detached(
    name: str, client_headers: Headers, attributes: Mapping[str, Any] | None = None
) -> Trace | None:
    """``begin``, without making the span current: for a turn of a Responses WebSocket,
    begun by the task reading the client and ended by the one reading the upstream
    (``within`` makes it the parent of its record spans)."""
    return begin(name, client_headers, attributes, detached=True)


def passthrough_attributes(method: str, url: str) -> dict[str, Any]:
    return {"http.request.method": method, "url.path": urlsplit(url).path}


def end_passthrough(trace: Trace, status: int | None) -> None:
    """The upstream's status (none: unreachable, or the client left) on the span; it ends."""
    try:
        if status is not None:
            response_status(trace.span, status)
    finally:
        trace.end()


def interception_attributes(provider_type: str, model: str | None) -> dict[str, Any]:
    """The request side of an ``Intercept`` span (GenAI semantic conventions)."""
    system = GENAI_PROVIDER.get(provider_type, provider_type)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": system,
        "gen_ai.system": system,  # the name before semantic conventions 1.37
    }
    if model:
        attributes["gen_ai.request.model"] = model
    return attributes


def end_interception(
    trace: Trace,
    facts: Facts,
    status: str,
    error_type: str | None,
    error_message: str | None,
) -> None:
    """What the interception learned, on its span; then the span ends."""
    s = trace.span
    try:
        usages = [r.usage for r in facts.round_usages]
        if facts.usage is not None:
            usages.append(facts.usage)
        if facts.model:
            s.set_attribute("gen_ai.response.model", facts.model)
        if facts.response_id:
            s.set_attribute("gen_ai.response.id", facts.response_id)
        if usages:
            s.set_attribute("gen_ai.usage.input_tokens", sum(u.input_tokens for u in usages))
            s.set_attribute("gen_ai.usage.output_tokens", sum(u.output_tokens for u in usages))
            s.set_attribute(
                "gen_ai.usage.cache_read.input_tokens", sum(u.cache_read_tokens for u in usages)
            )
            s.set_attribute(
                "gen_ai.usage.cache_creation.input_tokens",
                sum(u.cache_write_tokens for u in usages),
            )
        if facts.stop_reason:
            s.set_attribute("gen_ai.response.finish_reasons", [facts.stop_reason])
        s.set_attribute("relay.status", status)
        tools = len(facts.tool_calls)
        if tools:
            s.set_attribute("relay.tool_calls", tools)
        if error_type:
            from opentelemetry.trace import Status, StatusCode

            s.set_attribute("error.type", error_type)
            s.set_status(Status(StatusCode.ERROR, (error_message or error_type)[:200]))
    finally:
        trace.end()


def tool_call_attributes(name: str, call_id: str, server: str, url: str) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "relay.mcp.server": server,
        "server.address": urlsplit(url).hostname or "",
    }


def tool_call_failed(span: Span | None, error: str | None) -> None:
    if span is not None and error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR, error[:200]))
