"""The admin HTTP API: recorded interceptions with their usage, prompt, tool
calls and thoughts, filtered and keyset-paginated; and the usage and cost
report. The base for dashboards.

``GET /api/v2/ai-gateway/admin/usage``: ``relay usage`` as JSON
(``UsageReport``: rows and totals, cost in micro-dollars), with ``group_by``
(comma-separated: day, user, provider, model, client; default
day,user,provider,model), ``user``, ``provider``, ``model``, ``client``,
``since``, ``until``.

``GET /api/v2/ai-gateway/admin/interceptions`` (also under ``/api/v2/aibridge``)
with ``Authorization: Bearer <ADMIN_TOKEN>``, or the relay token of an admin
user (``users.is_admin``, checked by the ``check_user`` the caller passes:
403 for a valid token of a user who is not an admin). Query parameters, all optional:
``user`` (name or id), ``provider``, ``model``, ``since``, ``until`` (RFC 3339;
``until`` excluded), ``limit`` (1 to 1000, default 50) and ``cursor`` (the
``next_cursor`` of the previous page). Newest first.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec

from relay.admin import ReadDatabase, Where
from relay.admin.usage import UsageReport, parse_group_by, totals, usage_report

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ADMIN_PREFIXES = ("/api/v2/ai-gateway/admin/", "/api/v2/aibridge/admin/")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class TokenUsage(msgspec.Struct):
    id: uuid.UUID
    provider_response_id: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    extra: msgspec.Raw
    raw: msgspec.Raw
    created_at: datetime
    price_model: str | None = None  # the price book entry; null: unpriced
    cost_micros: int | None = None  # micro-dollars, computed when recorded


class ToolUsage(msgspec.Struct):
    id: uuid.UUID
    provider_response_id: str | None
    tool_call_id: str
    name: str
    input: str
    injected: bool
    invocation_error: str | None
    created_at: datetime


class Interception(msgspec.Struct):
    id: uuid.UUID
    initiator_id: uuid.UUID | None
    initiator_name: str | None
    api_key_id: str | None
    provider_name: str
    provider_type: str
    model: str
    route: str
    started_at: datetime
    ended_at: datetime | None  # null while in_progress
    status: str
    error_type: str | None
    error_message: str | None
    client: str
    client_session_id: str | None
    user_agent: str | None
    credential_kind: str
    credential_hint: str | None
    prompt: str | None = None
    prompt_truncated: bool = False  # the stored prompt is cut (MAX_STORED_PROMPT)
    prompt_original_bytes: int | None = None  # UTF-8 size of the whole prompt
    token_usages: list[TokenUsage] = msgspec.field(default_factory=list)
    tool_usages: list[ToolUsage] = msgspec.field(default_factory=list)
    thoughts: list[str] = msgspec.field(default_factory=list)


class InterceptionPage(msgspec.Struct):
    interceptions: list[Interception]
    next_cursor: str | None


class Filters(msgspec.Struct, kw_only=True):
    user: str | None = None
    provider: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[datetime, uuid.UUID] | None = None  # decoded cursor


class BadRequest(ValueError):
    pass


# Only the filters given become conditions (relay.admin.Where: a generic plan of
# "$n IS NULL OR ..." cannot use an index, and PostgreSQL switches a prepared
# statement to its generic plan after five runs on a connection).
_PAGE_SQL = """
SELECT i.id, i.initiator_id, u.name AS initiator_name, i.api_key_id, i.provider_name,
       i.provider_type, i.model, i.route, i.started_at, i.ended_at, i.status,
       i.error_type, i.error_message, i.client, i.client_session_id, i.user_agent,
       i.credential_kind, i.credential_hint
FROM interceptions i
LEFT JOIN users u ON u.id = i.initiator_id
WHERE {where}
ORDER BY i.started_at DESC, i.id DESC
LIMIT {limit}
"""
_TOKENS_SQL = """
SELECT interception_id, id, provider_response_id, input_tokens, output_tokens,
       cache_read_tokens, cache_write_tokens, extra::text AS extra, raw::text AS raw, created_at,
       price_model, cost_micros
FROM token_usages WHERE interception_id = ANY($1::uuid[]) ORDER BY created_at, id
"""
_TOOLS_SQL = """
SELECT interception_id, id, provider_response_id, tool_call_id, name, input, injected,
       invocation_error, created_at
FROM tool_usages WHERE interception_id = ANY($1::uuid[]) ORDER BY created_at, id
"""
_PROMPTS_SQL = """
SELECT interception_id, prompt, truncated, original_bytes FROM user_prompts
WHERE interception_id = ANY($1::uuid[]) ORDER BY created_at, id
"""
_THOUGHTS_SQL = """
SELECT interception_id, content FROM model_thoughts
WHERE interception_id = ANY($1::uuid[]) ORDER BY created_at, id
"""


async def list_interceptions(db: ReadDatabase, filters: Filters) -> InterceptionPage:
    where = Where()
    if filters.user is not None:
        where.add("(u.name = {0} OR i.initiator_id::text = {0})", filters.user)
    if filters.provider is not None:
        where.add("i.provider_name = {}", filters.provider)
    if filters.model is not None:
        where.add("i.model = {}", filters.model)
    if filters.since is not None:
        where.add("i.started_at >= {}", filters.since)
    if filters.until is not None:
        where.add("i.started_at < {}", filters.until)
    if filters.after is not None:
        where.add("(i.started_at, i.id) < ({}, {})", *filters.after)
    limit = where.param(filters.limit + 1)
    rows = await db.fetch(_PAGE_SQL.format(where=where.sql(), limit=limit), *where.params)
    more = len(rows) > filters.limit
    interceptions = [Interception(**dict(row)) for row in rows[: filters.limit]]
    await attach_details(db, interceptions)
    cursor = None
    if more and interceptions:
        last = interceptions[-1]
        cursor = encode_cursor(last.started_at, last.id)
    return InterceptionPage(interceptions, cursor)


async def attach_details(db: ReadDatabase, interceptions: list[Interception]) -> None:
    """Fill in each interception's usage, tool calls, prompt and thoughts (four
    queries, each by the child table's ``interception_id`` index)."""
    by_id = {i.id: i for i in interceptions}
    if not by_id:
        return
    ids = list(by_id)
    for row in await db.fetch(_TOKENS_SQL, ids):
        fields = dict(row)
        owner = by_id[fields.pop("interception_id")]
        fields["extra"] = msgspec.Raw(fields["extra"].encode())
        fields["raw"] = msgspec.Raw(fields["raw"].encode())
        owner.token_usages.append(TokenUsage(**fields))
    for row in await db.fetch(_TOOLS_SQL, ids):
        fields = dict(row)
        by_id[fields.pop("interception_id")].tool_usages.append(ToolUsage(**fields))
    for row in await db.fetch(_PROMPTS_SQL, ids):
        owner = by_id[row["interception_id"]]
        owner.prompt = row["prompt"]
        owner.prompt_truncated = row["truncated"]
        owner.prompt_original_bytes = row["original_bytes"]
    for row in await db.fetch(_THOUGHTS_SQL, ids):
        by_id[row["interception_id"]].thoughts.append(row["content"])


def encode_cursor(started_at: datetime, interception_id: uuid.UUID) -> str:
    raw = msgspec.json.encode((started_at, interception_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        started_at, interception_id = msgspec.json.decode(raw, type=tuple[datetime, uuid.UUID])
        return _in_utc(started_at), interception_id
    except (ValueError, OverflowError, msgspec.DecodeError) as exc:
        raise BadRequest("cursor is not one this API handed out") from exc


def parse_filters(query_string: bytes) -> Filters:
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=False)

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    limit_text = one("limit")
    try:
        limit = int(limit_text) if limit_text is not None else DEFAULT_LIMIT
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    cursor = one("cursor")
    return Filters(
        user=_text(one("user"), "user"),
        provider=_text(one("provider"), "provider"),
        model=_text(one("model"), "model"),
        since=_timestamp(one("since"), "since"),
        until=_timestamp(one("until"), "until"),
        limit=limit,
        after=decode_cursor(cursor) if cursor else None,
    )


def _timestamp(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name} must be an RFC 3339 timestamp, e.g. 2025-01-31T00:00:00Z"
        ) from None
    try:
        return _in_utc(value if value.tzinfo else value.replace(tzinfo=UTC))
    except OverflowError:
        raise BadRequest(f"{name} is out of range once converted to UTC") from None


def _in_utc(value: datetime) -> datetime:
    """``value`` in UTC; OverflowError when that leaves years 1 to 9999
    (``0001-01-01T00:00:00+14:00``), which the database driver cannot send.
    A naive value (a cursor never holds one) is taken as UTC."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _text(value: str | None, name: str) -> str | None:
    # PostgreSQL text cannot hold NUL: such a filter can match nothing, and
    # sending it fails the query.
    if value is not None and "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")
    return value


#: Whether a bearer credential (not ADMIN_TOKEN) is an admin user's relay token:
#: True, False (a valid token, not an admin's), or None (no such token).
UserCheck = Callable[[str], Awaitable[bool | None]]


def bearer_credential(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, given = text.partition(" ")
            return given.strip() if scheme.lower() == "bearer" else None
    return None


def authorized(scope: Scope, admin_token: str) -> bool:
    if not admin_token:
        return False  # no token configured: ADMIN_TOKEN opens nothing
    given = bearer_credential(scope)
    return given is not None and hmac.compare_digest(given.encode(), admin_token.encode())


async def handle_admin(
    scope: Scope,
    receive: Receive,
    send: Send,
    db: ReadDatabase,
    admin_token: str,
    check_user: UserCheck | None = None,
) -> None:
    """Serve one admin request (an ASGI HTTP scope under ``ADMIN_PREFIXES``)."""
    path: str = scope.get("path", "")
    resource = next((path[len(p) :] for p in ADMIN_PREFIXES if path.startswith(p)), None)
    if not authorized(scope, admin_token):
        given = bearer_credential(scope)
        is_admin = await check_user(given) if check_user is not None and given else None
        if is_admin is False:
            await _send_json(
                send, 403, {"error": "forbidden", "message": "this token is not an admin's"}
            )
            return
        if is_admin is None:
            await _send_json(
                send,
                401,
                {"error": "unauthorized", "message": "an admin's token required"},
                bearer=True,
            )
            return
    if resource not in ("interceptions", "usage"):
        await _send_json(send, 404, {"error": "not_found", "message": f"no admin API at {path}"})
        return
    if scope.get("method") != "GET":
        await _send_json(send, 405, {"error": "method_not_allowed", "message": "use GET"})
        return
    try:
        if resource == "usage":
            report = await usage_from_query(db, scope.get("query_string", b""))
            await _send_json(send, 200, report)
            return
        filters = parse_filters(scope.get("query_string", b""))
    except BadRequest as exc:
        await _send_json(send, 400, {"error": "bad_request", "message": str(exc)})
        return
    page = await list_interceptions(db, filters)
    await _send_json(send, 200, page)


async def usage_from_query(db: ReadDatabase, query_string: bytes) -> UsageReport:
    """The usage report a ``GET …/admin/usage`` asks for (BadRequest for bad parameters)."""
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=False)

    def one(name: str) -> str | None:
        values = query.get(name)
        return _text(values[-1], name) if values else None

    try:
        group_by = parse_group_by(one("group_by"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    rows = await usage_report(
        db,
        user=one("user"),
        provider=one("provider"),
        since=_timestamp(one("since"), "since"),
        until=_timestamp(one("until"), "until"),
        model=one("model"),
        client=one("client"),
        group_by=group_by,
    )
    return UsageReport(group_by=list(group_by), rows=rows, totals=totals(rows))


async def _send_json(send: Send, status: int, body: object, *, bearer: bool = False) -> None:
    payload = msgspec.json.encode(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="relay admin"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
