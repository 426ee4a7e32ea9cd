"""``relay usage``: tokens, requests and tool calls per day, user, provider and model."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import msgspec

from relay.admin import ReadDatabase


class UsageRow(msgspec.Struct, kw_only=True):
    day: date  # UTC day the interceptions started
    user: str  # users.name; the user id if the user is gone; "-" if none
    provider: str
    model: str  # the model the client asked for
    requests: int
    input_tokens: int  # not read from cache
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    tool_calls: int


# Children are summed per interception before the join, so that an
# interception with two tool calls does not count its tokens twice.
USAGE_SQL = """
WITH selected AS (
    SELECT i.id, i.initiator_id, i.provider_name, i.model, i.started_at
    FROM interceptions i
    LEFT JOIN users u ON u.id = i.initiator_id
    WHERE ($1::text IS NULL OR u.name = $1 OR i.initiator_id::text = $1)
      AND ($2::text IS NULL OR i.provider_name = $2)
      AND ($3::timestamptz IS NULL OR i.started_at >= $3)
      AND ($4::timestamptz IS NULL OR i.started_at < $4)
), tokens AS (
    SELECT t.interception_id,
           sum(t.input_tokens) AS input_tokens,
           sum(t.output_tokens) AS output_tokens,
           sum(t.cache_read_tokens) AS cache_read_tokens,
           sum(t.cache_write_tokens) AS cache_write_tokens
    FROM token_usages t JOIN selected s ON s.id = t.interception_id
    GROUP BY t.interception_id
), tools AS (
    SELECT tu.interception_id, count(*) AS tool_calls
    FROM tool_usages tu JOIN selected s ON s.id = tu.interception_id
    GROUP BY tu.interception_id
)
SELECT (s.started_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(u.name, s.initiator_id::text, '-') AS user,
       s.provider_name AS provider,
       s.model,
       count(*) AS requests,
       coalesce(sum(tk.input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(tk.output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(tk.cache_read_tokens), 0)::bigint AS cache_read_tokens,
       coalesce(sum(tk.cache_write_tokens), 0)::bigint AS cache_write_tokens,
       coalesce(sum(tl.tool_calls), 0)::bigint AS tool_calls
FROM selected s
LEFT JOIN users u ON u.id = s.initiator_id
LEFT JOIN tokens tk ON tk.interception_id = s.id
LEFT JOIN tools tl ON tl.interception_id = s.id
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""


async def usage_report(
    db: ReadDatabase,
    user: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UsageRow]:
    """Usage per UTC day, user, provider and model, oldest day first.

    ``user`` is a user name or id; ``since``/``until`` bound the interceptions'
    start (``until`` excluded).
    """
    rows = await db.fetch(USAGE_SQL, user, provider, since, until)
    return [UsageRow(**dict(row)) for row in rows]


_HEADINGS = (
    "day",
    "user",
    "provider",
    "model",
    "requests",
    "input",
    "output",
    "cache read",
    "cache write",
    "tool calls",
)
_NUMERIC_FROM = 4  # columns from here on are right-aligned numbers


def format_usage_table(rows: Sequence[UsageRow]) -> str:
    """A plain-text table with a total line, for the terminal."""
    if not rows:
        return "No recorded usage matches.\n"
    table = [list(_HEADINGS)]
    for row in rows:
        table.append([row.day.isoformat(), row.user, row.provider, row.model, *_numbers(row)])
    totals = [0] * 6
    for row in rows:
        totals = [a + b for a, b in zip(totals, _counts(row), strict=True)]
    table.append(["total", "", "", "", *(f"{n:,}" for n in totals)])
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADINGS))]

    def render(line: list[str]) -> str:
        cells = [
            cell.rjust(width) if i >= _NUMERIC_FROM else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [render(table[0]), rule, *(render(line) for line in table[1:-1]), rule]
    lines.append(render(table[-1]))
    return "\n".join(lines) + "\n"


def _counts(row: UsageRow) -> list[int]:
    return [
        row.requests,
        row.input_tokens,
        row.output_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.tool_calls,
    ]


def _numbers(row: UsageRow) -> list[str]:
    return [f"{n:,}" for n in _counts(row)]
