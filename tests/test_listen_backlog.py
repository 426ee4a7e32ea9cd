"""The listening socket takes a burst of new connections without dropping handshakes.

With hypercorn's default backlog (100) the kernel drops the SYNs of a burst
beyond it until the relay accepts, and each of those clients waits for TCP's
SYN retry (1 s, then 3 s): the p99 of 256 clients starting together. Here
nothing accepts at all, so exactly the backlog decides how many connect.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

import hypercorn.trio.run
import pytest
import trio

from relay.hypercorn_fixes import DrainingSocketListener
from relay.options import load_options
from relay.server import KEEP_ALIVE_MAX_REQUESTS, bind_listeners, hypercorn_config

BURST = 300


def _connected_within(port: int, count: int, seconds: float) -> int:
    clients = []
    try:
        for _ in range(count):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        pending = set(clients)
        done = 0
        deadline = time.monotonic() + seconds
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.1)
            for client in writable:
                pending.discard(client)
                if client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done
    finally:
        for client in clients:
            client.close()


def test_a_burst_of_connections_is_queued_not_dropped():
    options = load_options({}, warn=lambda line: None)
    config = hypercorn_config(options)
    sockets = bind_listeners(config, "127.0.0.1:0")
    try:
        (listener,) = sockets.insecure_sockets
        port = listener.getsockname()[1]
        with contextlib.suppress(OSError):
            with open("/proc/sys/net/core/somaxconn") as f:
                if int(f.read()) < BURST:
                    pytest.skip("net.core.somaxconn caps the backlog below this test's burst")
        # Nothing accepts: every connection completed is one the kernel queued.
        assert _connected_within(port, BURST, 3.0) == BURST
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()


def test_keep_alive_connections_are_recycled_only_when_very_busy():
    config = hypercorn_config(load_options({}, warn=lambda line: None))
    assert config.keep_alive_max_requests == KEEP_ALIVE_MAX_REQUESTS >= 100_000


async def test_a_burst_is_accepted_in_one_scheduling_round():
    """Every queued connection is handed out without a checkpoint after the first."""
    listening = trio.socket.socket()
    await listening.bind(("127.0.0.1", 0))
    listening.listen(4096)
    listener = DrainingSocketListener(listening)
    clients = [socket.create_connection(listening.getsockname()) for _ in range(50)]
    rounds = 0

    async def count_rounds() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_rounds)
            streams = [await listener.accept()]
            before = rounds
            streams += [await listener.accept() for _ in range(len(clients) - 1)]
            assert rounds - before <= 1  # trio's SocketListener: one round per connection
            nursery.cancel_scope.cancel()
        # They are real connections, each to its own client.
        for n, client in enumerate(clients):
            client.sendall(b"%d" % n)
        received = sorted([int(await stream.receive_some(16)) for stream in streams])
        assert received == list(range(len(clients)))
        for stream in streams:
            await stream.aclose()
    finally:
        for client in clients:
            client.close()
        await listener.aclose()


def test_hypercorn_s_worker_builds_draining_listeners():
    hypercorn_config(load_options({}, warn=lambda line: None))  # installs the fixes
    assert hypercorn.trio.run.trio.SocketListener is DrainingSocketListener
    assert hypercorn.trio.run.trio.serve_listeners is trio.serve_listeners
