"""What an interception needs from the rest of the relay, as small protocols.

The interception is handed these ports (``InterceptionPorts``) by the
request's dispatch step instead of the process's services (``Services``):
it records, counts, dumps and reaches upstreams through them, and knows
nothing of the database, the recorder's nursery or the metrics registry that
implement them (``Recorder``, ``Metrics``, ``DumpWriter``, ``UpstreamClients``).
A test can hand it plain objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from relay.dump import DumpHandle
from relay.facts import Facts
from relay.pricing.book import PriceLookup
from relay.record.events import Record
from relay.upstream.http11 import HTTP11Client

if TYPE_CHECKING:
    from relay.mcp.client import ToolResult
    from relay.mcp.tools import McpTool, ToolSet
    from relay.metrics import InterceptionTimer


class RecordSink(Protocol):
    """Takes one interception's rows; never blocks (``relay.record.recorder.Recorder``)."""

    def record(self, records: Sequence[Record]) -> None: ...


class MetricsSink(Protocol):
    """The interception's counters and timers (``relay.metrics.Metrics``)."""

    def interception_started(self, provider: str, model: str, route: str) -> InterceptionTimer: ...

    def interception_finished(
        self,
        timer: InterceptionTimer,
        *,
        status: str,
        method: str,
        initiator_id: object,
        client: str,
    ) -> None: ...

    def interception_facts(
        self,
        provider: str,
        model: str,
        initiator_id: object,
        client: str,
        facts: Facts,
        prompt: str | None,
    ) -> None: ...

    def disconnect(self, phase: str) -> None: ...

    def ttfb(self, provider: str, seconds: float) -> None: ...


class DumpSink(Protocol):
    """Starts the dump of one exchange, or None when dumps are off (``relay.dump.DumpWriter``)."""

    def begin(
        self,
        provider_name: str,
        model: str | None,
        interception_id: uuid.UUID | str,
        method: str,
        path_with_query: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        request_id: str | None = None,
    ) -> DumpHandle | None: ...


class UpstreamPool(Protocol):
    """One pooled HTTP client per provider and endpoint (``relay.upstream.clients``)."""

    def get(self, provider_name: str, base_url: str) -> HTTP11Client: ...


class McpPort(Protocol):
    """The MCP servers' tools and calls (``relay.mcp.client.McpServers``)."""

    max_rounds: int

    def snapshot(self) -> ToolSet: ...

    async def call(self, tool: McpTool, arguments: Mapping[str, Any]) -> ToolResult: ...


@dataclass(frozen=True, slots=True)
class InterceptionPorts:
    records: RecordSink
    metrics: MetricsSink
    dumps: DumpSink
    upstreams: UpstreamPool
    # The running relay's price book (relay.pricing.store.PriceCache): the
    # usage rows are priced when recorded. None: recorded unpriced.
    prices: PriceLookup | None = None
    mcp: McpPort | None = None  # None: no MCP server is configured
