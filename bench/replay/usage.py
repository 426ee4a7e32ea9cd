"""Checks that the usage the relay recorded is the usage in the recorded streams.

The expected usage of a case comes from parsing its recorded response with the
relay's own sans-io decoder and accumulators; the recorded usage is the
``token_usages`` rows of interceptions that started during the replay, found
by the provider's response id (the replay upstream sends the recorded id, so
every replay of a case carries the same one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import trio

from bench.replay.cases import ReplayCase, recorded_facts, usage_tuple
from relay.db import Database

Tokens = tuple[int, int, int, int]  # input, output, cache read, cache write


@dataclass
class ExpectedUsage:
    case_id: str
    tokens: Tokens
    count: int  # successful replays of the case: one row each


@dataclass
class UsageCheck:
    checked: int = 0  # rows compared
    unchecked_cases: int = 0  # no usage or no response id in the recorded stream
    problems: list[str] = field(default_factory=list)
    tokens_expected: int = 0  # input + output over every successful replay

    @property
    def ok(self) -> bool:
        return not self.problems


def expected_usage(
    cases: list[ReplayCase], ok_counts: dict[str, int]
) -> tuple[dict[str, ExpectedUsage], UsageCheck]:
    """Expected rows by provider response id, and a check with the totals filled in."""
    expected: dict[str, ExpectedUsage] = {}
    check = UsageCheck()
    for case in cases:
        facts = recorded_facts(case)
        if facts is None:
            continue
        count = ok_counts.get(case.id, 0)
        if facts.usage is None or not facts.response_id:
            check.unchecked_cases += 1
            continue
        tokens = usage_tuple(facts.usage)
        check.tokens_expected += (tokens[0] + tokens[1]) * count
        seen = expected.get(facts.response_id)
        if seen is not None:
            if seen.tokens != tokens:
                check.problems.append(
                    f"{case.id}: same response id as {seen.case_id} with other usage"
                )
            seen.count += count
        else:
            expected[facts.response_id] = ExpectedUsage(case.id, tokens, count)
    return expected, check


async def check_recorded_usage(
    db: Database,
    expected: dict[str, ExpectedUsage],
    check: UsageCheck,
    since: datetime,
    *,
    wait: float = 15.0,
) -> UsageCheck:
    """Compare the rows; waits (up to ``wait``) for the recorder to write them all."""
    want = sum(e.count for e in expected.values())
    rows: list = []
    with trio.move_on_after(wait):
        while True:
            rows = await db.fetch(
                "SELECT tu.provider_response_id, tu.input_tokens, tu.output_tokens,"
                " tu.cache_read_tokens, tu.cache_write_tokens"
                " FROM token_usages tu JOIN interceptions i ON i.id = tu.interception_id"
                " WHERE i.started_at >= $1 AND tu.provider_response_id = ANY($2::text[])",
                since,
                list(expected),
            )
            if len(rows) >= want:
                break
            await trio.sleep(0.1)
    found: dict[str, list[Tokens]] = {}
    for row in rows:
        tokens = (row[1], row[2], row[3], row[4])
        found.setdefault(row[0], []).append(tokens)
    for response_id, exp in expected.items():
        got = found.get(response_id, [])
        check.checked += len(got)
        if len(got) != exp.count:
            check.problems.append(
                f"{exp.case_id}: {exp.count} usage row(s) expected, {len(got)} recorded"
            )
        for tokens in got:
            if tokens != exp.tokens:
                check.problems.append(
                    f"{exp.case_id}: recorded (input, output, cache read, cache write) "
                    f"{tokens}, the stream says {exp.tokens}"
                )
                break
    return check
