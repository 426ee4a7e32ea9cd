"""Streams through the relay: byte fidelity, errors, cancellation, backpressure."""

from __future__ import annotations

import gc
import json
import random
import re
import tracemalloc
from pathlib import Path

import anthropic
import h11
import httpx
import hypercorn
import openai
import pytest
import trio

import relay
from tests.relay_harness import config_settled, mock_and_relay

USER = [{"role": "user", "content": "hello"}]
# The packages whose allocations count as the relay's; matched by their own
# directories, so a checkout that is itself named "relay" does not match it all.
RELAY_STACK = tuple(
    str(Path(module.__file__).parent) for module in (relay, h11, hypercorn) if module.__file__
)

# ...except the mock upstream's own buffers, which live in relay/testing.
MOCKS = str(Path(relay.__file__).parent / "testing")


def messages_body(model: str, stream: bool = True) -> dict[str, object]:
    return {"model": model, "max_tokens": 64, "stream": stream, "messages": USER}


def relay_headers(relay, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"x-api-key": relay.token, "anthropic-version": "2023-06-01", **extra}


async def read_stream(client: httpx.AsyncClient, url: str, headers, body) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    async with client.stream("POST", url, headers=headers, json=body) as r:
        return r.status_code, b"".join([c async for c in r.aiter_raw()])


@pytest.mark.parametrize("chunking", ["event", "random", "bytes1"])
async def test_stream_bytes_identical_to_what_upstream_sent(pg_dsn, tmp_path, chunking):
    async with mock_and_relay(pg_dsn, tmp_path, chunking=chunking) as (mock, relay):
        async with httpx.AsyncClient() as client:
            for api, url, body in [
                ("anthropic", "/v1/messages", messages_body("mock-parallel-tools")),
                (
                    "openai",
                    "/v1/responses",
                    {"model": "mock-thinking", "stream": True, "input": "hi"},
                ),
                (
                    "openai",
                    "/v1/chat/completions",
                    {
                        "model": "mock-tool",
                        "stream": True,
                        "messages": USER,
                        "stream_options": {"include_usage": True},
                    },
                ),
            ]:
                before = len(mock.requests)
                status, got = await read_stream(
                    client, relay.gateway(api) + url, relay_headers(relay), body
                )
                assert status == 200
                sent = mock.requests[before].response_body
                assert got == sent, f"{api}{url}: relayed bytes differ from upstream's"


MOCK_ID = re.compile(rb"[0-9a-f]{24}")


@pytest.mark.parametrize("chunking", ["event", "random"])
async def test_chat_stream_with_injected_usage_looks_like_a_direct_one(pg_dsn, tmp_path, chunking):
    """The relay asks for usage; the client gets the bytes it would get without."""
    body = {"model": "mock-parallel-tools", "stream": True, "messages": USER}
    async with mock_and_relay(pg_dsn, tmp_path, chunking=chunking) as (mock, relay):
        async with httpx.AsyncClient() as client:
            _, direct = await read_stream(
                client,
                mock.openai_base_url + "/chat/completions",
                {"authorization": "Bearer sk-direct"},
                body,
            )
            _, relayed = await read_stream(
                client,
                relay.gateway("openai") + "/v1/chat/completions",
                {"authorization": f"Bearer {relay.token}"},
                body,
            )
        assert b'"usage"' not in direct
        # Ids are random per response; everything else must match to the byte.
        assert MOCK_ID.sub(b"ID", relayed) == MOCK_ID.sub(b"ID", direct)
        assert mock.requests[-1].json()["stream_options"] == {"include_usage": True}


async def test_keepalive_comment_during_silence(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_KEEPALIVE_INTERVAL": "100ms"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        async with httpx.AsyncClient() as client:
            status, got = await read_stream(
                client,
                relay.gateway("anthropic") + "/v1/messages",
                relay_headers(relay, **{"x-mock-first-token-ms": "450"}),
                messages_body("mock-slow-first-token"),
            )
        assert status == 200
        assert got.startswith(b": keepalive\n\n")
        assert got.replace(b": keepalive\n\n", b"") == mock.requests[0].response_body


async def test_bad_requests_get_provider_shaped_errors_and_go_nowhere(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_MAX_REQUEST_BODY": "1KiB"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        async with httpx.AsyncClient() as client:
            url = relay.gateway("anthropic") + "/v1/messages"
            r = await client.post(url, headers=relay_headers(relay), content=b"{not json")
            assert r.status_code == 400
            assert r.json()["type"] == "error"
            assert r.json()["error"]["type"] == "invalid_request_error"
            r = await client.post(url, headers=relay_headers(relay), content=b"[1,2]")
            assert r.status_code == 400
            r = await client.post(
                url, headers=relay_headers(relay), content=b'{"x":"' + b"a" * 2000 + b'"}'
            )
            assert r.status_code == 413
            assert r.json()["error"]["type"] == "request_too_large"
            r = await client.post(
                relay.gateway("openai") + "/v1/chat/completions",
                headers={"authorization": f"Bearer {relay.token}"},
                content=b"nope",
            )
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "invalid_request_error"
            r = await client.get(
                relay.gateway("anthropic") + "/v1/foo", headers=relay_headers(relay)
            )
            assert r.status_code == 404
            assert r.json()["error"]["message"] == "route not supported: GET /v1/foo"
            r = await client.post(
                relay.gateway("openai") + "/v1/completions",
                headers={"authorization": f"Bearer {relay.token}"},
                json={"model": "x", "prompt": "y"},
            )
            assert r.status_code == 404
            assert "route not supported" in r.json()["error"]["message"]
            r = await client.post(
                f"{relay.url}/api/v2/ai-gateway/nobody/v1/messages", headers=relay_headers(relay)
            )
            assert r.status_code == 404
        assert mock.requests == []


async def test_upstream_error_status_and_body_pass_through(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        async with httpx.AsyncClient() as client:
            for status in (400, 429, 500, 529):
                r = await client.post(
                    relay.gateway("anthropic") + "/v1/messages",
                    headers=relay_headers(relay, **{"x-mock-status": str(status)}),
                    json=messages_body("mock-error-status"),
                )
                assert r.status_code == status
                assert r.content == mock.requests[-1].response_body
        rows = await relay.wait_for_rows(
            "SELECT status FROM interceptions WHERE status = 'failed'", count=4
        )
        assert len(rows) == 4


async def test_midstream_failure_ends_with_an_error_the_sdks_raise(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        a = anthropic.AsyncAnthropic(
            api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
        )
        with pytest.raises(anthropic.APIError):
            async with a.messages.stream(model="mock-drop", max_tokens=5, messages=USER) as s:
                async for _ in s:
                    pass
        o = openai.AsyncOpenAI(
            api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
        )
        with pytest.raises(openai.APIError):
            stream = await o.chat.completions.create(model="mock-drop", messages=USER, stream=True)
            async for _ in stream:
                pass
        rows = await relay.wait_for_rows(
            "SELECT status, error_type FROM interceptions WHERE status = 'failed'", count=2
        )
        assert {r["error_type"] for r in rows} == {"upstream_stream_error"}


async def test_unreachable_upstream_is_502_and_timeout_504(pg_dsn, tmp_path):
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    env = {
        "CODER_AI_GATEWAY_PROVIDER_2_TYPE": "anthropic",
        "CODER_AI_GATEWAY_PROVIDER_2_NAME": "nowhere",
        "CODER_AI_GATEWAY_PROVIDER_2_KEY": "sk-nowhere-key-000000",
        "CODER_AI_GATEWAY_PROVIDER_2_BASE_URL": f"http://127.0.0.1:{closed_port}",
        "CODER_AI_GATEWAY_UPSTREAM_READ_TIMEOUT": "300ms",
    }
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient() as client:
            r = await client.post(
                relay.gateway("nowhere") + "/v1/messages",
                headers=relay_headers(relay),
                json=messages_body("mock-text"),
            )
            assert r.status_code == 502
            assert r.json()["error"]["type"] == "api_error"
            r = await client.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers=relay_headers(relay, **{"x-mock-headers-delay-ms": "2000"}),
                json=messages_body("mock-text"),
            )
            assert r.status_code == 504


async def _open_then_leave(
    client: httpx.AsyncClient, relay, headers, body, leave_after: int
) -> None:  # type: ignore[no-untyped-def]
    async with client.stream(
        "POST", relay.gateway("anthropic") + "/v1/messages", headers=headers, json=body
    ) as r:
        if leave_after < 0:
            return
        got = 0
        async for chunk in r.aiter_raw():
            got += len(chunk)
            if got >= leave_after:
                return


@pytest.mark.parametrize(
    ("phase", "knobs", "leave_after"),
    [
        ("before-response", {"x-mock-headers-delay-ms": "5000"}, None),
        ("before-first-byte", {"x-mock-first-token-ms": "5000"}, -1),
        ("mid-stream", {"x-mock-gap-ms": "50", "x-mock-events": "200"}, 1),
    ],
)
async def test_client_leaving_closes_upstream_at_once(pg_dsn, tmp_path, phase, knobs, leave_after):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        headers = relay_headers(relay, **knobs)
        async with httpx.AsyncClient() as client:
            if leave_after is None:
                with trio.move_on_after(0.3):
                    await _open_then_leave(client, relay, headers, messages_body("mock-long"), 0)
            else:
                await _open_then_leave(
                    client, relay, headers, messages_body("mock-long"), leave_after
                )
        closed = await mock.wait_for_close(request_index=0, timeout=2)
        assert closed.kind == "closed-by-peer"
        assert closed.phase == phase
        rows = await relay.wait_for_rows("SELECT status FROM interceptions")
        assert rows[0]["status"] == "cancelled"


def _task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def test_random_disconnect_storm_leaves_nothing_behind(pg_dsn, tmp_path):
    rng = random.Random(7)
    # Random splits of up to 480 bytes (the default 48 made ~1,600 writes per
    # 38 KB stream, 70 s of CPU for the storm): every leaving point below is
    # still mid-stream, in a piece cut anywhere.
    mock_split = {"split_max": 480}
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random", **mock_split) as (
        mock,
        relay,
    ):
        port = int(relay.url.rsplit(":", 1)[1])
        body = json.dumps(messages_body("mock-long")).encode()
        head = (
            f"POST /api/v2/ai-gateway/anthropic/v1/messages HTTP/1.1\r\nhost: x\r\n"
            f"x-api-key: {relay.token}\r\ncontent-type: application/json\r\n"
            f"x-mock-events: 300\r\nx-mock-gap-ms: 1\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        await trio.sleep(0.2)
        baseline_tasks = _task_count()

        async def one(leave_after: int) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(head + body)
                got = 0
                while got < leave_after:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    got += len(data)
            finally:
                await stream.aclose()

        limit = trio.CapacityLimiter(50)

        async def bounded(leave_after: int) -> None:
            async with limit:
                await one(leave_after)

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(bounded, rng.choice([0, 1, 200, 2000, 20000]))
        # Every upstream connection the storm opened is closed again.
        with trio.fail_after(10):
            while mock.open_connections > 0:
                await trio.sleep(0.05)
        with trio.fail_after(10):
            while _task_count() > baseline_tasks:
                await trio.sleep(0.05)
        rows = await relay.wait_for_rows("SELECT id FROM interceptions", count=1000, timeout=30)
        assert len(rows) == 1000


async def test_slow_reader_slows_the_upstream_and_memory_stays_bounded(pg_dsn, tmp_path):
    events = 40_000  # ~10 MB of SSE
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        port = int(relay.url.rsplit(":", 1)[1])
        body = json.dumps(messages_body("mock-long")).encode()
        head = (
            f"POST /api/v2/ai-gateway/anthropic/v1/messages HTTP/1.1\r\nhost: x\r\n"
            f"x-api-key: {relay.token}\r\ncontent-type: application/json\r\n"
            f"x-mock-events: {events}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        sock = trio.socket.socket()
        # A small receive window, as a slow client on a real network has.
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 16384)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        gc.collect()
        tracemalloc.start()
        try:
            await stream.send_all(head + body)
            received = len(await stream.receive_some(4096))
            # Stop reading; the relay must stop reading the upstream too.
            await trio.sleep(1.0)
            sent_while_paused = mock.paused_writes.bytes
            await trio.sleep(0.5)
            assert mock.paused_writes.blocked_now > 0  # the upstream write is waiting
            assert mock.paused_writes.bytes == sent_while_paused  # and wrote nothing more
            # What the relay's stack holds now (the mock's own buffers excluded):
            # at most a chunk or so per stream, not megabytes.
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, f"{directory}/*") for directory in RELAY_STACK]
                + [tracemalloc.Filter(False, f"{MOCKS}/*")]
            )
            held = sum(stat.size for stat in snapshot.statistics("filename"))
            assert held < 1_000_000, held
            # Then read the rest (a slow reader, at its own pace): everything arrives.
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += len(data)
                if data.endswith(b"0\r\n\r\n"):
                    break
        finally:
            tracemalloc.stop()
            await stream.aclose()
        total = len(mock.requests[0].response_body)
        assert received > total


async def test_database_away_cached_token_streams_new_token_gets_503(pg_dsn, pg_cluster, tmp_path):
    from relay.auth import create_token

    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        other, _ = await create_token(relay.db, "alice")
        await config_settled(relay.app)  # its announcement must not evict the cached token later
        url = relay.gateway("anthropic") + "/v1/messages"
        async with httpx.AsyncClient() as client:
            status, _ = await read_stream(
                client, url, relay_headers(relay), messages_body("mock-text")
            )
            assert status == 200  # the token is now cached
            async with pg_cluster.down():
                status, got = await read_stream(
                    client, url, relay_headers(relay), messages_body("mock-text")
                )
                assert status == 200
                assert got.rstrip().endswith(b'data: {"type":"message_stop"}')
                r = await client.post(
                    url, headers={"x-api-key": other}, json=messages_body("mock-text")
                )
                assert r.status_code == 503
                assert r.json()["error"]["type"] == "overloaded_error"
