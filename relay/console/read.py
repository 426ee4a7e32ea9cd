"""The console's read API: sessions, one session, one interception, spend (JSON
and CSV) and budgets. Only adapts ``relay.admin`` (the read side's SQL) to
HTTP: query parameters in, bounded and checked (400 for a bad value), JSON
out. docs/console.md ("Sessions", "Spend") describes what each answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from relay.admin import api, sessions, usage
from relay.budgets.store import BudgetDatabase, budgets_with_spend
from relay.budgets.tracker import period_start
from relay.console.http import (
    BadRequest,
    ConsoleRequest,
    NotFound,
    Response,
    Route,
    json_response,
)

#: The spend table's grouping when the query names none; the chart asks for day,<dimension>.
DEFAULT_SPEND_GROUP_BY = ("model",)


def _bad(exc: Exception) -> BadRequest:
    return BadRequest(str(exc))


async def list_sessions(req: ConsoleRequest) -> Response:
    """``GET api/sessions``: ``SessionPage`` (user, client, model, provider,
    status, since, until, limit ≤ 200, cursor)."""
    try:
        filters = sessions.parse_session_filters(req.query)
    except api.BadRequest as exc:
        raise _bad(exc) from None
    return json_response(await sessions.list_sessions(req.services.db, filters))


async def get_session(req: ConsoleRequest, key: str) -> Response:
    """``GET api/sessions/{key}``: ``SessionDetail`` (limit ≤ 500, cursor); 404
    for a key that is not one the list handed out."""
    try:
        limit = sessions.bounded_int(
            req.query, "limit", sessions.DEFAULT_DETAIL, sessions.MAX_DETAIL
        )
        cursor = req.query.get("cursor")
        after = api.decode_cursor(cursor) if cursor and len(cursor) <= 256 else None
        if cursor and after is None:
            raise api.BadRequest("cursor is not one this API handed out")
    except api.BadRequest as exc:
        raise _bad(exc) from None
    detail = await sessions.session_detail(req.services.db, key, limit=limit, after=after)
    if detail is None:
        raise NotFound("no such session")
    return json_response(detail)


async def get_interception(req: ConsoleRequest, id: str) -> Response:
    """``GET api/interceptions/{id}``: ``InterceptionDetail``; 404 for anything
    but the id of a recorded interception."""
    try:
        interception_id = uuid.UUID(id) if len(id) <= 40 else None
    except ValueError:
        interception_id = None
    if interception_id is None:
        raise NotFound("no such interception")
    detail = await sessions.interception_detail(req.services.db, interception_id)
    if detail is None:
        raise NotFound("no such interception")
    return json_response(detail)


async def _spend(query: Mapping[str, str], req: ConsoleRequest) -> usage.SpendReport:
    try:
        text = sessions.filter_text(query, "group_by")
        group_by = usage.parse_group_by(text) if text else DEFAULT_SPEND_GROUP_BY
        since = api._timestamp(query.get("since") or None, "since")
        until = api._timestamp(query.get("until") or None, "until")
        filters = {
            name: sessions.filter_text(query, name)
            for name in ("user", "provider", "model", "client")
        }
    except (api.BadRequest, ValueError) as exc:
        raise _bad(exc) from None
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be before until")
    return await usage.spend_report(
        req.services.db,
        group_by=group_by,
        now=datetime.now(UTC),
        since=since,
        until=until,
        **filters,
    )


async def spend(req: ConsoleRequest) -> Response:
    """``GET api/spend``: ``SpendReport`` (group_by: day, user, provider, model,
    client, comma-separated; user, provider, model, client, since, until)."""
    return json_response(await _spend(req.query, req))


async def spend_csv(req: ConsoleRequest) -> Response:
    """``GET api/spend.csv``: the same report as a CSV download."""
    report = await _spend(req.query, req)
    name = f"relay-spend-{report.since.date().isoformat()}.csv"
    return Response(
        200,
        usage.spend_csv(report).encode(),
        content_type="text/csv; charset=utf-8",
        headers=[(b"content-disposition", f'attachment; filename="{name}"'.encode())],
    )


class BudgetStatus(msgspec.Struct, kw_only=True):
    id: str
    name: str
    scope: str  # user, group or key
    subject: str
    subject_name: str
    model: str | None  # null: every model
    period: str  # day, week or month (UTC calendar)
    period_start: datetime
    limit_micros: int
    soft_percent: int
    spent_micros: int
    percent: float  # spent / limit * 100
    state: str  # "ok", "soft" (at or past soft_percent) or "over" (at or past the limit)


async def budget_status(db: BudgetDatabase, now: datetime) -> list[BudgetStatus]:
    """Every budget with what it has spent this period and how close that is."""
    found = []
    for budget, spent in await budgets_with_spend(db):
        limit = budget.limit_micros
        state = "over" if spent >= limit else "soft" if spent >= budget.soft_micros else "ok"
        found.append(
            BudgetStatus(
                id=budget.id,
                name=budget.name,
                scope=budget.scope,
                subject=budget.subject,
                subject_name=budget.subject_name,
                model=budget.model,
                period=budget.period,
                period_start=period_start(budget.period, now),
                limit_micros=limit,
                soft_percent=budget.soft_percent,
                spent_micros=spent,
                percent=round(spent * 100 / limit, 2),
                state=state,
            )
        )
    return found


async def budgets(req: ConsoleRequest) -> Response:
    """``GET api/budgets``: ``{"budgets": [BudgetStatus]}``."""
    return json_response({"budgets": await budget_status(req.services.db, datetime.now(UTC))})


ROUTES: list[Route] = [
    Route("GET", "api/sessions", list_sessions),
    Route("GET", "api/sessions/{key}", get_session),
    Route("GET", "api/interceptions/{id}", get_interception),
    Route("GET", "api/spend", spend),
    Route("GET", "api/spend.csv", spend_csv),
    Route("GET", "api/budgets", budgets),
]
