"""``relay usage`` and ``GET …/admin/usage``: requests, tokens, tool calls and
cost, grouped by any of day, user, provider, model and client, with totals.

Cost is the sum of the ``cost_micros`` the recorder stored on each usage row
(docs/cost.md); rows recorded without a price are counted in
``unpriced``, never summed as $0.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from relay.admin import ReadDatabase, Where
from relay.pricing.book import format_dollars

#: What a report can be grouped by, and the SQL of each.
DIMENSIONS: dict[str, str] = {
    "day": "(s.started_at AT TIME ZONE 'UTC')::date",
    "user": "coalesce(u.name, s.initiator_id::text, '-')",
    "provider": "s.provider_name",
    "model": "s.model",
    "client": "s.client",
}
DEFAULT_GROUP_BY = ("day", "user", "provider", "model")


class UsageRow(msgspec.Struct, kw_only=True):
    """One group; the dimensions it is not grouped by are None."""

    day: date | None = None  # UTC day the interceptions started
    user: str | None = None  # users.name; the user id if the user is gone; "-" if none
    provider: str | None = None
    model: str | None = None  # the model recorded (the upstream's answer, else the request's)
    requests: int
    input_tokens: int  # not read from cache
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    tool_calls: int
    client: str | None = None
    cost_micros: int = 0  # the priced usage rows' cost, micro-dollars
    unpriced: int = 0  # usage rows recorded without a price (not in cost_micros)


class UsageTotals(msgspec.Struct, kw_only=True):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    tool_calls: int = 0
    cost_micros: int = 0
    unpriced: int = 0


class UsageReport(msgspec.Struct, kw_only=True):
    group_by: list[str]
    rows: list[UsageRow]
    totals: UsageTotals


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``"user,model"`` → ``("user", "model")``; ValueError names what is unknown."""
    if text is None or not text.strip():
        return DEFAULT_GROUP_BY
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(
            f"cannot group by {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}"
        )
    return names


# Each of requests, usage and tool calls is summed per group on its own, then
# the three are joined on the group: an interception with two tool calls never
# counts its tokens twice, and no per-interception aggregate is built (the
# join of a week's interceptions to their usage rows is hashed once). A child
# row is written when its interception ends, so it is never older than the
# start: with ``since``, the children are also read by their BRIN index on
# created_at (only the period's pages), never by a scan of the whole table.
_SQL = """
WITH selected AS (
    SELECT s.id, {keys}
    FROM interceptions s
    LEFT JOIN users u ON u.id = s.initiator_id
    WHERE {where}
), requests AS (
    SELECT {group_keys} count(*) AS requests FROM selected s {group}
), tokens AS (
    SELECT {group_keys}
           sum(t.input_tokens) AS input_tokens,
           sum(t.output_tokens) AS output_tokens,
           sum(t.cache_read_tokens) AS cache_read_tokens,
           sum(t.cache_write_tokens) AS cache_write_tokens,
           sum(t.cost_micros) AS cost_micros,
           count(*) FILTER (WHERE t.cost_micros IS NULL) AS unpriced
    FROM token_usages t JOIN selected s ON s.id = t.interception_id
    WHERE {tokens_since}
    {group}
), tools AS (
    SELECT {group_keys} count(*) AS tool_calls
    FROM tool_usages tu JOIN selected s ON s.id = tu.interception_id
    WHERE {tools_since}
    {group}
)
SELECT {dimensions}
       r.requests,
       coalesce(tk.input_tokens, 0)::bigint AS input_tokens,
       coalesce(tk.output_tokens, 0)::bigint AS output_tokens,
       coalesce(tk.cache_read_tokens, 0)::bigint AS cache_read_tokens,
       coalesce(tk.cache_write_tokens, 0)::bigint AS cache_write_tokens,
       coalesce(tl.tool_calls, 0)::bigint AS tool_calls,
       coalesce(tk.cost_micros, 0)::bigint AS cost_micros,
       coalesce(tk.unpriced, 0)::bigint AS unpriced
FROM requests r
LEFT JOIN tokens tk ON {on_tokens}
LEFT JOIN tools tl ON {on_tools}
{order}
"""


def usage_sql(
    group_by: Sequence[str],
    *,
    user: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    client: str | None = None,
) -> tuple[str, list[Any]]:
    """The report's query for ``group_by`` (names checked against ``DIMENSIONS``)
    and its parameters: a condition for each filter given, none for the others."""
    for name in group_by:
        if name not in DIMENSIONS:
            raise ValueError(f"cannot group by {name!r}")
    where = Where()
    if user is not None:
        where.add("(u.name = {0} OR s.initiator_id::text = {0})", user)
    if provider is not None:
        where.add("s.provider_name = {}", provider)
    if since is not None:
        where.add("s.started_at >= {}", since)
    if until is not None:
        where.add("s.started_at < {}", until)
    if model is not None:
        where.add("s.model = {}", model)
    if client is not None:
        where.add("s.client = {}", client)
    since_param = where.param(since) if since is not None else None
    keys = [f"k{n}" for n in range(len(group_by))]
    # In ``selected`` the dimensions' SQL reads interceptions as s and users as u.
    selected_keys = "".join(
        f", {DIMENSIONS[name]} AS {key}" for name, key in zip(group_by, keys, strict=True)
    )
    group_keys = "".join(f"s.{key}, " for key in keys)
    group = f"GROUP BY {', '.join(f's.{key}' for key in keys)}" if keys else ""

    def on(alias: str) -> str:
        return " AND ".join(f"{alias}.{key} = r.{key}" for key in keys) or "true"

    dimensions = "".join(
        f"r.{key} AS {_column(name)}, " for name, key in zip(group_by, keys, strict=True)
    )
    order = f"ORDER BY {', '.join(f'r.{key}' for key in keys)}" if keys else ""
    sql = _SQL.format(
        where=where.sql(),
        tokens_since=f"t.created_at >= {since_param}" if since_param else "true",
        tools_since=f"tu.created_at >= {since_param}" if since_param else "true",
        keys=selected_keys.removeprefix(", ") or "1 AS k",
        group_keys=group_keys,
        group=group,
        dimensions=dimensions,
        on_tokens=on("tk"),
        on_tools=on("tl"),
        order=order,
    )
    return sql, where.params


def _column(name: str) -> str:
    return '"user"' if name == "user" else name


async def usage_report(
    db: ReadDatabase,
    user: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    model: str | None = None,
    client: str | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
) -> list[UsageRow]:
    """Usage per group, in the order of ``group_by`` (oldest day first).

    ``user`` is a user name or id; ``since``/``until`` bound the interceptions'
    start (``until`` excluded). Without ``group_by`` there is one row of totals
    (none when nothing matches).
    """
    sql, params = usage_sql(
        group_by,
        user=user,
        provider=provider,
        since=since,
        until=until,
        model=model,
        client=client,
    )
    rows = await db.fetch(sql, *params)
    report = [UsageRow(**dict(row)) for row in rows]
    if not group_by and report and report[0].requests == 0:
        return []
    return report


def totals(rows: Sequence[UsageRow]) -> UsageTotals:
    total = UsageTotals()
    for row in rows:
        for field in UsageTotals.__struct_fields__:
            setattr(total, field, getattr(total, field) + getattr(row, field))
    return total


_COUNT_HEADINGS = (
    ("requests", "requests"),
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache read", "cache_read_tokens"),
    ("cache write", "cache_write_tokens"),
    ("tool calls", "tool_calls"),
)


def format_usage_table(rows: Sequence[UsageRow], group_by: Sequence[str] = DEFAULT_GROUP_BY) -> str:
    """A plain-text table with a total line, for the terminal. Cost in US dollars."""
    if not rows:
        return "No recorded usage matches.\n"
    headings = [*group_by, *(h for h, _ in _COUNT_HEADINGS), "cost $", "unpriced"]
    numeric_from = len(group_by)
    table = [headings]
    for row in rows:
        cells = [_cell(getattr(row, name)) for name in group_by]
        table.append([*cells, *_numbers(row)])
    if group_by:  # without groups the one row is the total
        table.append(["total", *[""] * (numeric_from - 1), *_numbers(totals(rows))])
    widths = [max(len(line[i]) for line in table) for i in range(len(headings))]

    def render(line: list[str]) -> str:
        cells = [
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = table[1:-1] if group_by else table[1:]
    lines = [render(table[0]), rule, *(render(line) for line in body)]
    if group_by:
        lines += [rule, render(table[-1])]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _numbers(row: UsageRow | UsageTotals) -> list[str]:
    return [
        *(f"{getattr(row, field):,}" for _, field in _COUNT_HEADINGS),
        format_dollars(row.cost_micros),
        f"{row.unpriced:,}",
    ]


# --- the console's Spend page (docs/console.md, "Spend") ----------------------------------

#: Without ``since``, a spend report covers this many days, today included.
DEFAULT_SPEND_DAYS = 7


class SpendReport(msgspec.Struct, kw_only=True):
    group_by: list[str]
    since: datetime  # the period, [since, until): the default is the last DEFAULT_SPEND_DAYS days
    until: datetime | None
    rows: list[UsageRow]
    totals: UsageTotals


def default_since(now: datetime) -> datetime:
    """Midnight (UTC) DEFAULT_SPEND_DAYS - 1 days before ``now``'s day."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=DEFAULT_SPEND_DAYS - 1)


async def spend_report(
    db: ReadDatabase,
    *,
    group_by: Sequence[str],
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    client: str | None = None,
) -> SpendReport:
    """``usage_report`` over a bounded period (``since`` defaults to the last
    DEFAULT_SPEND_DAYS days), with its totals."""
    start = since if since is not None else default_since(now)
    rows = await usage_report(
        db, user, provider, start, until, model=model, client=client, group_by=group_by
    )
    return SpendReport(
        group_by=list(group_by), since=start, until=until, rows=rows, totals=totals(rows)
    )


#: A spreadsheet runs a cell that starts with one of these as a formula
#: (OWASP "CSV injection"): such a text cell gets a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def spend_csv(report: SpendReport) -> str:
    """The report as CSV (RFC 4180 quoting, CRLF lines): a header, one line per
    group, a total line. Cost in US dollars (exact: micro-dollars / 10^6)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    counts = [field for _, field in _COUNT_HEADINGS]
    writer.writerow([*report.group_by, *counts, "cost_usd", "unpriced"])
    for row in report.rows:
        writer.writerow(
            [
                *(csv_cell(getattr(row, n)) for n in report.group_by),
                *(getattr(row, f) for f in counts),
                _usd(row.cost_micros),
                row.unpriced,
            ]
        )
    t = report.totals
    label = ["total", *[""] * (len(report.group_by) - 1)] if report.group_by else []
    writer.writerow([*label, *(getattr(t, f) for f in counts), _usd(t.cost_micros), t.unpriced])
    return out.getvalue()


def _usd(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
