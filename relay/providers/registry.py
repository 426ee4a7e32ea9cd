"""The providers a running relay uses, kept current through LISTEN/NOTIFY.

Triggers on the configuration tables announce every change on the
``relay_config`` channel (relay/schemas/sql/0002_providers_users_tokens.sql).
One ``ConfigListener`` per process listens and fans the changes out to its
subscribers: the ``ProviderRegistry`` (rebuilds its snapshot from the
database) and the ``relay.auth.TokenCache`` (drops revoked tokens). After a (re)connect the listener
sends a ``resync`` change, since notifications sent while it was not
listening are lost.

A request takes its provider once, with ``ProviderRegistry.get``, at its
start: a snapshot is never modified, only replaced, so a request in flight
keeps the provider it started with.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

import msgspec
import trio

from relay.db.bridge import MISSED, Database
from relay.providers.store import list_providers
from relay.providers.types import Provider

log = logging.getLogger("relay.config")

CHANNEL = "relay_config"


class ConfigChange(msgspec.Struct, frozen=True):
    """One notification. ``kind`` is the table (providers, users, api_keys) or 'resync'."""

    kind: str
    op: str = ""
    id: str | None = None  # provider name, user id or API key id
    user_id: str | None = None


RESYNC = ConfigChange(kind="resync")
ChangeCallback = Callable[[Sequence[ConfigChange]], Awaitable[None]]


class ConfigSubscriber(Protocol):
    """Something that follows configuration changes (the registry, the token cache)."""

    async def on_config_change(self, changes: Sequence[ConfigChange], db: Database) -> None: ...


def parse_change(payload: str) -> ConfigChange:
    if payload == MISSED:  # the bridge reconnected or overflowed: changes may be lost
        return RESYNC
    try:
        return msgspec.json.decode(payload, type=ConfigChange)
    except msgspec.DecodeError:
        # Someone sent something we cannot read: reread everything.
        return RESYNC


class ConfigListener:
    """Listens on ``relay_config`` and hands batches of changes to its subscribers.

    One per process: ``ConfigListener(db, registry, token_cache)``, started
    with ``await nursery.start(listener.run)``. Subscribers are called in
    order, each with the whole batch. Bursts (a seed writing ten rows) arrive
    as one batch: after the first notification it waits ``debounce`` seconds
    for more, which keeps the delay well under the one second a change may
    take to reach a relay.
    """

    def __init__(
        self,
        db: Database,
        *subscribers: ConfigSubscriber,
        debounce: float = 0.05,
        retry_delay: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self._db = db
        self._subscribers: list[ConfigSubscriber] = list(subscribers)
        self._callbacks: list[ChangeCallback] = []
        self._debounce = debounce
        self._retry_delay = retry_delay

    def subscribe(self, subscriber: ConfigSubscriber) -> None:
        self._subscribers.append(subscriber)

    def add_callback(self, callback: ChangeCallback) -> None:
        """Also call ``callback(changes)``, after the subscribers."""
        self._callbacks.append(callback)

    async def _dispatch(self, changes: Sequence[ConfigChange]) -> None:
        for subscriber in self._subscribers:
            await subscriber.on_config_change(changes, self._db)
        for callback in self._callbacks:
            await callback(changes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled.

        ``started`` is reported once the LISTEN is in place and the
        subscribers have had their first resync (so the registry is loaded);
        a failure before that is raised. Later failures (a subscriber's query
        failing while the database is away) are logged and followed by a new
        LISTEN and a resync. The bridge itself reconnects a dropped LISTEN
        connection and reports it as ``MISSED``, which becomes a resync.
        """
        started = False
        delay = self._retry_delay[0]
        while True:
            try:
                async with self._db.listen(CHANNEL) as notifications:
                    await self._dispatch([RESYNC])
                    if not started:
                        started = True
                        task_status.started()
                    delay = self._retry_delay[0]
                    await self._pump(notifications)
                log.warning("config listener: notifications ended; listening again")
            except Exception:
                if not started:
                    raise
                log.warning("config listener failed; retrying in %.1fs", delay, exc_info=True)
            await trio.sleep(delay)
            delay = min(delay * 2, self._retry_delay[1])

    async def _pump(self, notifications: trio.abc.ReceiveChannel[tuple[str, str]]) -> None:
        async for _channel, payload in notifications:
            batch = [parse_change(payload)]
            with trio.move_on_after(self._debounce):
                async for _channel, more in notifications:
                    batch.append(parse_change(more))
            await self._dispatch(batch)


class ProviderRegistry:
    """The current ``name -> Provider`` snapshot of this process."""

    def __init__(self, providers: Mapping[str, Provider] | None = None) -> None:
        self._providers: Mapping[str, Provider] = MappingProxyType(dict(providers or {}))
        # Names of disabled providers: a request for one is told so, not "unknown".
        self.disabled: frozenset[str] = frozenset()
        self.version = 0  # bumped on every replacement, for caches keyed on it

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def all(self) -> list[Provider]:
        """The enabled providers, by name."""
        return [self._providers[name] for name in sorted(self._providers)]

    @property
    def providers(self) -> Mapping[str, Provider]:
        """The snapshot itself: read-only, replaced (never changed) on reload."""
        return self._providers

    def replace(self, providers: Mapping[str, Provider], disabled: Iterable[str] = ()) -> None:
        self._providers = MappingProxyType(dict(providers))
        self.disabled = frozenset(disabled)
        self.version += 1

    async def reload(self, db: Database) -> None:
        # One query for both, so they always agree.
        every = await list_providers(db)
        enabled = {p.name: p for p in every if p.enabled}
        self.replace(enabled, [p.name for p in every if not p.enabled])

    async def on_config_change(self, changes: Sequence[ConfigChange], db: Database) -> None:
        """Rebuild from the database after a provider change or a resync."""
        if any(c.kind in ("providers", "resync") for c in changes):
            before = self._providers
            await self.reload(db)
            if before != self._providers:
                log.info("providers: %s", ", ".join(self._providers) or "(none)")

    async def run(
        self,
        db: Database,
        *,
        on_change: ChangeCallback | None = None,
        debounce: float = 0.05,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the snapshot current until cancelled (start it with ``nursery.start``).

        A shorthand for a ``ConfigListener`` with this registry as its only
        subscriber; ``on_change(changes)`` is called after each reload.
        """
        listener = ConfigListener(db, self, debounce=debounce)
        if on_change is not None:
            listener.add_callback(on_change)
        await listener.run(task_status=task_status)
