"""The live tail: each finished interception, fanned out to the console's viewers.

``TailSink`` sits in the request path's record sink chain
(``relay.services.record_sink``, beside ``RecordLogSink``): the rows go on
unchanged and, while someone watches, each finished interception becomes one
``TailEvent`` (its interception row and the token usage rows recorded with
it; no prompt, tool input or thought) handed to the ``TailHub``. Nothing is
read from the database: the tail is fed from what the relay records, never
from a poll per viewer.

The hub holds one ``Viewer`` per open tail (``GET …/admin/ui/api/tail``).
Each viewer has a bounded queue: a viewer that reads slower than events
arrive loses the oldest ones, and is told how many it missed with the next
batch it takes. Memory is ``max_viewers * queue_size`` events at most,
whatever the traffic and however slow a viewer is. Beyond ``max_viewers``
open tails a new one is refused (``TooManyViewers``: 503). The filters are
applied here, before an event is queued.

Nothing here does I/O: a viewer's ``ready`` event is a ``trio.Event`` the
stream's task waits on, set by ``publish`` (which never awaits). The tail is
per process: a viewer sees the interceptions its relay process served
(docs/console.md, "Live tail").
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from datetime import datetime

import msgspec
import trio

from relay.observe.logs import RecordSink
from relay.record.events import InterceptionRecord, Record, TokenUsageRecord

#: The statuses a finished interception can have (a filter must be one of them).
TAIL_STATUSES = ("completed", "failed", "cancelled", "refused", "interrupted")
MAX_VIEWERS = 16
QUEUE_SIZE = 256
#: Seconds of silence after which a viewer is sent a heartbeat (an SSE comment).
HEARTBEAT = 15.0
#: User names remembered for the tail's events (an id not among them is looked up once).
MAX_USER_NAMES = 4096


class TailEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What a viewer is sent about one finished interception (no prompt content)."""

    id: str
    started_at: datetime
    ended_at: datetime | None
    user_id: str | None
    provider: str
    model: str
    client: str
    status: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micros: int | None = None  # None: no usage row was priced
    duration_ms: int | None = None
    error_type: str | None = None
    user: str | None = None  # the user's name, filled in by the console


def tail_event(interception: InterceptionRecord, usages: Sequence[TokenUsageRecord]) -> TailEvent:
    """The event of one finished interception and the usage rows recorded with it."""
    costs = [u.cost_micros for u in usages if u.cost_micros is not None]
    duration = None
    if interception.ended_at is not None:
        elapsed = interception.ended_at - interception.started_at
        duration = max(0, round(elapsed.total_seconds() * 1000))
    return TailEvent(
        id=str(interception.id),
        started_at=interception.started_at,
        ended_at=interception.ended_at,
        user_id=str(interception.initiator_id) if interception.initiator_id else None,
        provider=interception.provider_name,
        model=interception.model,
        client=interception.client,
        status=interception.status,
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cache_write_tokens=sum(u.cache_write_tokens for u in usages),
        cost_micros=sum(costs) if costs else None,
        duration_ms=duration,
        error_type=interception.error_type,
    )


def finished_events(records: Sequence[Record]) -> list[TailEvent]:
    """The events of the finished interceptions among ``records``.

    The request path records one interception per call: its row, then its
    usage, prompt, tool and thought rows (``records_for``); the usage rows
    that follow an interception row are its own. A start (``in_progress``) is
    not an event.
    """
    events: list[TailEvent] = []
    current: InterceptionRecord | None = None
    usages: list[TokenUsageRecord] = []
    for row in records:
        if isinstance(row, InterceptionRecord):
            if current is not None:
                events.append(tail_event(current, usages))
            current = row if row.status != "in_progress" else None
            usages = []
        elif isinstance(row, TokenUsageRecord) and current is not None:
            usages.append(row)
    if current is not None:
        events.append(tail_event(current, usages))
    return events


class TailFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What one viewer wants to see; a field left None matches everything."""

    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    status: str | None = None
    client: str | None = None

    def matches(self, event: TailEvent) -> bool:
        return (
            (self.provider is None or event.provider == self.provider)
            and (self.model is None or event.model == self.model)
            and (self.user_id is None or event.user_id == self.user_id)
            and (self.status is None or event.status == self.status)
            and (self.client is None or event.client == self.client)
        )


class TooManyViewers(Exception):
    """Every viewer slot of this process is taken."""


class TailClosed(Exception):
    """The process is shutting down: no new tail opens."""


class Viewer:
    """One open tail: the events it has not taken yet (at most ``capacity``)."""

    def __init__(self, tail_filter: TailFilter, capacity: int) -> None:
        self.filter = tail_filter
        self._events: deque[TailEvent] = deque(maxlen=capacity)
        self._missed = 0
        self.ready = trio.Event()  # set while there is something to take

    def offer(self, event: TailEvent) -> None:
        if not self.filter.matches(event):
            return
        if len(self._events) == self._events.maxlen:
            self._missed += 1  # the oldest goes: a live tail stays live
        self._events.append(event)
        self.ready.set()

    def take(self) -> tuple[list[TailEvent], int]:
        """The queued events, oldest first, and how many were dropped before them."""
        events, missed = list(self._events), self._missed
        self._events.clear()
        self._missed = 0
        self.ready = trio.Event()
        return events, missed

    def __len__(self) -> int:
        return len(self._events)


class TailHub:
    """This process's open tails; ``publish`` hands an event to each (never awaits)."""

    def __init__(
        self,
        *,
        max_viewers: int = MAX_VIEWERS,
        queue_size: int = QUEUE_SIZE,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.max_viewers = max_viewers
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self._viewers: list[Viewer] = []
        self.user_names = UserNames()
        self.closed = False

    @property
    def watched(self) -> bool:
        return bool(self._viewers)

    def __len__(self) -> int:
        return len(self._viewers)

    def subscribe(self, tail_filter: TailFilter) -> Viewer:
        if self.closed:
            raise TailClosed("the relay is shutting down")
        if len(self._viewers) >= self.max_viewers:
            raise TooManyViewers(f"at most {self.max_viewers} live tails are open at once")
        viewer = Viewer(tail_filter, self.queue_size)
        self._viewers.append(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)

    def publish(self, event: TailEvent) -> None:
        for viewer in self._viewers:
            viewer.offer(event)

    def close(self) -> None:
        """The process is shutting down: every open tail is woken to end its stream.

        An open tail never ends by itself; left open it would hold the
        shutdown for the whole grace period. The browser reconnects (to
        another process behind the load balancer) on its own.
        """
        self.closed = True
        for viewer in self._viewers:
            viewer.ready.set()


class UserNames:
    """User ids to names, bounded (least recently used goes first).

    A user is never renamed, so an entry stays true; the console fills it
    with one query per id it has not seen.
    """

    def __init__(self, max_entries: int = MAX_USER_NAMES) -> None:
        self._names: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    def get(self, user_id: str) -> str | None:
        name = self._names.get(user_id)
        if name is not None:
            self._names.move_to_end(user_id)
        return name

    def put(self, user_id: str, name: str) -> None:
        self._names[user_id] = name
        self._names.move_to_end(user_id)
        while len(self._names) > self._max:
            self._names.popitem(last=False)

    def __len__(self) -> int:
        return len(self._names)


class TailSink:
    """The record sink, with each finished interception published to the tail on the way."""

    def __init__(self, records: RecordSink, hub: TailHub) -> None:
        self._records = records
        self._hub = hub

    def record(self, records: Sequence[Record]) -> None:
        self._records.record(records)
        if not self._hub.watched:
            return  # nobody watches: nothing is built
        for event in finished_events(records):
            self._hub.publish(event)
