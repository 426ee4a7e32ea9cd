"""``python -m bench.bench_cost_hot_path``: what pricing and budgets add per interception.

Pure CPU, no server: ``records_for`` without and with the price book (one
lookup and the cost), a price lookup of a Bedrock id, and a budget check with
no budgets and with four that apply (a user's and three groups'). Each figure
is the best of five runs of 20,000 calls. See docs/cost.md.
"""

from __future__ import annotations

import timeit
import uuid
from collections.abc import Callable

from relay.budgets.tracker import Budget, BudgetTracker
from relay.facts import Facts, Usage
from relay.pricing.book import PriceBook
from relay.pricing.store import default_prices
from relay.record.events import InterceptionMeta, records_for

CALLS = 20_000


def best(fn: Callable[[], object]) -> float:
    """Microseconds per call."""
    return min(timeit.repeat(fn, number=CALLS, repeat=5)) / CALLS * 1e6


def main() -> None:
    book = PriceBook(default_prices())
    meta = InterceptionMeta(
        provider_name="anthropic",
        provider_type="anthropic",
        model="claude-sonnet-4-5-20250929",
        route="/v1/messages",
        initiator_id=uuid.uuid4(),
    )
    usage = Usage(input_tokens=25, output_tokens=12, cache_read_tokens=100, cache_write_tokens=40)
    facts = Facts(usage=usage)
    unpriced = best(lambda: records_for(meta, facts, None, "completed"))
    priced = best(lambda: records_for(meta, facts, None, "completed", prices=book))
    bedrock = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    lookup = best(lambda: book.lookup("bedrock", bedrock))
    tracker = BudgetTracker()
    none = best(lambda: tracker.check("u1", "k1", meta.model))
    budgets = [
        Budget(
            id=f"g{i}",
            name=f"g{i}",
            scope="group",
            subject=f"g{i}",
            subject_name=f"g{i}",
            model=None if i % 2 else "claude-sonnet-4-5",
            period="month",
            limit_micros=10**12,
        )
        for i in range(3)
    ]
    budgets.append(
        Budget(
            id="u",
            name="u",
            scope="user",
            subject="u1",
            subject_name="u1",
            model=None,
            period="month",
            limit_micros=10**12,
        )
    )
    tracker.configure(budgets, {f"g{i}": ["u1"] for i in range(3)})
    four = best(lambda: tracker.check("u1", "k1", meta.model))
    print(f"records_for, unpriced            {unpriced:7.2f} µs")
    print(f"records_for, priced              {priced:7.2f} µs  ({priced - unpriced:+.2f})")
    print(f"price lookup of a Bedrock id     {lookup:7.2f} µs")
    print(f"budget check, no budgets         {none:7.3f} µs")
    print(f"budget check, 4 budgets apply    {four:7.2f} µs")


if __name__ == "__main__":
    main()
