"""The console's HTTP types: what a feature module's handlers receive and return.

Each feature module (``read``, ``manage``, ``tail``) exposes ``ROUTES``, a list
of ``Route``; ``relay.console.app`` authenticates the request as an admin,
checks CSRF on every POST, matches the route and calls its handler with a
``ConsoleRequest``. A handler returns a ``Response`` (``json_response``,
``error_response``), raises ``BadRequest`` (400) or ``NotFound`` (404), or
sends its own response through ``req.send`` and returns None (a stream).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from relay.asgi import BodyTimeout, BodyTooLarge, header_str, read_body

if TYPE_CHECKING:
    from relay.services import Services

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

T = TypeVar("T")

#: The largest request body a console handler reads (JSON or a form).
MAX_BODY = 64 * 1024
#: The most query or form parameters one request may carry.
MAX_FIELDS = 100
#: Seconds a whole request body may take, and the longest silence within one.
BODY_TOTAL = 30.0
BODY_IDLE = 10.0


class BadRequest(Exception):
    """Raised by a handler: answered 400 ``{"error": "bad_request", "message": str(exc)}``."""


class NotFound(Exception):
    """Raised by a handler: answered 404 ``{"error": "not_found", "message": str(exc)}``."""


class BodyRefused(BadRequest):
    """A request body over ``MAX_BODY`` (413 ``too_large``) or too slow (408
    ``timeout``): answered before the rest of it is read, and the connection closed."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class Actor(msgspec.Struct, frozen=True):
    """The admin behind a console request."""

    user_id: uuid.UUID | None  # None: signed in with ADMIN_TOKEN
    name: str  # the user name, or "admin-token"
    via: str  # "console" (cookie session) or "api" (bearer credential)


class Response(msgspec.Struct):
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)


def json_response(obj: object, status: int = 200) -> Response:
    return Response(status, msgspec.json.encode(obj))


def error_response(status: int, error: str, message: str) -> Response:
    return json_response({"error": error, "message": message}, status)


def parse_fields(text: str, what: str) -> dict[str, str]:
    """``a=1&b=2`` as a dict (the last value of each name); BadRequest when malformed,
    not UTF-8, over ``MAX_FIELDS`` fields, or holding a NUL (PostgreSQL text cannot)."""
    try:
        pairs = parse_qsl(
            text, keep_blank_values=False, encoding="utf-8", errors="strict",
            max_num_fields=MAX_FIELDS,
        )  # fmt: skip
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what}: {exc}") from None
    fields = dict(pairs)
    for name, value in fields.items():
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"{what}: parameter {name!r} must not contain NUL characters")
    return fields


class ConsoleRequest:
    """One request below the console's prefix, already authenticated as an admin."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        path: str,
        query: dict[str, str],
        actor: Actor,
        services: Services,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope.get("method", "GET")
        self.path = path  # below the prefix, e.g. "api/sessions/abc"
        self.query = query
        self.actor = actor
        self.services = services
        self._body: bytes | None = None
        #: Whether the credential of this request is still an admin's, checked
        #: again now (a long stream asks it from time to time: a revoked token,
        #: a role taken away or a sign-out must end it too).
        self.still_admin: Callable[[], Awaitable[bool]] = _always

    def header(self, name: bytes) -> str | None:
        return header_str(self.scope.get("headers", ()), name)

    async def body(self) -> bytes:
        """The request body (at most ``MAX_BODY`` bytes; read once)."""
        if self._body is None:
            try:
                self._body = await read_body(
                    self.receive, MAX_BODY, total=BODY_TOTAL, idle=BODY_IDLE
                )
            except BodyTooLarge:
                raise BodyRefused(
                    413, "too_large", f"the request body is over {MAX_BODY} bytes"
                ) from None
            except BodyTimeout as exc:
                raise BodyRefused(408, "timeout", str(exc)) from None
        return self._body

    async def json(self, type: type[T]) -> T:
        """The body decoded as ``type`` (msgspec); BadRequest when it does not fit."""
        body = await self.body()
        try:
            decoded = msgspec.json.decode(body, type=type)
            if b"\\u0000" in body and _holds_nul(msgspec.json.decode(body)):
                # PostgreSQL text cannot hold one: refused here, not a 500 from the store.
                raise BadRequest("the request body must not contain NUL characters")
            return decoded
        except msgspec.ValidationError as exc:
            raise BadRequest(f"request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the request body is not JSON: {exc}") from None

    async def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body as a dict (last value wins)."""
        body = await self.body()
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("a form body must be URL-encoded ASCII") from None
        return parse_fields(text, "form")


async def _always() -> bool:
    return True


def _holds_nul(value: object) -> bool:
    """Whether a decoded JSON value has a NUL in any string (key or value)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


Handler = Callable[..., Awaitable[Response | None]]


class Route(msgspec.Struct, frozen=True):
    """``handler(req, **params)`` for ``method`` on ``pattern`` (below the prefix).

    In the pattern, ``{name}`` matches one path segment (URL-decoded, at most
    256 characters, not empty) and passes it as the keyword argument ``name``.
    """

    method: str  # "GET" or "POST"
    pattern: str  # e.g. "api/sessions/{key}"
    handler: Handler
