"""Replay of captured dumps: byte-for-byte, a deliberately altered byte caught,
the Coder AI Gateway's format, and the whole relay end to end.

The dumps are captured here, from streams of the mock upstream, through the
same ``DumpWriter`` calls the relay's interception shell makes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from bench.replay import CASE_HEADER, ReplayUpstream, Target, load_dumps, recorded_facts
from bench.replay.capture import capture_exchange
from bench.replay.cases import wire_chunks
from bench.replay.client import replay_cases
from bench.replay.run import ReplayOptions, ReplayReport, print_report, run_replay
from relay.dump import SUFFIX_CHUNKS, SUFFIX_REQUEST, DumpWriter
from relay.testing.mock_upstream import MockUpstream

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-replay-SECRET-0123456789"

# provider, method, api path, model (None: passthrough), request body
EXCHANGES: list[tuple[str, str, str, str | None, dict[str, Any] | None]] = [
    (
        "anthropic",
        "POST",
        "/v1/messages?beta=true",
        "mock-tool",
        {"max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "anthropic",
        "POST",
        "/v1/messages",
        "mock-thinking",
        {"max_tokens": 64, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("anthropic", "GET", "/v1/models", None, None),
    (
        "openai",
        "POST",
        "/v1/chat/completions",
        "mock-parallel-tools",
        {
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}],
        },
    ),
    (
        "openai",
        "POST",
        "/v1/chat/completions",
        "mock-text",  # no include_usage: through a relay, it asks for usage itself
        {"stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("openai", "POST", "/v1/responses", "mock-thinking", {"stream": True, "input": "hi"}),
]


async def capture(directory: Path) -> None:
    """Dump each exchange with the mock upstream (random TCP chunking)."""
    mock = MockUpstream(chunking="random", seed=3)
    writer = DumpWriter(directory)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as client:
        await nursery.start(mock.serve)
        await nursery.start(writer.run)
        for provider, method, path, model, body in EXCHANGES:
            headers = [("content-type", "application/json"), ("user-agent", "replay-test/1")]
            if provider == "anthropic":
                headers += [("x-api-key", KEY), ("anthropic-version", "2023-06-01")]
            else:
                headers += [("authorization", f"Bearer {KEY}")]
            payload = json.dumps({"model": model, **body}).encode() if body else b""
            status, _, _ = await capture_exchange(
                client,
                writer,
                provider=provider,
                model=model,
                url=mock.base_url + path,
                method=method,
                api_path=path,
                headers=headers,
                body=payload,
            )
            assert status == 200
        await writer.aclose()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def dumps(tmp_path: Path) -> Path:
    directory = tmp_path / "dumps"
    await capture(directory)
    return directory


async def test_captured_dumps_replay_byte_for_byte(dumps: Path) -> None:
    lines: list[str] = []
    report = await run_replay(
        ReplayOptions(dumps, direct=True, repeat=3, concurrency=4, speed=0), lines.append
    )
    assert report.ok, "\n".join(lines)
    assert len(report.dumps.cases) == len(EXCHANGES) and not report.dumps.skipped
    assert len(report.run.outcomes) == 3 * len(EXCHANGES)
    assert all(o.ok for o in report.run.outcomes)
    assert report.dumps.provider_types == {"anthropic": "anthropic", "openai": "openai"}
    assert "replay: OK" in lines and any(line.startswith("throughput:") for line in lines)
    # The recorded streams carry the usage the relay would have recorded.
    facts = {case.id.split("/")[1]: recorded_facts(case) for case in report.dumps.cases}
    assert facts["passthrough"] is None
    for model in ("mock-tool", "mock-parallel-tools", "mock-thinking"):
        found = facts[model]
        assert found is not None and found.usage is not None and found.response_id


async def test_chunks_follow_the_sidecar(dumps: Path) -> None:
    loaded = load_dumps(dumps)
    streamed = [c for c in loaded.cases if c.has_sidecar and len(c.chunks) > 1]
    assert streamed
    for case in streamed:
        pieces = wire_chunks(case)
        assert [len(p) for _, p in pieces] == [c.size for c in case.chunks]
        assert b"".join(p for _, p in pieces) == case.response.body


def corrupting_proxy(upstream: str, victim: str) -> Any:
    """A 'relay' that forwards to the replay upstream and flips one byte of one case."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k != b"host"]
        path = scope["path"].split("/", 5)[5]  # drop /api/v2/ai-gateway/<provider>/
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.request(
                scope["method"], f"{upstream}/{path}", headers=headers, content=body
            )
        data = response.content
        if dict(headers).get(CASE_HEADER) == victim:
            at = data.index(b'"type"')  # within the first event: a visible change
            data = data[:at] + b"'" + data[at + 1 :]
        await send({"type": "http.response.start", "status": response.status_code, "headers": []})
        await send({"type": "http.response.body", "body": data})

    return app


async def test_an_altered_byte_is_caught_with_a_diff(dumps: Path, nursery: trio.Nursery) -> None:
    loaded = load_dumps(dumps)
    victim = next(c for c in loaded.cases if c.api == "responses")
    upstream = ReplayUpstream(loaded.cases, speed=0)
    base = await nursery.start(upstream.serve)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    binds = await nursery.start(
        lambda task_status: hypercorn_serve(
            corrupting_proxy(base, victim.id),
            config,
            shutdown_trigger=trio.sleep_forever,
            task_status=task_status,
        )
    )
    run = await replay_cases(loaded.cases, Target(binds[0], "token"), concurrency=2, repeat=2)
    assert run.mismatches == 2 and run.errors == 0
    assert {o.case_id for o in run.outcomes if not o.ok} == {victim.id}
    lines: list[str] = []
    report = ReplayReport(loaded, run)
    print_report(report, ReplayOptions(dumps), lines.append)
    text = "\n".join(lines)
    assert not report.ok and "replay: FAILED" in lines
    assert f"replay: first mismatch, {victim.id}:" in text
    removed = [line for line in lines if line.startswith("  -data:")]
    added = [line for line in lines if line.startswith("  +data:")]
    assert len(removed) == 1 and len(added) == 1 and "'type\"" in added[0]


def to_gateway_format(directory: Path) -> None:
    """Rewrite dumps the way the Coder AI Gateway writes them: no sidecar, the
    upstream path (behind a base URL with a prefix), a pretty-printed body."""
    for sidecar in directory.rglob("*" + SUFFIX_CHUNKS):
        sidecar.unlink()
    for request_file in directory.rglob("*" + SUFFIX_REQUEST):
        head, _, body = request_file.read_bytes().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, proto = lines[0].split(b" ")
        lines[0] = b" ".join((method, b"/corp-proxy" + target, proto))
        if body:
            body = json.dumps(json.loads(body), indent=2).encode() + b"\n"
            lines.append(b"Content-Length: %d" % len(body))
        request_file.write_bytes(b"\r\n".join(lines) + b"\r\n\r\n" + body)


async def test_coder_gateway_dumps_replay_without_sidecar(dumps: Path) -> None:
    await trio.to_thread.run_sync(to_gateway_format, dumps)
    loaded = load_dumps(dumps)
    assert len(loaded.cases) == len(EXCHANGES) and not loaded.skipped
    assert not any(case.has_sidecar for case in loaded.cases)
    paths = sorted(case.api_path for case in loaded.cases)
    assert paths == sorted(path for _, _, path, _, _ in EXCHANGES)
    lines: list[str] = []
    report = await run_replay(ReplayOptions(dumps, direct=True, speed=0), lines.append)
    assert report.ok, "\n".join(lines)


def test_replay_through_the_relay_end_to_end(tmp_path: Path) -> None:
    """`python -m bench.replay DIR --start-relay --check-usage`: a real `relay serve`
    on an embedded PostgreSQL, providers pointed at the replay upstream."""
    directory = tmp_path / "dumps"
    trio.run(capture, directory)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.replay",
            str(directory),
            "--start-relay",
            "--data-dir",
            str(tmp_path / "relay-data"),
            "--check-usage",
            "--repeat",
            "2",
            "--concurrency",
            "3",
            "--speed",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{2 * len(EXCHANGES)}/{2 * len(EXCHANGES)} responses byte-identical" in output
    # Usage rows for every replay of the 4 streams that report usage and a response id.
    assert "recorded usage matches the streams (8 row(s) compared" in output
    assert "replay: OK" in output
    assert KEY not in output and "SECRET" not in output


async def test_the_relays_own_dumps_replay(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Official SDKs through `relay serve` with a dump directory; those dumps are then
    replayed through a second relay, byte for byte, usage checked."""
    import anthropic
    import openai

    from bench.replay.relay_process import started_relay

    mock = MockUpstream(chunking="random", seed=11)
    await nursery.start(mock.serve)
    dump_dir = tmp_path / "relay-dumps"
    types = {"anthropic": "anthropic", "openai": "openai"}
    async with started_relay(mock.base_url, types, dump_dir=dump_dir) as relay:
        claude = anthropic.AsyncAnthropic(
            base_url=f"{relay.url}/api/v2/ai-gateway/anthropic",
            api_key=relay.token,
            max_retries=0,
        )
        gpt = openai.AsyncOpenAI(
            base_url=f"{relay.url}/api/v2/ai-gateway/openai/v1",
            api_key=relay.token,
            max_retries=0,
        )
        messages: Any = [{"role": "user", "content": "hi"}]
        async with claude.messages.stream(
            model="mock-tool", max_tokens=64, messages=messages
        ) as stream:
            await stream.until_done()
        await claude.messages.create(model="mock-text", max_tokens=64, messages=messages)
        await claude.models.list()
        chat = await gpt.chat.completions.create(
            model="mock-parallel-tools", messages=messages, stream=True
        )
        async for _ in chat:
            pass
        responses = await gpt.responses.create(model="mock-thinking", input="hi", stream=True)
        async for _ in responses:
            pass
    # The relay has stopped: everything it queued is on disk.
    lines: list[str] = []
    report = await run_replay(
        ReplayOptions(dump_dir, start_relay=True, check_usage=True, repeat=2, speed=0),
        lines.append,
    )
    assert report.ok, "\n".join(lines)
    assert len(report.dumps.cases) == 5 and not report.dumps.skipped
    assert report.usage is not None and report.usage.checked == 8
