"""Passthrough routes fail the way intercepted ones do.

An upstream that breaks after the response head cuts the client's response
(a truncated body on a closed connection, never a clean end) without an
application traceback; a client that leaves before the upstream head arrives
cancels the upstream request at once. Raw sockets on the client side, so
that what arrives on the wire is what is checked.
"""

from __future__ import annotations

import logging

import h11
import pytest
import trio

from tests.relay_harness import mock_and_relay


def request(token: str, path: str, **extra: str) -> bytes:
    lines = [
        f"GET /api/v2/ai-gateway/anthropic{path} HTTP/1.1",
        "host: relay",
        f"x-api-key: {token}",
        "anthropic-version: 2023-06-01",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def port_of(relay) -> int:  # type: ignore[no-untyped-def]
    return int(relay.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("cut", ["drop", "error-midstream"])
async def test_upstream_failing_mid_body_cuts_the_response_without_a_traceback(
    pg_dsn, tmp_path, caplog, cut
):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relay))
        async with stream:
            await stream.send_all(request(relay.token, "/v1/models", **{"x-mock-scenario": cut}))
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            client.send(h11.EndOfMessage())
            response: h11.Response | None = None
            body = b""
            ended = False
            with trio.fail_after(10):  # the relay must close the connection, not leave it hanging
                while True:
                    data = await stream.receive_some(65536)
                    try:
                        client.receive_data(data)
                        while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                            if isinstance(event, h11.Response):
                                response = event
                            elif isinstance(event, h11.Data):
                                body += event.data
                            elif isinstance(event, h11.EndOfMessage):
                                ended = True
                    except h11.RemoteProtocolError:
                        break  # closed before the end of the body: the cut is visible
                    if not data or ended:
                        break
        assert response is not None and response.status_code == 200
        assert not ended, "a cut body must not look complete"
        length = int(dict(response.headers)[b"content-length"])
        assert 0 < len(body) < length
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


async def test_client_leaving_before_the_upstream_head_cancels_the_upstream(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relay))
        await stream.send_all(
            request(relay.token, "/v1/models", **{"x-mock-headers-delay-ms": "5000"})
        )
        await mock.wait_for_request(0)  # the upstream has it and waits before answering
        await trio.sleep(0.1)
        await stream.aclose()
        closed = await mock.wait_for_close(request_index=0, timeout=2)
        assert closed.kind == "closed-by-peer"
        assert closed.phase == "before-response"
