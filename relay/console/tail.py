"""``GET api/tail``: the live tail, as a server-sent event stream.

Each finished interception this relay process serves reaches the stream
through ``relay.observe.tail`` (the record sink publishes it to the hub; no
query per viewer). The viewer's filters (``provider``, ``model``, ``user``,
``status``, ``client``) are applied in the hub. The stream sends:

- ``event: interception`` with ``id: <interception id>`` and the
  ``TailEvent`` as JSON (``user`` filled with the user's name);
- ``event: missed`` with ``{"missed": n}`` when the viewer fell behind and
  its bounded queue dropped ``n`` events;
- a comment line (``: heartbeat``) when nothing was sent for
  ``TailHub.heartbeat`` seconds, so proxies and the browser keep the
  connection open and a gone viewer is noticed.

Beyond ``TailHub.max_viewers`` open tails a new one is answered 503. A
viewer that leaves ends its task at once (the disconnect watcher cancels the
stream), and its slot is given back in a ``finally``. At shutdown
(``TailHub.close``, called by ``relay.server`` when the signal comes) every
stream ends at once instead of holding the grace period; the browser's
EventSource reconnects by itself.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import trio

from relay.console.http import (
    BadRequest,
    ConsoleRequest,
    Receive,
    Response,
    Route,
    error_response,
)
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.observe.tail import (
    TAIL_STATUSES,
    TailClosed,
    TailEvent,
    TailFilter,
    TailHub,
    TooManyViewers,
    Viewer,
)

#: The most characters a filter value may have.
MAX_FILTER = 256
#: Seconds between two checks that an open tail's viewer is still an admin (at
#: a heartbeat or a batch of events, so at most this plus the heartbeat late).
RECHECK = 30.0
_encode = msgspec.json.Encoder().encode


async def _tail_filter(req: ConsoleRequest) -> TailFilter:
    values: dict[str, str | None] = {}
    for name in ("provider", "model", "user", "status", "client"):
        value = req.query.get(name, "").strip()
        if len(value) > MAX_FILTER:
            raise BadRequest(f"{name}: at most {MAX_FILTER} characters")
        values[name] = value or None
    status = values["status"]
    if status is not None and status not in TAIL_STATUSES:
        raise BadRequest(f"status: one of {', '.join(TAIL_STATUSES)}")
    user_id = None
    user = values["user"]
    if user is not None:
        # One query when the tail opens (a name to its id); the hub compares ids.
        user_id = await req.services.db.fetchval("SELECT id::text FROM users WHERE name = $1", user)
        if user_id is None:
            raise BadRequest(f"user: no user named {user!r}")
    return TailFilter(
        provider=values["provider"],
        model=values["model"],
        user_id=user_id,
        status=status,
        client=values["client"],
    )


async def tail(req: ConsoleRequest) -> Response | None:
    hub = req.services.tail
    if hub is None:
        return error_response(503, "unavailable", "the live tail is not running")
    tail_filter = await _tail_filter(req)
    try:
        viewer = hub.subscribe(tail_filter)
    except TooManyViewers as exc:
        response = error_response(503, "too_many_viewers", str(exc))
        response.headers.append((b"retry-after", b"30"))
        return response
    except TailClosed as exc:
        return error_response(503, "shutting_down", str(exc))
    try:
        from relay.console.app import SECURITY_HEADERS  # app imports this module

        await req.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"x-accel-buffering", b"no"),
                    *SECURITY_HEADERS,
                ],
            }
        )
        ended = False  # by the stream itself, not by the viewer leaving
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, req.receive, nursery.cancel_scope)
            await _stream(req, hub, viewer)
            # The hub closed (shutdown), or the viewer is no longer an admin:
            # the response ends; the browser reconnects.
            ended = True
            nursery.cancel_scope.cancel()
        if ended:
            await req.send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        hub.unsubscribe(viewer)
    return None


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    # hypercorn does not cancel the app when its client leaves: watch for it.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _stream(req: ConsoleRequest, hub: TailHub, viewer: Viewer) -> None:
    async def send(data: bytes) -> None:
        await req.send({"type": "http.response.body", "body": data, "more_body": True})

    # The retry hint and a first line at once, so the browser knows it is open.
    await send(b"retry: 5000\n: tail open\n\n")
    checked = trio.current_time()
    while not hub.closed:
        with trio.move_on_after(hub.heartbeat):
            await viewer.ready.wait()
        if trio.current_time() - checked >= RECHECK:
            # Signed out, its token revoked or its role taken away since the
            # tail opened: the stream ends (the browser's reconnection is refused).
            if not await req.still_admin():
                return
            checked = trio.current_time()
        events, missed = viewer.take()
        if hub.closed and not events:
            return
        if not events and not missed:
            await send(b": heartbeat\n\n")
            continue
        chunks: list[bytes] = []
        if missed:
            chunks.append(b"event: missed\ndata: " + _encode({"missed": missed}) + b"\n\n")
        for event in await _named(req, hub, events):
            chunks.append(
                b"id: "
                + event.id.encode()
                + b"\nevent: interception\ndata: "
                + _encode(event)
                + b"\n\n"
            )
        await send(b"".join(chunks))


async def _named(req: ConsoleRequest, hub: TailHub, events: list[TailEvent]) -> list[TailEvent]:
    """The events with their users' names (one query for the ids not seen before)."""
    names = hub.user_names
    unknown = {e.user_id for e in events if e.user_id is not None and names.get(e.user_id) is None}
    if unknown:
        try:
            rows: list[Any] = await req.services.db.fetch(
                "SELECT id::text AS id, name FROM users WHERE id = ANY($1::uuid[])",
                [uuid.UUID(u) for u in unknown],
            )
        except UNAVAILABLE_ERRORS:
            rows = []  # the database is away: the events go without names (user_id only)
        for row in rows:
            names.put(row["id"], row["name"])
    return [
        msgspec.structs.replace(e, user=names.get(e.user_id)) if e.user_id is not None else e
        for e in events
    ]


ROUTES: list[Route] = [Route("GET", "api/tail", tail)]
