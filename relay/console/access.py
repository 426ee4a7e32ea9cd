"""The console's access changes: users and the admin role, groups, tokens, budgets.

Through ``relay.auth`` and ``relay.budgets.store``, as the CLI's ``users``,
``tokens``, ``groups`` and ``budgets`` commands do. A new token is in the
answer to its creation only (its hash is what is stored); a revoked one is
refused by every relay process within a second (the ``api_keys`` trigger).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from relay import auth
from relay.budgets import store as budgets
from relay.console.changes import TOKEN_ID_RE, Name, Short, audit_change, refused
from relay.console.http import BadRequest, ConsoleRequest, Response, Route, json_response
from relay.errors import CommandError
from relay.options import parse_duration
from relay.pricing.book import format_dollars, parse_dollars

_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_BUDGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}$")


# --- users and the admin role -------------------------------------------------------------


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    admin: bool = False


class AdminRole(msgspec.Struct, forbid_unknown_fields=True):
    admin: bool


async def list_users(req: ConsoleRequest) -> Response:
    rows = await req.services.db.fetch(
        "SELECT u.id::text AS id, u.name, u.created_at, u.is_admin, "
        "  count(k.id) FILTER (WHERE k.revoked_at IS NULL "
        "    AND (k.expires_at IS NULL OR k.expires_at > now())) AS active_tokens "
        "FROM users u LEFT JOIN api_keys k ON k.user_id = u.id "
        "GROUP BY u.id ORDER BY u.name"
    )
    return json_response({"users": [dict(r) for r in rows]})


async def create_user(req: ConsoleRequest) -> Response:
    body = await req.json(UserCreate)
    try:
        user = await auth.create_user(req.services.db, body.name, admin=body.admin)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "user.create", user.name, {"id": user.id, "admin": user.is_admin})
    return json_response({"user": user}, 201)


async def set_admin(req: ConsoleRequest, name: str) -> Response:
    body = await req.json(AdminRole)
    if not body.admin and req.actor.name == name and req.actor.user_id is not None:
        # Taking one's own role ends one's own session at once: refuse the foot-gun.
        raise BadRequest("you cannot revoke your own admin role here (use the CLI)")
    try:
        user, changed = await auth.set_admin(req.services.db, name, body.admin)
    except CommandError as exc:
        return refused(exc)
    if changed:
        await audit_change(req, "user.admin", name, {"id": user.id, "admin": body.admin})
    return json_response({"user": user, "changed": changed})


# --- groups -------------------------------------------------------------------------------


class GroupCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class Member(msgspec.Struct, forbid_unknown_fields=True):
    user: Name


def _group_name(name: str) -> str:
    if not _GROUP_NAME_RE.match(name):
        raise BadRequest("group name: use letters, digits and . _ @ + - (at most 128, no spaces)")
    return name


async def list_groups(req: ConsoleRequest) -> Response:
    groups = await budgets.list_groups(req.services.db)
    return json_response({"groups": [{"name": n, "members": m} for n, m in groups]})


async def create_group(req: ConsoleRequest) -> Response:
    body = await req.json(GroupCreate)
    name = _group_name(body.name)
    try:
        await budgets.create_group(req.services.db, name)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "group.create", name, {})
    return json_response({"group": {"name": name, "members": []}}, 201)


def _membership(add: bool) -> Callable[[ConsoleRequest, str], Awaitable[Response]]:
    """The handler that adds a user to a group (``add``) or takes one out."""
    change = budgets.add_member if add else budgets.remove_member
    action = "group.add" if add else "group.remove"

    async def handler(req: ConsoleRequest, name: str) -> Response:
        body = await req.json(Member)
        try:
            changed = await change(req.services.db, name, body.user)
        except CommandError as exc:
            return refused(exc)
        if changed:
            await audit_change(req, action, name, {"user": body.user})
        return json_response({"group": name, "user": body.user, "changed": changed})

    return handler


add_member = _membership(True)
remove_member = _membership(False)


async def remove_group(req: ConsoleRequest, name: str) -> Response:
    try:
        await budgets.delete_group(req.services.db, name)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "group.delete", name, {})
    return json_response({"removed": name})


# --- tokens -------------------------------------------------------------------------------


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    user: Name
    expires: Annotated[str, msgspec.Meta(max_length=32)] | None = None  # e.g. "30d"; None: never


def _token_view(row: auth.ApiKeyRow, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": row.user_name,
        "user_id": row.user_id,
        "status": row.status(now),
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
    }


async def list_tokens(req: ConsoleRequest) -> Response:
    user = req.query.get("user") or None
    if user is not None and len(user) > 128:
        raise BadRequest("user: at most 128 characters")
    rows = await auth.list_tokens(req.services.db, user)
    now = datetime.now(UTC)
    return json_response({"tokens": [_token_view(r, now) for r in rows]})


async def create_token(req: ConsoleRequest) -> Response:
    body = await req.json(TokenCreate)
    expires_in = None
    if body.expires:
        try:
            expires_in = parse_duration(body.expires.strip())
        except ValueError as exc:
            raise BadRequest(f"expires: {exc}") from None
        if not 0 < expires_in <= 10 * 365 * 86400:
            raise BadRequest("expires: from a second to ten years")
    try:
        token, row = await auth.create_token(req.services.db, body.user, expires_in)
    except CommandError as exc:
        return refused(exc)
    await audit_change(
        req, "token.create", row.id, {"user": row.user_name, "expires_at": row.expires_at}
    )
    # The one time the token is sent: only its hash is kept.
    view = _token_view(row, datetime.now(UTC))
    return json_response({"token": token, "shown_once": True, **view}, 201)


async def revoke_token(req: ConsoleRequest, id: str) -> Response:
    if not TOKEN_ID_RE.match(id):
        raise BadRequest("a token id is 12 hexadecimal digits (see the tokens list)")
    try:
        row = await auth.revoke_token(req.services.db, id)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "token.revoke", row.id, {"user": row.user_name})
    return json_response({"token": _token_view(row, datetime.now(UTC))})


# --- budgets ------------------------------------------------------------------------------


class BudgetSet(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    limit: Annotated[str, msgspec.Meta(max_length=32)]  # dollars, e.g. "250" or "12.50"
    period: Annotated[str, msgspec.Meta(max_length=16)] = "month"
    user: Name | None = None
    group: Name | None = None
    token: Annotated[str, msgspec.Meta(max_length=12)] | None = None
    model: Short | None = None
    soft_percent: int = 80


async def set_budget(req: ConsoleRequest) -> Response:
    body = await req.json(BudgetSet)
    if not _BUDGET_NAME_RE.match(body.name):
        raise BadRequest("budget name: use letters, digits and . _ @ + : - (at most 128)")
    try:
        limit = parse_dollars(body.limit)
    except ValueError as exc:
        raise BadRequest(f"limit: {exc}") from None
    if limit > 10**15:
        raise BadRequest("limit: at most $1,000,000,000")
    if body.token is not None and not TOKEN_ID_RE.match(body.token):
        raise BadRequest("token: a token id is 12 hexadecimal digits")
    model = body.model.strip() if body.model else None
    try:
        await budgets.set_budget(
            req.services.db,
            body.name,
            user=body.user,
            group=body.group,
            api_key_id=body.token,
            limit_micros=limit,
            period=body.period,
            model=model or None,
            soft_percent=body.soft_percent,
        )
    except CommandError as exc:
        return refused(exc)
    subject = {"user": body.user, "group": body.group, "token": body.token}
    detail: dict[str, Any] = {k: v for k, v in subject.items() if v is not None}
    detail.update(
        limit=format_dollars(limit), period=body.period, model=model, soft_percent=body.soft_percent
    )
    await audit_change(req, "budget.set", body.name, detail)
    return json_response({"budget": {"name": body.name, "limit_micros": limit, **detail}})


async def remove_budget(req: ConsoleRequest, name: str) -> Response:
    try:
        await budgets.remove_budget(req.services.db, name)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "budget.remove", name, {})
    return json_response({"removed": name})


ROUTES: list[Route] = [
    Route("GET", "api/users", list_users),
    Route("POST", "api/users", create_user),
    Route("POST", "api/users/{name}/admin", set_admin),
    Route("GET", "api/groups", list_groups),
    Route("POST", "api/groups", create_group),
    Route("POST", "api/groups/{name}/members", add_member),
    Route("POST", "api/groups/{name}/members/remove", remove_member),
    Route("POST", "api/groups/{name}/remove", remove_group),
    Route("GET", "api/tokens", list_tokens),
    Route("POST", "api/tokens", create_token),
    Route("POST", "api/tokens/{id}/revoke", revoke_token),
    Route("POST", "api/budgets", set_budget),
    Route("POST", "api/budgets/{name}/remove", remove_budget),
]
