"""Traces through the real relay, exported to the SDK's in-memory exporter.

The span tree of an interception (its parent the client's ``traceparent``),
of a passthrough and of an MCP tool loop, their attributes, the
``traceparent`` the mock upstream receives (the same trace, the upstream
span as parent), and, with tracing off, not one span object made and no
OpenTelemetry module imported by the relay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind
from trio_websocket import open_websocket_url

from relay.observe import tracing
from relay.testing.mock_upstream import scenarios
from tests.e2e.test_bedrock_e2e import bedrock_relay
from tests.e2e.test_mcp_injection import _script, mcp_relay
from tests.e2e.test_responses_websocket import client_headers, create, ws_relay, ws_url
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


async def test_interception_and_passthrough_span_trees(pg_dsn, tmp_path, exported):
    async with (
        mock_and_relay(pg_dsn, tmp_path) as (mock, relay),
        httpx.AsyncClient(timeout=10) as http,
    ):
        answer = await http.post(
            relay.gateway("anthropic") + "/v1/messages",
            headers={
                "x-api-key": relay.token,
                "anthropic-version": "2023-06-01",
                "traceparent": TRACEPARENT,
            },
            json={"model": "mock-text", "max_tokens": 50, "messages": USER, "stream": True},
        )
        assert answer.status_code == 200
        await relay.wait_for_rows("SELECT id FROM interceptions")
        models = await http.get(
            relay.gateway("openai") + "/v1/models",
            headers={"authorization": f"Bearer {relay.token}"},
        )
        assert models.status_code == 200
        sent_messages, sent_models = mock.requests[0], mock.requests[1]
    named = by_name(exported.get_finished_spans())

    (intercept,) = named["Intercept"]
    trace_id, intercept_id = hex_ids(intercept)
    assert trace_id == TRACE_ID and parent_of(intercept) == CLIENT_SPAN
    assert intercept.kind == SpanKind.SERVER
    attributes = dict(intercept.attributes or {})
    usage = scenarios.usage_for("text")
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "anthropic"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mock-text"
    assert attributes["gen_ai.response.model"] == "mock-text"
    assert attributes["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == usage.cache_read_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attributes["relay.request_id"] == answer.headers["x-relay-request-id"]
    assert attributes["relay.interception_id"] == answer.headers["x-relay-interception-id"]
    assert attributes["relay.provider"] == "anthropic" and attributes["relay.status"] == "completed"
    uuid.UUID(str(attributes["enduser.id"]))

    (upstream,) = named["Intercept.ProcessRequest.Upstream"]
    assert parent_of(upstream) == intercept_id and hex_ids(upstream)[0] == TRACE_ID
    assert upstream.kind == SpanKind.CLIENT
    assert (upstream.attributes or {})["http.response.status_code"] == 200
    assert (upstream.attributes or {})["url.path"] == "/v1/messages"
    # The upstream saw the relay's span as the parent, in the client's trace.
    assert sent_messages.header("traceparent") == f"00-{TRACE_ID}-{hex_ids(upstream)[1]}-01"
    for name in ("Intercept.RecordInterception", "Intercept.RecordInterceptionEnded"):
        (record,) = named[name]
        assert parent_of(record) == intercept_id
    assert (named["Intercept.RecordInterceptionEnded"][0].attributes or {})["relay.records"] >= 3

    # A passthrough without a traceparent: a trace of its own.
    (passthrough,) = named["Passthrough"]
    (pass_upstream,) = named["Passthrough.Upstream"]
    assert passthrough.parent is None and hex_ids(passthrough)[0] != TRACE_ID
    assert parent_of(pass_upstream) == hex_ids(passthrough)[1]
    assert (passthrough.attributes or {})["http.response.status_code"] == 200
    assert (passthrough.attributes or {})["relay.request_id"] == models.headers[
        "x-relay-request-id"
    ]
    trace, span = hex_ids(pass_upstream)
    # (its flags: sampled, and the SDK's random trace id flag of W3C level 2)
    assert sent_models.header("traceparent").startswith(f"00-{trace}-{span}-")


async def test_injected_tool_calls_are_spans_of_the_interception(pg_dsn, tmp_path, exported):
    async with (
        mcp_relay(pg_dsn, tmp_path) as (_mock, relay, mcp),
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert mcp is not None
        answer = await http.post(
            relay.gateway("anthropic") + "/v1/messages",
            headers={
                "x-api-key": relay.token,
                "anthropic-version": "2023-06-01",
                **_script([("bmcp_mock_add", {"a": 2, "b": 3})]),
            },
            json={"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER},
        )
        assert answer.status_code == 200
        await relay.wait_for_rows("SELECT id FROM tool_usages")
    named = by_name(exported.get_finished_spans())
    (intercept,) = named["Intercept"]
    intercept_id = hex_ids(intercept)[1]
    (tool,) = named["Intercept.ToolCall"]
    assert parent_of(tool) == intercept_id
    attributes = dict(tool.attributes or {})
    assert attributes["gen_ai.tool.name"] == "bmcp_mock_add"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["relay.mcp.server"] == "mock"
    rounds = named["Intercept.ProcessRequest.Upstream"]
    assert len(rounds) == 2 and all(parent_of(r) == intercept_id for r in rounds)
    assert (intercept.attributes or {})["gen_ai.usage.output_tokens"] == 10 + 20


async def test_tracing_off_makes_no_span(pg_dsn, tmp_path, monkeypatch):
    import opentelemetry.sdk.trace as sdk_trace
    import opentelemetry.trace as api_trace

    made: list[str] = []
    for cls in (sdk_trace.Span, api_trace.NonRecordingSpan):
        original = cls.__init__

        def counting(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            made.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    assert not tracing.enabled()
    async with (
        mock_and_relay(pg_dsn, tmp_path) as (mock, relay),
        httpx.AsyncClient(timeout=10) as http,
    ):
        answer = await http.post(
            relay.gateway("anthropic") + "/v1/messages",
            headers={
                "x-api-key": relay.token,
                "anthropic-version": "2023-06-01",
                "traceparent": TRACEPARENT,
            },
            json={"model": "mock-text", "max_tokens": 50, "messages": USER, "stream": True},
        )
        assert answer.status_code == 200
        await relay.wait_for_rows("SELECT id FROM interceptions")
        # Off, the client's traceparent goes upstream as the client sent it.
        assert mock.requests[0].header("traceparent") == TRACEPARENT
    assert made == []
    # The count would have seen a span: one made outside the relay is counted.
    with TracerProvider().get_tracer("control").start_as_current_span("control"):
        pass
    assert made == ["_Span"]


async def test_a_signed_bedrock_request_carries_the_traceparent(
    pg_dsn, tmp_path, exported, monkeypatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    async with (
        bedrock_relay(pg_dsn, tmp_path) as (mock, relay),
        httpx.AsyncClient(timeout=10) as http,
    ):
        answer = await http.post(
            relay.gateway("claude-aws") + "/v1/messages",
            headers={"x-api-key": relay.token, "traceparent": TRACEPARENT},
            json={"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": USER},
        )
        # The mock recomputes the SigV4 signature: the traceparent is not a signed header.
        assert answer.status_code == 200, answer.text
        await relay.wait_for_rows("SELECT id FROM interceptions")
        sent = mock.requests[-1]
    named = by_name(exported.get_finished_spans())
    (intercept,) = named["Intercept"]
    assert (intercept.attributes or {})["gen_ai.provider.name"] == "aws.bedrock"
    (upstream,) = named["Intercept.ProcessRequest.Upstream"]
    assert sent.header("traceparent") == f"00-{TRACE_ID}-{hex_ids(upstream)[1]}-01"
    assert parent_of(intercept) == CLIENT_SPAN


def test_tracing_off_imports_no_opentelemetry():
    code = (
        "import sys\n"
        "import relay.cli, relay.server, relay.app, relay.request, relay.intercept.session\n"
        "import relay.intercept.injection, relay.intercept.passthrough\n"
        "from relay.observe import tracing\n"
        "from relay.options import load_options\n"
        "options = load_options({}, warn=lambda line: None)\n"
        "assert tracing.configure(options.trace_enable, {}) is False\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_configure_refuses_what_it_cannot_export():
    with pytest.raises(tracing.TracingConfigError, match="zipkin"):
        tracing.configure(True, {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingConfigError, match="grpc"):
        tracing.configure(True, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not tracing.enabled()
    assert tracing.configure(True, {"OTEL_TRACES_EXPORTER": "none"}) is True
    try:
        assert tracing.enabled()
    finally:
        tracing.shutdown()
    assert not tracing.enabled()
    assert tracing.configure(True, {"OTEL_SDK_DISABLED": "true"}) is False


async def test_each_websocket_turn_is_an_intercept_span(pg_dsn, tmp_path, exported):
    """Two interleaved turns on one Responses WebSocket: each its own Intercept span
    (under the upgrade's traceparent, with its own interception id and usage, its
    record spans beneath it), and the socket's request id on the 101 and on both rows."""
    async with ws_relay(pg_dsn, tmp_path) as (mock_ws, relay):
        mock_ws.interleave = 2
        headers = [*client_headers(relay.token), (b"traceparent", TRACEPARENT.encode())]
        async with open_websocket_url(ws_url(relay), extra_headers=headers) as ws:
            await ws.send_message(create("mock-tool", "the tool lane", stream_id="lane-b"))
            await ws.send_message(create("mock-text", "the text lane", stream_id="lane-a"))
            done = 0
            with trio.fail_after(10):
                while done < 2:
                    event = json.loads(await ws.get_message())
                    done += event["type"] == "response.completed"
            head = dict(ws.handshake_headers)
        request_id = head[b"x-relay-request-id"].decode()
        rows = await relay.wait_for_rows(
            "SELECT i.id, i.model, i.request_id, u.output_tokens FROM interceptions i "
            "JOIN token_usages u ON u.interception_id = i.id ORDER BY i.model",
            count=2,
        )
    assert {r["request_id"] for r in rows} == {request_id}
    spans = by_name(exported.get_finished_spans())
    intercepts = sorted(spans["Intercept"], key=lambda s: s.attributes["gen_ai.request.model"])
    assert [s.attributes["gen_ai.request.model"] for s in intercepts] == ["mock-text", "mock-tool"]
    for span, row in zip(intercepts, rows, strict=True):
        trace_id, span_id = hex_ids(span)
        assert trace_id == TRACE_ID and parent_of(span) == CLIENT_SPAN
        assert span.kind == SpanKind.SERVER
        assert span.attributes["relay.interception_id"] == str(row["id"])
        assert span.attributes["relay.request_id"] == request_id
        assert span.attributes["relay.transport"] == "websocket"
        assert span.attributes["gen_ai.usage.output_tokens"] == row["output_tokens"]
        assert span.attributes["relay.status"] == "completed"
        children = {s.name for s in exported.get_finished_spans() if parent_of(s) == span_id}
        assert children == {"Intercept.RecordInterception", "Intercept.RecordInterceptionEnded"}
    assert intercepts[1].attributes["relay.tool_calls"] == 1
