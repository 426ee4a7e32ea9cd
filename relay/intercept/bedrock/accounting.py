"""What the relay learns from a Bedrock answer (sans-io): events, usage, errors.

Fed the bytes the relay received (an event stream, or InvokeModel's JSON body
and headers), it gives the Anthropic events and the ``Facts`` to record.
Usage is Bedrock's own count when Bedrock gave one (the stream's
``amazon-bedrock-invocationMetrics``, InvokeModel's
``x-amzn-bedrock-*-token-count`` headers): that is what AWS bills, cache
reads and writes included.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.facts import Facts, Usage
from relay.intercept.bedrock.stream import METRICS_KEY, AnthropicEvent, BedrockStreamTranslator
from relay.intercept.messages.accumulator import MessagesAccumulator

# InvokeModel's token counts: input, output, cache read, cache write.
_COUNT_HEADERS = (
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-cache-read-input-token-count",
    "x-amzn-bedrock-cache-write-input-token-count",
)


class BedrockAccounting:
    """What the relay learns from Bedrock's answer (sans-io): events, usage, errors."""

    def __init__(self) -> None:
        self.events = MessagesAccumulator()
        self.stream = BedrockStreamTranslator()
        self.header_usage: Usage | None = None

    def feed_stream(self, chunk: bytes) -> list[AnthropicEvent]:
        """Event-stream bytes in; the Anthropic events they completed out (accounted for)."""
        events = self.stream.feed(chunk)
        for event in events:
            self.events.feed_payload(event.data)
        return events

    def end_stream(self) -> list[AnthropicEvent]:
        events = self.stream.end()
        for event in events:
            self.events.feed_payload(event.data)
        return events

    def feed_response(self, body: bytes, headers: Mapping[str, str]) -> None:
        """A blocking answer: the Anthropic message, and Bedrock's counts from its headers."""
        self.events.feed_response(body)
        if _COUNT_HEADERS[0] not in headers:
            return
        counts = [_int(headers.get(name)) for name in _COUNT_HEADERS]
        self.header_usage = Usage(
            input_tokens=counts[0],
            output_tokens=counts[1],
            cache_read_tokens=counts[2],
            cache_write_tokens=counts[3],
            raw=dict(zip(_COUNT_HEADERS, counts, strict=True)),
        )

    def facts(self) -> Facts:
        facts = self.events.facts
        facts.usage = billed_usage(self.stream.usage() or self.header_usage, facts.usage)
        return facts


def billed_usage(bedrock: Usage | None, reported: Usage | None) -> Usage | None:
    """Bedrock's own counts when it gave them (what it bills), else the events' usage.

    The events' extra counts (1-hour cache writes, server tools) and their raw
    usage object are kept; Bedrock's figures are added under its own key.
    """
    if bedrock is None:
        return reported
    if reported is None:
        return bedrock
    bedrock.extra = {**reported.extra, **bedrock.extra}
    bedrock.raw = {**reported.raw, METRICS_KEY: bedrock.raw}
    return bedrock


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
