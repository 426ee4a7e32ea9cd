"""The replay upstream: answers each recorded request with its recorded response.

A hypercorn (trio) server on a loopback port. A request is matched to its case
by the ``x-relay-replay-case`` header the replay client sends (the relay
passes unknown headers through), else by method + path + body hash, else by
order among the cases of that method and path. The response is the recorded
status, headers and body, cut into the recorded chunks and paced as recorded
(``speed`` 2 plays twice as fast; 0 sends without pauses).
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from bench.replay.cases import ReplayCase, wire_chunks
from relay.asgi import ClientDisconnected, read_body

CASE_HEADER = "x-relay-replay-case"

# Framing is the server's business, and hypercorn sets date and server itself.
_NOT_REPLAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "date",
        "server",
        "content-length",
    }
)


class ReplayUpstream:
    def __init__(self, cases: list[ReplayCase], *, speed: float = 1.0) -> None:
        self.cases = {case.id: case for case in cases}
        self.speed = speed
        self.served: dict[str, int] = defaultdict(int)
        self.unmatched = 0
        self.base_url = ""
        self._by_body: dict[tuple[str, str, str], list[ReplayCase]] = defaultdict(list)
        self._by_route: dict[tuple[str, str], list[ReplayCase]] = defaultdict(list)
        self._cursor: dict[tuple[str, str], int] = defaultdict(int)
        self._wire = {case.id: wire_chunks(case) for case in cases}
        for case in cases:
            route = (case.request.method, case.path)
            self._by_body[(*route, case.body_hash)].append(case)
            self._by_route[route].append(case)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on 127.0.0.1 (an ephemeral port) until cancelled; starts with the base URL."""
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 75

        async def never() -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    self,  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=never,
                    task_status=task_status,
                )
            )
            self.base_url = binds[0]
            task_status.started(self.base_url)

    def match(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> ReplayCase | None:
        case = self.cases.get(headers.get(CASE_HEADER, ""))
        if case is not None:
            return case
        route = (method, path.partition("?")[0])
        same = self._by_body.get((*route, hashlib.sha256(body).hexdigest()))
        if same:
            return min(same, key=lambda c: self.served[c.id])
        in_order = self._by_route.get(route)
        if in_order:
            at = self._cursor[route]
            self._cursor[route] = at + 1
            return in_order[at % len(in_order)]
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive, sys.maxsize)
        except ClientDisconnected:
            return
        started = trio.current_time()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        case = self.match(scope["method"], scope["path"], headers, body)
        if case is None:
            self.unmatched += 1
            await send({"type": "http.response.start", "status": 599, "headers": []})
            await send({"type": "http.response.body", "body": b"no recorded exchange matches"})
            return
        self.served[case.id] += 1
        response = case.response
        out_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers
            if name.lower() not in _NOT_REPLAYED
        ]
        if not _is_streamed(response.headers):
            out_headers.append((b"content-length", str(len(response.body)).encode()))
        await self._pause_until(started, case.response_at)
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        for at, piece in self._wire[case.id]:
            await self._pause_until(started, at)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pause_until(self, started: float, at: float) -> None:
        if self.speed > 0 and at > 0:
            await trio.sleep_until(started + at / self.speed)


def _is_streamed(headers: list[tuple[str, str]]) -> bool:
    """Whether the recorded response had no length (an event stream, or chunked)."""
    names = {name.lower() for name, _ in headers}
    return "content-length" not in names
