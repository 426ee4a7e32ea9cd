"""What the AI Gateway Proxy adds: one decrypted stream through the proxy vs the same stream direct.

One ``relay serve`` subprocess (embedded PostgreSQL in a temporary data
directory) with ``PROXY_ENABLED``, its ``anthropic`` provider in front of the
in-process mock upstream. The same Anthropic Messages stream is sent

- **direct**: ``POST http://relay/api/v2/ai-gateway/anthropic/v1/messages``;
- **proxy**: ``POST https://api.anthropic.com/v1/messages`` with the proxy
  and its CA (httpx, keep-alive: one CONNECT and one TLS handshake per
  connection, as a client would).

Latency is from the request to the last byte, sequential (one client);
streams/s is with ``--concurrency`` clients. Both in one run, alternating
direct and proxy rounds so machine noise hits both alike.

    python -m bench.bench_proxy [--streams 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from bench.replay.relay_process import started_relay
from relay.testing.mock_upstream import MockUpstream

BODY = {
    "model": "mock-text",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(client: httpx.AsyncClient, url: str, token: str) -> float:
    started = time.perf_counter()
    async with client.stream(
        "POST", url, json=BODY, headers={"x-api-key": token, "anthropic-version": "2023-06-01"}
    ) as response:
        async for _ in response.aiter_raw():
            pass
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code}")
    return time.perf_counter() - started


async def _latencies(
    make: Callable[[], httpx.AsyncClient], url: str, token: str, n: int
) -> list[float]:
    async with make() as client:
        await _one(client, url, token)  # warm: connection (and tunnel, handshake) made
        return [await _one(client, url, token) for _ in range(n)]


async def _throughput(
    make: Callable[[], httpx.AsyncClient], url: str, token: str, n: int, concurrency: int
) -> float:
    left = n

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _one(client, url, token)

    async with make() as client:
        await _one(client, url, token)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, client)
        return n / (time.perf_counter() - started)


async def main(streams: int, concurrency: int, rounds: int) -> None:
    mock = MockUpstream(chunking="event")
    data_dir = Path(tempfile.mkdtemp(prefix="relay-bench-proxy-"))
    proxy_port = _free_port()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mock.serve, 0)
            extra = {
                "CODER_AI_GATEWAY_PROXY_ENABLED": "true",
                "CODER_AI_GATEWAY_PROXY_LISTEN_ADDR": f"127.0.0.1:{proxy_port}",
                "CODER_AI_GATEWAY_MAX_CONNECTIONS": "0",
            }
            async with started_relay(
                mock.base_url, {"anthropic": "anthropic"}, data_dir=data_dir, extra_env=extra
            ) as relay:
                ca = ssl.create_default_context(cafile=str(data_dir / "proxy" / "ca.pem"))
                limits = httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
                proxy_url = f"http://bench:{relay.token}@127.0.0.1:{proxy_port}"
                direct_url = f"{relay.url}/api/v2/ai-gateway/anthropic/v1/messages"
                proxy_target = "https://api.anthropic.com/v1/messages"

                def direct() -> httpx.AsyncClient:
                    return httpx.AsyncClient(limits=limits, timeout=30)

                def proxied() -> httpx.AsyncClient:
                    return httpx.AsyncClient(proxy=proxy_url, verify=ca, limits=limits, timeout=30)

                results: dict[str, dict[str, list[float]]] = {
                    "direct": {"lat": [], "sps": []},
                    "proxy": {"lat": [], "sps": []},
                }
                for _ in range(rounds):
                    for name, make, url in (
                        ("direct", direct, direct_url),
                        ("proxy", proxied, proxy_target),
                    ):
                        results[name]["lat"] += await _latencies(make, url, relay.token, streams)
                        results[name]["sps"].append(
                            await _throughput(make, url, relay.token, streams, concurrency)
                        )
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{streams} streams x {rounds} rounds; throughput with {concurrency} concurrent clients")
    print("| path | p50 latency | mean latency | p95 latency | streams/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        lat = sorted(r["lat"])
        p95 = lat[int(len(lat) * 0.95) - 1]
        print(
            f"| {name} | {statistics.median(lat) * 1000:.2f} ms | "
            f"{statistics.fmean(lat) * 1000:.2f} ms | {p95 * 1000:.2f} ms | "
            f"{statistics.median(r['sps']):.0f} |"
        )
    d, p = results["direct"], results["proxy"]
    added = statistics.median(p["lat"]) - statistics.median(d["lat"])
    ratio = statistics.median(p["sps"]) / statistics.median(d["sps"])
    print(
        f"the proxy adds {added * 1000:.2f} ms (p50) per stream; {ratio:.2f}x the direct streams/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.streams, args.concurrency, args.rounds)
