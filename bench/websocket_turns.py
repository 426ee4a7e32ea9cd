"""Per-turn cost of the Responses WebSocket bridge vs the SSE path (issue 17).

``python -m bench.websocket_turns [--turns N]``: a ``relay serve`` (its
embedded PostgreSQL, recording on) in front of the mock upstreams, and for
each transport N sequential ``mock-text`` turns, first straight to the mock,
then through the relay:

- WebSocket: one socket, N ``response.create`` messages, each timed from
  the send to its ``response.completed``;
- SSE: one keep-alive HTTP connection, N streaming ``POST /v1/responses``,
  each timed from the request to the end of its body.

It prints the median and p90 per turn, the median the relay adds, and the
relay process's CPU time per turn (``/proc/<pid>/stat``, user + system).
One run; on a shared machine the figures move with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from bench.replay.relay_process import RelayProcess, started_relay
from relay.testing.mock_responses_ws import MockResponsesSocket
from relay.testing.mock_upstream.server import MockUpstream

CREATE = {
    "type": "response.create",
    "model": "mock-text",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}],
}


def relay_pid(relay: RelayProcess) -> int:
    """The ``relay serve`` process listening on ``relay.url`` (found by its environment)."""
    address = relay.url.removeprefix("http://").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"CODER_AI_GATEWAY_HTTP_ADDRESS=" + address in environ and b"relay.cli" in cmdline:
            return int(entry.name)
    raise RuntimeError("relay process not found")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def websocket_turns(url: str, headers: list[tuple[bytes, bytes]], turns: int) -> list[float]:
    times: list[float] = []
    async with open_websocket_url(url, extra_headers=headers) as ws:
        message = json.dumps(CREATE)
        for _ in range(turns):
            started = trio.current_time()
            await ws.send_message(message)
            while '"response.completed"' not in str(await ws.get_message())[:40]:
                pass
            times.append(trio.current_time() - started)
    return times


async def sse_turns(url: str, headers: dict[str, str], turns: int) -> list[float]:
    times: list[float] = []
    body = {k: v for k, v in CREATE.items() if k != "type"} | {"stream": True}
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        for _ in range(turns):
            started = trio.current_time()
            async with client.stream("POST", url, json=body, headers=headers) as response:
                assert response.status_code == 200, response.status_code
                async for _chunk in response.aiter_raw():
                    pass
            times.append(trio.current_time() - started)
    return times


def summary(name: str, direct: list[float], relayed: list[float], cpu: float) -> str:
    def ms(xs: list[float], q: float) -> float:
        return (
            1000 * statistics.quantiles(xs, n=100)[int(q) - 1]
            if q != 50
            else 1000 * statistics.median(xs)
        )

    added = ms(relayed, 50) - ms(direct, 50)
    return (
        f"| {name} | {ms(direct, 50):.2f} / {ms(direct, 90):.2f} | "
        f"{ms(relayed, 50):.2f} / {ms(relayed, 90):.2f} | {added:.2f} | {1000 * cpu:.2f} |"
    )


async def measure(
    relay: RelayProcess, run: Callable[[], Awaitable[list[float]]], turns: int
) -> tuple[list[float], float]:
    pid = relay_pid(relay)
    before = cpu_seconds(pid)
    times = await run()
    return times, (cpu_seconds(pid) - before) / turns


async def main(turns: int) -> None:
    ws_mock = MockResponsesSocket()
    http_mock = MockUpstream()
    rows: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ws_mock.serve)
        await nursery.start(http_mock.serve, 0)
        ws_base = ws_mock.base_url.removesuffix("/v1")
        async with started_relay(ws_base, {"openai": "openai"}) as relay:
            headers = [(b"authorization", f"Bearer {relay.token}".encode())]
            direct = await websocket_turns(
                ws_base.replace("http", "ws") + "/v1/responses", [], turns
            )
            url = relay.url.replace("http", "ws") + "/api/v2/ai-gateway/openai/v1/responses"
            await websocket_turns(url, headers, 10)  # warm up
            relayed, cpu = await measure(relay, lambda: websocket_turns(url, headers, turns), turns)
            rows.append(summary("WebSocket (one socket)", direct, relayed, cpu))
        async with started_relay(http_mock.base_url, {"openai": "openai"}) as relay:
            headers_h = {"authorization": f"Bearer {relay.token}"}
            direct = await sse_turns(
                http_mock.openai_base_url + "/responses", {"authorization": "Bearer sk-x"}, turns
            )
            url = relay.url + "/api/v2/ai-gateway/openai/v1/responses"
            await sse_turns(url, headers_h, 10)
            relayed, cpu = await measure(relay, lambda: sse_turns(url, headers_h, turns), turns)
            rows.append(summary("SSE (keep-alive POST)", direct, relayed, cpu))
        nursery.cancel_scope.cancel()
    print(f"{turns} sequential mock-text turns each, recording on")
    print(
        "| path | direct p50 / p90 ms | through the relay p50 / p90 ms | added p50 ms | relay CPU per turn ms |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    trio.run(main, parser.parse_args().turns)
