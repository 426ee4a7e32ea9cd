"""The console's HTTP front: sign-in, pages, static assets and the JSON API.

Everything below ``/api/v2/ai-gateway/admin/ui/`` (and the ``/api/v2/aibridge``
alias) comes here from ``relay.request.route.answer_local``:

- ``static/<file>``: the package's assets, from an allow-list made of the
  files in ``relay/console/static`` (no other path is served); no sign-in.
- ``signin`` (GET: the form; POST: field ``token``) and ``signout`` (POST).
- the pages (``PAGES``): the same shell HTML for each, its ``data-page``
  naming the ES module that draws it; 303 to ``signin`` without a session,
  403 for a credential that is not an admin's.
- ``api/…``: ``ROUTES`` (the feature modules' ``Route`` lists), 401 without a
  credential, 403 for a non-admin one, 403 ``csrf`` for a POST from a cookie
  session without its CSRF token, 405 for a known path and another method,
  404 otherwise.

A request is an admin's by a console session cookie (``relay_console``) or an
``Authorization: Bearer`` admin credential (no cookie, so no CSRF token needed).
Every response carries the security headers (``SECURITY_HEADERS``: no caching,
no framing, the content security policy). Every non-GET whose ``Origin`` is
not the request's own is refused.
"""

from __future__ import annotations

import functools
import hmac
import html
import logging
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from relay.asgi import ClientDisconnected, header_str
from relay.auth import mask_token
from relay.console import auth, manage, read, tail
from relay.console.auth import AdminIdentity, ConsoleSession
from relay.console.http import (
    Actor,
    BadRequest,
    BodyRefused,
    ConsoleRequest,
    NotFound,
    Receive,
    Response,
    Route,
    Scope,
    Send,
    error_response,
    json_response,
    parse_fields,
)
from relay.db.bridge import UNAVAILABLE_ERRORS

if TYPE_CHECKING:
    from relay.services import Services

log = logging.getLogger("relay.console")

#: The console's prefixes, without their final "/" (the alias second).
CONSOLE_PREFIXES = ("/api/v2/ai-gateway/admin/ui", "/api/v2/aibridge/admin/ui")

STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: under it a browser sends "Origin: null" with a form POST
    # of the console's own page (sign-in, sign-out), which same_origin refuses.
    # same-origin sends no referrer to any other site.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
]

HTML = "text/html; charset=utf-8"

#: The pages: path pattern below the prefix → the page module (static/pages/<name>.js).
PAGES: list[tuple[str, str]] = [
    ("sessions", "sessions"),
    ("sessions/{key}", "session"),
    ("interceptions/{id}", "interception"),
    ("spend", "spend"),
    ("providers", "providers"),
    ("access", "access"),
    ("tail", "tail"),
    ("audit", "audit"),
]
DEFAULT_PAGE = "sessions"

#: Static files by extension; any other file in the directory is not served.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
#: Files of the directory that are templates or notes, not assets.
NOT_SERVED = frozenset({"shell.html", "signin.html"})

MAX_SEGMENT = 256


async def whoami(req: ConsoleRequest) -> Response:
    """``GET api/whoami``: who the request is authenticated as."""
    return json_response(req.actor)


#: The JSON API. Each feature module adds its own list here (one line each).
ROUTES: list[Route] = [
    Route("GET", "api/whoami", whoami),
    *read.ROUTES,
    *manage.ROUTES,
    *tail.ROUTES,
]


# -- static assets -------------------------------------------------------------


@functools.cache
def static_files() -> dict[str, tuple[bytes, str]]:
    """The allow-list: relative path (``pages/x.js``) → (content, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        relative = path.relative_to(STATIC_DIR).as_posix()
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None and relative not in NOT_SERVED:
            files[relative] = (path.read_bytes(), content_type)
    return files


@functools.cache
def template(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def fill(name: str, values: Mapping[str, str]) -> bytes:
    """A template with each ``{{key}}`` replaced by its value, HTML-escaped."""
    text = template(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return text.encode()


# -- matching -------------------------------------------------------------------


@functools.cache
def _pattern(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/"))


def match(pattern: str, segments: list[str]) -> dict[str, str] | None:
    """The parameters of ``segments`` (URL-decoded) if they match ``pattern``."""
    parts = _pattern(pattern)
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{") and part.endswith("}"):
            if not segment or len(segment) > MAX_SEGMENT:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


def decode_segments(below: str) -> list[str]:
    """The path below the prefix (raw, as sent) as URL-decoded segments; BadRequest
    for one that is not UTF-8 or holds a NUL."""
    segments = []
    for raw in below.split("/"):
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("the path is not UTF-8") from None
        if "\x00" in segment:
            raise BadRequest("the path must not contain NUL characters")
        segments.append(segment)
    return segments


def find_page(segments: list[str]) -> tuple[str, dict[str, str]] | None:
    for pattern, page in PAGES:
        params = match(pattern, segments)
        if params is not None:
            return page, params
    return None


# -- the request ------------------------------------------------------------------


class _Context:
    """What one console request established on the way to its handler."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, services: Services) -> None:
        self.scope = scope
        self.receive = receive
        self.services = services
        self.method: str = scope.get("method", "GET")
        self.headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
        proto, self.forwarded_host = forwarded(self.headers)
        # Over TLS: the relay's own (the AI Gateway Proxy's hand-over), or a
        # TLS-terminating proxy in front that says so.
        self.secure = scope.get("scheme") == "https" or proto == "https"
        self.base = ""  # the prefix the request came under, with its final "/"
        self.below = ""  # the raw path below it
        self.started = False  # a response head has been sent (by respond, or a stream)

        async def tracked(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        self.send: Send = tracked

    def header(self, name: bytes) -> str | None:
        return header_str(self.headers, name)

    def cookie_header(self) -> str:
        return "; ".join(
            value.decode("latin-1") for key, value in self.headers if key.lower() == b"cookie"
        )

    async def respond(self, response: Response) -> None:
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        body = b"" if self.method == "HEAD" else response.body
        await self.send(
            {"type": "http.response.start", "status": response.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def redirect(self, below: str, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
        location = (self.base + below).encode()
        return Response(303, b"", "text/plain", [(b"location", location), *(headers or [])])


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The credential of an ``Authorization: Bearer`` header, or None."""
    value = header_str(headers, b"authorization")
    if value is None:
        return None
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def forwarded(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """``(proto, host)`` a proxy in front says the browser used: the first element of
    ``Forwarded`` (RFC 7239), else ``X-Forwarded-Proto`` / ``X-Forwarded-Host``.

    A browser never sends these itself, and a cross-site page cannot make it
    (custom headers need CORS, which the console never grants): they come from a
    proxy, or from a client speaking for itself. They are used only to make the
    cookie ``Secure`` and to accept the browser's origin as the proxy's host.
    """
    proto = host = None
    standard = header_str(headers, b"forwarded")
    if standard:
        for pair in standard.split(",")[0].split(";"):
            name, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if name.lower() == "proto":
                proto = value.lower()
            elif name.lower() == "host":
                host = value
    x_proto = header_str(headers, b"x-forwarded-proto")
    if proto is None and x_proto:
        proto = x_proto.split(",")[0].strip().lower()
    x_host = header_str(headers, b"x-forwarded-host")
    if host is None and x_host:
        host = x_host.split(",")[0].strip()
    return proto, host or None


def same_origin(ctx: _Context) -> bool:
    """Whether a change may go on: no ``Origin`` (not a browser's cross-site
    request), or one naming this request's own host (``Host``, or the host a
    proxy in front forwards: ``forwarded``), and https when it came over TLS.
    The scheme is not compared otherwise: behind a TLS-terminating proxy the
    browser's https origin reaches the relay as plain http."""
    origin = ctx.header(b"origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path or not parts.netloc:
        return False
    if ctx.secure and parts.scheme != "https":
        return False
    hosts = {h.lower() for h in (ctx.header(b"host"), ctx.forwarded_host) if h}
    return parts.netloc.lower() in hosts


class _Forbidden(Exception):
    """A credential that is valid, but not an admin's."""


async def authenticate(ctx: _Context) -> tuple[Actor, ConsoleSession | None] | None:
    """The admin of this request and its console session (None for a bearer
    credential); None for no credential or an unknown one; ``_Forbidden`` for
    a valid one that is not an admin's."""
    options = ctx.services.options
    credential = bearer(ctx.headers)
    if credential is not None:
        if not credential:
            return None
        found = await auth.check_admin_credential(ctx.services.db, options.admin_token, credential)
        if found == "forbidden":
            raise _Forbidden
        if isinstance(found, AdminIdentity):
            return found.actor("api"), None
        return None
    secret = auth.cookie_secret(ctx.cookie_header())
    if secret is None:
        return None
    session = await auth.lookup_session(ctx.services.db, secret, options.admin_token)
    return (session.actor, session) if session is not None else None


async def handle_console(scope: Scope, receive: Receive, send: Send, services: Services) -> None:
    """Serve one request for the console (an ASGI HTTP scope under ``CONSOLE_PREFIXES``)."""
    ctx = _Context(scope, receive, send, services)
    try:
        response = await _serve(ctx)
    except BodyRefused as exc:
        # Answered before the rest of the body is read: the connection cannot go on.
        response = _error(ctx, exc.status, exc.error, str(exc))
        response.headers.append((b"connection", b"close"))
    except BadRequest as exc:
        response = _error(ctx, 400, "bad_request", str(exc))
    except NotFound as exc:
        response = _error(ctx, 404, "not_found", str(exc))
    except ClientDisconnected:
        return  # the client left while its body was read: no one to answer
    except UNAVAILABLE_ERRORS:
        log.warning("console: the database is unavailable", exc_info=True)
        response = _error(ctx, 503, "unavailable", "the database is unavailable; retry shortly")
    except Exception:
        # A handler's bug: logged here, answered in the console's shape with its
        # headers, and nothing of it (message, SQL, values) sent to the client.
        log.exception("console: %s %.200s failed", ctx.method, ctx.base + ctx.below)
        if ctx.started:
            raise  # a stream already under way (the tail): only the connection can end
        response = _error(ctx, 500, "internal", "the console failed to answer; see the relay's log")
    if response is not None:
        await ctx.respond(response)


def _error(ctx: _Context, status: int, error: str, message: str) -> Response:
    if ctx.base == "" or ctx.below.startswith(("api/", "static/")):
        return error_response(status, error, message)
    return _page_error(ctx, status, message)


def _page_error(ctx: _Context, status: int, message: str) -> Response:
    base = html.escape(ctx.base, quote=True)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Relay console</title><link rel="stylesheet" href="{base}static/style.css">'
        '</head><body><main class="narrow"><h1>Relay console</h1>'
        f'<p role="alert" data-testid="page-error">{html.escape(message)}</p>'
        f'<p><a href="{base}signin">Sign in</a></p></main></body></html>'
    )
    return Response(status, body.encode(), HTML)


async def _serve(ctx: _Context) -> Response | None:
    raw_path: bytes = ctx.scope.get("raw_path") or ctx.scope.get("path", "").encode()
    raw = raw_path.decode("latin-1")
    below: str | None = None
    for prefix in CONSOLE_PREFIXES:
        if raw == prefix:
            ctx.base = prefix + "/"
            return ctx.redirect("")
        if raw.startswith(prefix + "/"):
            ctx.base = prefix + "/"
            below = raw[len(prefix) + 1 :]
            break
    if below is None:
        return error_response(404, "not_found", "no console page here")
    ctx.below = below
    segments = decode_segments(below)
    query = parse_fields(ctx.scope.get("query_string", b"").decode("latin-1"), "query")

    if segments[0] == "static":
        # By the name as sent: an asset's name has no escapes, so an escaped
        # separator or dot (pages%2Fx.js, %2e%2e) names no file.
        return _static(ctx, below[len("static/") :] if below.startswith("static/") else "")
    if below == "":
        return ctx.redirect(DEFAULT_PAGE)
    if below == "signin":
        return await _signin(ctx, query)
    if below == "signout":
        return await _signout(ctx)
    if segments[0] == "api":
        return await _api(ctx, below, segments, query)
    return await _page(ctx, below, segments)


def _static(ctx: _Context, name: str) -> Response:
    if ctx.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET")
    found = static_files().get(name)
    if found is None:
        return error_response(404, "not_found", "no such file")
    content, content_type = found
    return Response(200, content, content_type)


def _method_not_allowed(*allowed: str) -> Response:
    response = error_response(405, "method_not_allowed", f"use {' or '.join(allowed)}")
    response.headers.append((b"allow", ", ".join(allowed).encode()))
    return response


async def _page(ctx: _Context, below: str, segments: list[str]) -> Response:
    found = find_page(segments)
    if found is None:
        return _page_error(ctx, 404, "There is no console page here.")
    if ctx.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET")
    try:
        authed = await authenticate(ctx)
    except _Forbidden:
        return _page_error(
            ctx, 403, "This token is not an admin's: the console is for admins only."
        )
    if authed is None:
        return ctx.redirect("signin?next=" + quote(below, safe="/"))
    actor, session = authed
    page, _params = found
    body = fill(
        "shell.html",
        {
            "csrf": session.csrf if session is not None else "",
            "page": page,
            "actor": actor.name,
            "base": ctx.base,
        },
    )
    return Response(200, body, HTML)


async def _api(
    ctx: _Context, below: str, segments: list[str], query: dict[str, str]
) -> Response | None:
    try:
        authed = await authenticate(ctx)
    except _Forbidden:
        return error_response(403, "forbidden", "this credential is not an admin's")
    if authed is None:
        response = error_response(401, "unauthorized", "sign in, or send an admin's token")
        response.headers.append((b"www-authenticate", b'Bearer realm="relay console"'))
        return response
    actor, session = authed
    allowed: list[str] = []
    chosen: tuple[Route, dict[str, str]] | None = None
    for route in ROUTES:
        params = match(route.pattern, segments)
        if params is None:
            continue
        if route.method == ctx.method:
            chosen = route, params
            break
        allowed.append(route.method)
    if chosen is None:
        if allowed:
            return _method_not_allowed(*dict.fromkeys(allowed))
        return error_response(404, "not_found", f"no console API at {below}")
    route, params = chosen
    req = ConsoleRequest(
        ctx.scope, ctx.receive, ctx.send, path=below, query=query, actor=actor,
        services=ctx.services,
    )  # fmt: skip
    req.still_admin = functools.partial(_still_admin, ctx, actor)
    if ctx.method != "GET":
        if not same_origin(ctx):
            return error_response(403, "forbidden", "a change must come from the console's origin")
        if session is not None and not await _csrf_ok(req, session.csrf):
            return error_response(403, "csrf", "the CSRF token is missing or wrong")
    return await route.handler(req, **params)


async def _still_admin(ctx: _Context, actor: Actor) -> bool:
    """Whether the request's credential is still ``actor``'s, an admin's (the
    database away counts as no: the stream ends, and its reconnection is told)."""
    try:
        authed = await authenticate(ctx)
    except _Forbidden:
        return False
    except UNAVAILABLE_ERRORS:
        return False
    return authed is not None and authed[0] == actor


async def _csrf_ok(req: ConsoleRequest, expected: str) -> bool:
    given = req.header(b"x-csrf-token")
    content_type = (req.header(b"content-type") or "").partition(";")[0].strip().lower()
    if given is None and content_type == "application/x-www-form-urlencoded":
        given = (await req.form()).get("csrf")
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


# -- sign-in and sign-out -----------------------------------------------------------


def auth_hint(credential: str) -> str:
    """What a log line may say of a credential: a relay token's public id, else nothing."""
    return mask_token(credential) if credential.startswith("relay_") else "not a relay token"


def _next_page(value: str | None) -> str:
    """Where a sign-in goes on to: a page path below the prefix, else the default page.

    ``value`` is the path as it was requested (its escapes kept: ``%`` stays);
    anything else a header or URL could not hold is escaped."""
    if value and find_page(value.split("/")) is not None:
        return quote(value, safe="/%")
    return DEFAULT_PAGE


def _signin_page(ctx: _Context, status: int, error: str, next_page: str) -> Response:
    body = fill("signin.html", {"error": error, "next": next_page, "base": ctx.base})
    return Response(status, body, HTML)


async def _signin(ctx: _Context, query: dict[str, str]) -> Response:
    if ctx.method in ("GET", "HEAD"):
        return _signin_page(ctx, 200, "", _next_page(query.get("next")))
    if ctx.method != "POST":
        return _method_not_allowed("GET", "POST")
    # No session yet, so no CSRF token: the Origin check and SameSite=Strict guard it.
    if not same_origin(ctx):
        return _page_error(ctx, 403, "A sign-in must come from the console's own page.")
    req = ConsoleRequest(
        ctx.scope, ctx.receive, ctx.send, path="signin", query=query,
        actor=Actor(None, "", "console"), services=ctx.services,
    )  # fmt: skip
    wants_json = (req.header(b"content-type") or "").startswith("application/json")
    if wants_json:
        fields = await req.json(dict[str, str])
    else:
        fields = await req.form()
    next_page = _next_page(fields.get("next"))
    credential = fields.get("token", "").strip()
    found: AdminIdentity | auth.Refused = "unknown"
    if credential:
        found = await auth.check_admin_credential(
            ctx.services.db, ctx.services.options.admin_token, credential
        )
    if not isinstance(found, AdminIdentity):
        # Never the credential itself; a relay token's public id at most.
        log.info("console: sign-in refused (%s, %s)", found, auth_hint(credential))
        status, error, message = (
            (403, "forbidden", "This token is not an admin's: the console is for admins only.")
            if found == "forbidden"
            else (401, "unauthorized", "This token is not valid (unknown, revoked or expired).")
        )
        if wants_json:
            return error_response(status, error, message)
        return _signin_page(ctx, status, message, next_page)
    secret, session = await auth.create_session(
        ctx.services.db, found, ctx.services.options.admin_token
    )
    log.info("console: %s signed in", found.name)
    cookie = (b"set-cookie", auth.session_cookie(secret, secure=ctx.secure))
    if wants_json:
        response = json_response({"actor": session.actor, "csrf": session.csrf})
        response.headers.append(cookie)
        return response
    return ctx.redirect(next_page, [cookie])


async def _signout(ctx: _Context) -> Response:
    if ctx.method != "POST":
        return _method_not_allowed("POST")
    if not same_origin(ctx):
        return _page_error(ctx, 403, "A sign-out must come from the console's own page.")
    secret = auth.cookie_secret(ctx.cookie_header())
    if secret is not None:
        session = await auth.lookup_session(
            ctx.services.db, secret, ctx.services.options.admin_token
        )
        if session is not None:
            req = ConsoleRequest(
                ctx.scope, ctx.receive, ctx.send, path="signout", query={},
                actor=session.actor, services=ctx.services,
            )  # fmt: skip
            if not await _csrf_ok(req, session.csrf):
                return _page_error(ctx, 403, "The CSRF token is missing or wrong.")
            log.info("console: %s signed out", session.actor.name)
        await auth.delete_session(ctx.services.db, secret)
    cleared = (b"set-cookie", auth.cleared_cookie(secure=ctx.secure))
    return ctx.redirect("signin", [cleared])
