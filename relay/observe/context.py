"""The ids of the request being served, for every log line, record, dump and span.

``serve`` (``relay.request``) makes one ``RequestIds`` per HTTP request and
puts it in a context variable; the steps fill in what they learn (the
provider, the user, the interception id). trio copies the context into every
task a request's nursery starts, and the object is shared, not copied, so what
a step fills in later is seen by the tasks already running. A leaf: it imports
nothing of the relay but its ASGI types.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from relay.asgi import RESPONSE_STARTS, Message, Send

#: Every response carries these (the provider's own ``request-id`` /
#: ``x-request-id`` pass through unchanged beside them).
REQUEST_ID_HEADER = b"x-relay-request-id"
INTERCEPTION_ID_HEADER = b"x-relay-interception-id"


class RequestIds:
    """What identifies one request in logs: filled in as the steps learn it."""

    __slots__ = ("interception_id", "provider", "request_id", "user_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.interception_id: str | None = None
        self.user_id: str | None = None
        self.provider: str | None = None

    def log_fields(self) -> dict[str, str | None]:
        """The ids every log line of this request carries."""
        return {
            "request_id": self.request_id,
            "interception_id": self.interception_id,
            "user_id": self.user_id,
            "provider": self.provider,
        }

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(REQUEST_ID_HEADER, self.request_id.encode("ascii"))]
        if self.interception_id is not None:
            headers.append((INTERCEPTION_ID_HEADER, self.interception_id.encode("ascii")))
        return headers


_current: ContextVar[RequestIds | None] = ContextVar("relay_request_ids", default=None)


def current_ids() -> RequestIds | None:
    """The ids of the request this task serves, or None outside a request."""
    return _current.get()


def bind_ids(ids: RequestIds | None) -> Callable[[], None]:
    """Make ``ids`` the current request's; returns the function that undoes it."""
    token = _current.set(ids)
    return lambda: _current.reset(token)


def send_with_ids(send: Send, ids: RequestIds) -> Send:
    """``send``, with the request id (and the interception id, once there is one)
    added to the response head (a WebSocket's too: its turns' interceptions carry
    the socket's request id). The body is never touched."""

    async def send_ids(message: Message) -> None:
        if message["type"] in RESPONSE_STARTS:
            message = {**message, "headers": [*message.get("headers", ()), *ids.response_headers()]}
        await send(message)

    return send_ids
