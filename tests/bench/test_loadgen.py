"""The load harness (bench/load): its response reader, its stream shape, and a tiny
run against the in-process mock upstream and the trio splice floor.

No timing thresholds: these check that the harness measures what it claims
(every stream complete, the right events and bytes, disconnects matched to
the upstream's closes), not how fast anything is.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import h11
import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.load import loadgen, report, scenarios, stream_lifetimes
from bench.load.floors.trio_splice import SpliceProxy
from bench.load.response import ResponseReader
from bench.load.suite import SUITES, Measurer, run_suite
from bench.load.targets import RunningTarget, _port, start_target
from relay.testing.mock_upstream import MockUpstream
from relay.testing.mock_upstream.scenarios import ID_PLACEHOLDER

STREAM_EVENTS = scenarios.litellm_shaped_events("bench-litellm-fast")
STREAM_BODY = b"".join(STREAM_EVENTS)
CREDENTIALS: dict[str, loadgen.Headers] = {"openai": ((b"authorization", b"Bearer sk-test-0000"),)}


def _response(body_chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    server.next_event()
    server.next_event()
    wire = server.send(h11.Response(status_code=200, headers=headers)) or b""
    for chunk in body_chunks:
        wire += server.send(h11.Data(data=chunk)) or b""
    return wire + (server.send(h11.EndOfMessage()) or b"")


RESPONSES = {
    "chunked stream": (
        _response(STREAM_EVENTS, [(b"content-type", b"text/event-stream")]),
        STREAM_BODY,
        True,
    ),
    "content-length": (
        _response([b'{"ok": true}'], [(b"content-length", b"12")]),
        b'{"ok": true}',
        True,
    ),
    "until close": (
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + STREAM_BODY,
        STREAM_BODY,
        False,
    ),
}


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(RESPONSES)),
    cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM_BODY) + 400), max_size=25),
)
def test_response_reader_agrees_with_h11_on_any_split(kind: str, cuts: list[int]) -> None:
    wire, body, keep_alive = RESPONSES[kind]
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    reader = ResponseReader()
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    h11_body = b""
    for start, end in itertools.pairwise(bounds):
        reader.feed(wire[start:end])
        client.receive_data(wire[start:end])
    if not reader.complete:
        reader.eof()
        client.receive_data(b"")
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        if isinstance(event, h11.Data):
            h11_body += event.data
    assert reader.complete
    assert reader.status == 200
    assert h11_body == body
    assert reader.body_bytes == len(body)
    assert reader.counter.events == body.count(b"\n\n")
    assert reader.keep_alive is keep_alive


def test_litellm_shaped_stream_is_31_chat_chunks_of_13_4_kb() -> None:
    chunks = [msgspec.json.decode(e.removeprefix(b"data: ")) for e in STREAM_EVENTS[:-1]]
    assert STREAM_EVENTS[-1] == b"data: [DONE]\n\n"
    assert len(chunks) == scenarios.LITELLM_EVENTS == 31
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert abs(len(b"".join(STREAM_EVENTS[:-1])) - 13_400) < 134  # within 1 %
    with_usage = scenarios.litellm_shaped_events("m", include_usage=True)
    usage_chunk = msgspec.json.decode(with_usage[-2].removeprefix(b"data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 29
    assert all(b'"usage":null' in e for e in with_usage[:31])


async def _mock_and_floor(nursery: trio.Nursery) -> tuple[MockUpstream, SpliceProxy]:
    mock = MockUpstream()
    scenarios.install_bench_responder(mock)
    await nursery.start(mock.serve)
    floor = SpliceProxy(mock.base_url)
    await nursery.start(floor.serve)
    return mock, floor


def _endpoint(port: int | None) -> loadgen.Endpoint:
    assert port is not None
    return loadgen.Endpoint("127.0.0.1", port, {}, CREDENTIALS)


async def test_load_through_the_splice_floor_matches_the_mock_directly() -> None:
    async with trio.open_nursery() as nursery:
        mock, floor = await _mock_and_floor(nursery)
        results = {}
        for name, port in (("direct", mock.port), ("floor", floor.port)):
            for scenario, concurrency in (
                (scenarios.blocking_chat(), 1),
                (scenarios.litellm_stream("fast"), 4),
                (scenarios.litellm_stream("paced"), 2),
            ):
                run = await loadgen.run_load(
                    _endpoint(port), scenario, concurrency, max_requests=12, max_seconds=20
                )
                assert run.errors == {} and run.unfinished == 0
                assert len(run.samples) == 12
                results[name, scenario.name] = run
        nursery.cancel_scope.cancel()
    for (_, scenario_name), run in results.items():
        for sample in run.samples:
            assert sample.status == 200
            assert 0 < sample.ttfb <= sample.total
            if scenario_name == "blocking":
                assert sample.events == 0
                assert sample.nbytes == results["direct", "blocking"].samples[0].nbytes
            else:
                model = scenarios.BENCH_MODEL_PREFIX + scenario_name.rsplit("-", 1)[1]
                assert sample.events == 32  # 31 chunks and [DONE]
                assert sample.nbytes == len(b"".join(scenarios.litellm_shaped_events(model)))
    # Keep-alive: each worker kept one connection (blocking 1, fast 4, paced 2), per target.
    assert mock.connection_count <= 1 + 4 + 2 + 1 + 4 + 2


async def test_storm_and_open_streams_see_the_upstream_close() -> None:
    async with trio.open_nursery() as nursery:
        mock, floor = await _mock_and_floor(nursery)
        config = msgspec.structs.replace(
            SUITES["smoke"], storm_streams=16, storm_concurrency=8, open_streams=6
        )
        target = RunningTarget("splice", _endpoint(floor.port), None)
        storm = await Measurer(target, mock, config, lambda label, total: _Count()).storm()
        with trio.fail_after(5):  # every storm connection, left or complete, closes
            while mock.open_connections:
                await trio.sleep(0.01)
        baseline = mock.open_connections
        async with stream_lifetimes.holding_open(
            target.endpoint, scenarios.long_open_stream(), 6
        ) as held:
            assert held.opened == 6 and held.failed == 0
            assert mock.open_connections == baseline + 6
        with trio.fail_after(5):
            while mock.open_connections > baseline:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert storm.streams == 16
    assert storm.left + storm.completed + storm.client_errors == 16
    assert storm.left > 0 and storm.client_errors == 0
    # Every client that left after its request reached the mock had its upstream closed.
    assert storm.reached_upstream > 0
    assert storm.upstream_closed == storm.reached_upstream
    assert storm.close_delay is not None and storm.close_delay.count == storm.upstream_closed


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


async def test_suite_writes_a_report_with_the_ceiling_and_a_floor(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        SUITES["smoke"],
        concurrencies=(1, 2),
        blocking_requests=5,
        sweep_max_requests=6,
        warmup_requests=2,
        open_streams=3,
        storm_streams=4,
        storm_concurrency=2,
    )
    (tmp_path / "logs").mkdir()
    result = await run_suite(config, ["direct", "splice"], tmp_path / "logs", pin_cpus=False)
    assert [t.name for t in result.targets] == ["direct", "splice"]
    assert all(t.measured for t in result.targets), [t.reason for t in result.targets]
    splice = result.targets[1]
    assert splice.rss_idle_kb and splice.rss_idle_kb > 0
    assert splice.open_streams is not None and splice.open_streams.opened == 3
    for t in result.targets:
        for run in t.runs:
            assert run.completed > 0 and not run.errors, (t.name, run.phase, run.errors)
    paths = await trio.to_thread.run_sync(functools.partial(report.write_report, result, tmp_path))
    decoded = msgspec.json.decode(await trio.Path(paths["json"]).read_bytes())
    assert decoded["pinning"]["applied"] is False
    markdown = await trio.Path(paths["markdown"]).read_text()
    assert "mock direct (generator ceiling)" in markdown
    assert "trio splice floor" in markdown
    assert "added p50 / p99 ms" in markdown


async def test_a_keep_alive_connection_closed_while_idle_is_retried_not_counted() -> None:
    # A server that closes every connection right after its first answer, as a
    # keep-alive timeout does: the generator must reconnect, not report errors.
    body = b'{"ok": true}'
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def answer_once(stream: trio.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, answer_once, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        run = await loadgen.run_load(
            _endpoint(port), scenarios.blocking_chat(), 2, max_requests=6, max_seconds=20
        )
        nursery.cancel_scope.cancel()
    assert run.errors == {}
    assert len(run.samples) == 6 and {s.nbytes for s in run.samples} == {len(body)}


async def _raw_exchange(port: int, scenario: scenarios.Scenario, count: int) -> list[bytes]:
    """``count`` requests on one keep-alive connection, over a raw socket; the bodies."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    bodies = []
    async with stream:
        for _ in range(count):
            headers = [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(scenario.body)),
                *CREDENTIALS["openai"],
                *scenario.headers,
            ]
            await stream.send_all(
                client.send(h11.Request(method="POST", target=scenario.path, headers=headers))
                + client.send(h11.Data(data=scenario.body))
                + client.send(h11.EndOfMessage())
            )
            body = b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            bodies.append(body)
            client.start_next_cycle()
    return bodies


def _same_id(body: bytes) -> bytes:
    placeholder = b"chatcmpl-" + ID_PLACEHOLDER.encode()
    return re.sub(rb"chatcmpl-[0-9a-f]{%d}" % len(ID_PLACEHOLDER), placeholder, body)


@pytest.mark.parametrize("name", ["asgi", "asgi-httpx"])
async def test_the_asgi_floors_start_and_relay_streams_byte_identically(
    name: str, tmp_path: Path
) -> None:
    mock = MockUpstream()
    scenarios.install_bench_responder(mock)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve)
        async with start_target(name, mock, tmp_path) as target:
            assert target.pid is not None
            for pacing in ("fast", "paced"):
                scenario = scenarios.litellm_stream(pacing)
                direct = await _raw_exchange(_port(mock), scenario, 1)
                through = await _raw_exchange(target.endpoint.port, scenario, 3)
                expected = b"".join(
                    scenarios.litellm_shaped_events(scenarios.BENCH_MODEL_PREFIX + pacing)
                )
                # The mock gives every response a fresh id; the rest is the same bytes.
                assert [_same_id(b) for b in direct] == [expected]
                assert [_same_id(b) for b in through] == [expected] * 3
        nursery.cancel_scope.cancel()
    # The floor keeps its upstream connections alive: at most one per pacing, not per request.
    assert mock.connection_count <= 2 + 2


def test_the_default_floor_uses_the_relays_upstream_client() -> None:
    from bench.load.floors import asgi_passthrough

    source = Path(asgi_passthrough.__file__).read_text()
    assert "relay.upstream.clients" in source and "httpx" not in source.split('"""', 2)[2]
