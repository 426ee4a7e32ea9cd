"""Hypothesis over request methods, paths, headers and bodies against one running relay.

The relay (and the mock upstream behind it) runs in a thread of its own, so
each example is one raw HTTP/1.1 request over a fresh socket. Every answer
must be a relay answer: no 5xx but the documented 502/503/504, every error
body in a provider's error shape, and the relay still serving afterwards.
The requests are well formed HTTP/1.1 (hypercorn refuses the rest before
the relay sees them); what varies is what the relay must judge.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.raw_http import RawResponse, host_port, parse_responses
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

DOCUMENTED_5XX = {502, 503, 504}


@pytest.fixture
def relay_thread(pg_dsn, tmp_path) -> Iterator[dict[str, Any]]:
    """url and token of a relay served by its own trio loop in another thread."""
    info: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
            info.update(url=relay.url, token=relay.token, stop=trio.Event())
            info["trio_token"] = trio.lowlevel.current_trio_token()
            ready.set()
            await info["stop"].wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the test
            info["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="relay-under-fuzz")
    thread.start()
    assert ready.wait(60), "the relay did not start"
    assert "error" not in info, info.get("error")
    try:
        yield info
    finally:
        if "stop" in info:
            trio.from_thread.run_sync(info["stop"].set, trio_token=info["trio_token"])
        thread.join(60)
    assert "error" not in info, info["error"]


def send_raw(
    url: str, data: bytes, timeout: float = 20, *, head: bool = False
) -> list[RawResponse]:
    """One request, answered on a connection the relay closes (we ask it to)."""
    with socket.create_connection(host_port(url), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    responses: list[RawResponse] = []
    parse_responses(received, responses, to_head=head)
    return responses


# -- strategies ------------------------------------------------------------------------------

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SEGMENT_PIECES = ["%2e", "%2E", "%2F", "%5c", "%00", "%", ";", "\\", "é", ":", "@", "!", "*"]
_SEGMENT_PIECES += ["?", "#", "%6D", "%7E", "%zz", *"abcmodelsv1chatcompletionsresponses-_~."]
_SEGMENT_CHARS = st.sampled_from(_SEGMENT_PIECES)
segment = st.lists(_SEGMENT_CHARS, max_size=8).map("".join)
API_PATHS = [
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/models",
    "/v1/models/mock-text",
    "/v1/responses/resp_1",
    "/v1/conversations/conv_1",
    "/model/x/invoke",
]
path = st.one_of(
    st.builds(
        lambda prefix, name, api, extra: prefix + name + api + extra,
        st.sampled_from(["/api/v2/ai-gateway/", "/api/v2/aibridge/"]),
        st.sampled_from(["openai", "anthropic", "nope", ""]) | segment,
        st.sampled_from(API_PATHS),
        st.lists(segment, max_size=3).map(lambda parts: "".join("/" + p for p in parts)),
    ),
    st.lists(segment, max_size=5).map(lambda parts: "/" + "/".join(parts)),
).map(lambda p: p.replace(" ", ""))
method = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]) | st.text(
    _TOKEN_CHARS, min_size=1, max_size=8
)
header_name = st.sampled_from(
    [
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "content-type",
        "accept-encoding",
        "x-coder-ai-governance-token",
        "session-id",
        "x-ai-bridge-actor-id",
        "expect",
        "upgrade",
    ]
) | st.text(_TOKEN_CHARS, min_size=1, max_size=20)
header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
request_json = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["mock-text", "mock-tools", ""]) | json_value,
        "messages": st.just([{"role": "user", "content": "hi"}]) | json_value,
        "input": st.just("hi") | json_value,
        "stream": st.booleans() | json_value,
        "max_tokens": st.integers(-5, 50) | json_value,
        "tools": json_value,
    },
)
body = st.one_of(
    request_json.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.just(b""),
)


@settings(
    max_examples=100,
    derandomize=True,  # the same examples each run; explore with a larger max_examples by hand
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=method,
    target=path,
    headers=st.lists(st.tuples(header_name, header_value), max_size=6),
    with_token=st.booleans(),
    payload=body,
)
def test_any_request_gets_a_relay_answer(
    relay_thread, method, target, headers, with_token, payload
):
    lines = [f"{method} {target} HTTP/1.1", "host: relay", "connection: close"]
    reserved = {"host", "connection", "content-length", "transfer-encoding", "authorization"}
    lines += [f"{k}: {v}".rstrip() for k, v in headers if k.lower() not in reserved]
    if with_token:
        lines.append(f"authorization: Bearer {relay_thread['token']}")
    lines.append(f"content-length: {len(payload)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + payload
    responses = send_raw(relay_thread["url"], raw, head=method == "HEAD")
    assert len(responses) == 1, responses
    response = responses[0]
    event(f"status {response.status}")
    assert response.status < 500 or response.status in DOCUMENTED_5XX, response
    if response.status >= 400 and response.body and method != "HEAD":
        assert is_provider_error(json.loads(response.body)), response
    # The relay is still up and serving.
    assert [r.status for r in send_raw(relay_thread["url"], _HEALTHZ)] == [200]


_HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n"


def is_provider_error(doc: Any) -> bool:
    """Anthropic's ``{"type":"error","error":{...}}`` or OpenAI's ``{"error":{"message":…}}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return False
    error = doc["error"]
    if doc.get("type") == "error":
        return isinstance(error.get("type"), str) and isinstance(error.get("message"), str)
    return isinstance(error.get("message"), str) and "type" in error
