"""asyncpg, used from trio.

asyncpg only runs on asyncio. One dedicated thread runs an asyncio loop that
owns the connection pool; trio code hands it coroutines and sleeps until they
finish. Measured on this kind of machine this is simpler and about twice as
fast per round trip as trio-asyncio (see DESIGN.md).

A call never blocks the trio thread: it is submitted with
``loop.call_soon_threadsafe`` and the asyncio task's completion wakes the trio
task through its trio token. Cancelling the trio caller cancels the asyncio
task, which makes asyncpg send a cancel request for the running query; the
trio caller returns only once the asyncio side has finished, so no work
outlives its caller. asyncpg's exceptions reach the caller unchanged.

PostgreSQL ignores a cancel request that lands while the backend is between
protocol messages (it happens under load), and the pool would then wait for
the query to run to its end. So the request is repeated until the call ends;
if that takes too long the connection is closed instead, which bounds how
long a cancelled caller waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import socket
import ssl
import threading
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import outcome
import trio

from relay.errors import DatabaseUnavailable, StartupError

T = TypeVar("T")

#: Payload delivered by :meth:`Database.listen` on each channel when
#: notifications may have been lost: after the listening connection was
#: re-established, or when the receiver fell so far behind that the buffer
#: overflowed. PostgreSQL payloads cannot contain NUL, so it never collides
#: with a real payload. Receivers treat it as "reload everything".
MISSED = "\x00missed"

#: Connection errors a caller should expect while the database is away.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)

# How often an idle LISTEN connection is probed, so a connection that died
# without a FIN (rare on loopback, possible over a network) is noticed.
_LISTEN_PROBE_INTERVAL = 15.0
_LISTEN_RECONNECT_MAX_DELAY = 2.0

# Cancel requests are repeated this often, this many times; then the
# connection is closed.
_CANCEL_RETRY_INTERVAL = 0.25
_CANCEL_RETRIES = 20


class _Call:
    """Book-keeping of one trio → asyncio call, shared by both threads.

    ``raise_cancel`` is touched only on the trio thread, the rest only on the
    loop thread.
    """

    __slots__ = ("cancel_requested", "cancel_resent", "connection", "raise_cancel", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.raise_cancel: Callable[[], Any] | None = None
        self.connection: Any = None  # the pooled connection the call is using
        self.cancel_resent = False


# The _Call an asyncio task belongs to (set in each task's own context).
_current_call: contextvars.ContextVar[_Call] = contextvars.ContextVar("relay_db_call")


class Database:
    """A pool of PostgreSQL connections usable from trio. Use :meth:`open`."""

    dsn: str

    def __init__(self, dsn: str, *, min_size: int, max_size: int, connect_timeout: float) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=_run_loop, args=(self._loop,), name="relay-db-asyncio", daemon=True
        )
        self._trio_token = trio.lowlevel.current_trio_token()
        self._pool: Any = None
        self._enforcers: set[asyncio.Task[None]] = set()  # strong references

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> AsyncIterator[Database]:
        """Start the loop thread and the pool; close both on exit, also on cancel.

        With ``min_size=0`` no connection is made up front, so the database may
        still be away when this returns; otherwise an unreachable database
        raises here (``OSError``, ``TimeoutError`` or an asyncpg error).
        """
        db = cls(dsn, min_size=min_size, max_size=max_size, connect_timeout=connect_timeout)
        db._thread.start()
        try:
            db._pool = await db._call(db._create_pool)
            try:
                yield db
            finally:
                with trio.CancelScope(shield=True):
                    await db._call(db._close_pool)
        finally:
            with trio.CancelScope(shield=True):
                await db._stop_loop()

    # -- queries ---------------------------------------------------------------

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; returns its status, e.g. ``INSERT 0 1``."""
        return await self.run(lambda c: c.execute(sql, *args))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self.run(lambda c: c.executemany(sql, args))

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(lambda c: c.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.run(lambda c: c.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.run(lambda c: c.fetchval(sql, *args))

    async def copy_records_to_table(
        self, table: str, records: Sequence[tuple[Any, ...]], columns: Sequence[str]
    ) -> None:
        """Bulk insert with COPY (the fast path for batches of 1,000 rows or more)."""
        await self.run(
            lambda c: c.copy_records_to_table(table, records=records, columns=list(columns))
        )

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` on the loop thread with one pooled connection.

        ``fn`` is an *asyncio* coroutine function: use it for transactions and
        other work that needs several statements on the same connection.
        """
        return await self._call(self._with_connection, fn)

    # -- LISTEN / NOTIFY -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(
        self, *channels: str, max_buffer: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, str]]]:
        """LISTEN on ``channels`` with a dedicated connection.

        Yields a channel of ``(channel, payload)``. On entry the LISTEN is in
        place (an unreachable database raises here). If the connection drops
        it is re-established in the background, then every channel receives a
        :data:`MISSED` payload; so does a channel whose notifications were
        dropped because more than ``max_buffer`` were waiting.
        """
        if not channels:
            raise ValueError("listen() needs at least one channel")
        queue = _NotificationQueue(channels, max_buffer)
        send, receive = trio.open_memory_channel[tuple[str, str]](0)
        listening = trio.Event()
        token = self._trio_token

        def on_notification(_conn: Any, _pid: int, channel: str, payload: str) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(queue.push, channel, payload)

        def on_listening(reconnected: bool) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(queue.mark_all_missed if reconnected else listening.set)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._call, self._listen_forever, channels, on_notification, on_listening
                )
                nursery.start_soon(queue.forward, send)
                await listening.wait()
                try:
                    async with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery is an implementation detail: callers catch OSError or
            # asyncpg errors (and their own exceptions) as if there were none.
            sole = _sole_exception(group)
            if sole is group:
                raise
            raise sole from None

    # -- loop-thread side (asyncio coroutines) ---------------------------------

    async def _with_connection(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        call = _current_call.get()
        async with self._pool.acquire() as connection:
            call.connection = connection
            try:
                return await fn(connection)
            finally:
                if call.cancel_requested:
                    # Hold on to the connection until the cancelled statement
                    # has ended (any later statement waits for that), so that
                    # _enforce_cancellation can repeat the request meanwhile.
                    with contextlib.suppress(Exception):
                        await connection.execute("SELECT 1")
                    if call.cancel_resent:
                        # A repeated request may still be on its way to this
                        # backend: never hand the connection to another caller.
                        # (Already closed, the proxy refuses: nothing to do.)
                        with contextlib.suppress(asyncpg.InterfaceError):
                            connection.terminate()
                call.connection = None

    async def _enforce_cancellation(self, call: _Call) -> None:
        """Repeat the cancel request until the call ends; then close its connection."""
        task = call.task
        assert task is not None
        for _ in range(_CANCEL_RETRIES):
            await asyncio.wait({task}, timeout=_CANCEL_RETRY_INTERVAL)
            if task.done():
                return
            connection, pid = call.connection, None
            if connection is not None:
                with contextlib.suppress(asyncpg.InterfaceError):  # closed under us
                    pid = None if connection.is_closed() else connection.get_server_pid()
            if pid is not None:
                call.cancel_resent = True
                await self._cancel_backend(pid)
        if not task.done() and call.connection is not None:
            with contextlib.suppress(asyncpg.InterfaceError):
                call.connection.terminate()

    async def _cancel_backend(self, pid: int) -> None:
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            connection = await asyncpg.connect(
                self.dsn, timeout=min(self._connect_timeout, _CANCEL_RETRY_INTERVAL * 4)
            )
            try:
                await connection.execute("SELECT pg_cancel_backend($1)", pid)
            finally:
                connection.terminate()

    async def _create_pool(self) -> Any:
        return await asyncpg.create_pool(
            self.dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._connect_timeout,
        )

    async def _close_pool(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 5.0)
        except TimeoutError:
            self._pool.terminate()

    async def _listen_forever(
        self,
        channels: Sequence[str],
        on_notification: Callable[[Any, int, str, str], None],
        on_listening: Callable[[bool], None],
    ) -> None:
        # The first connection's failure is the caller's error; later ones are
        # retried with backoff until the caller leaves.
        connection = None
        try:
            connection = await self._connect_listener(channels, on_notification)
            on_listening(False)
            while True:
                await _wait_until_lost(connection)
                connection.terminate()
                connection = None
                delay = 0.05
                while connection is None:
                    await asyncio.sleep(delay)
                    try:
                        connection = await self._connect_listener(channels, on_notification)
                    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                        delay = min(delay * 2, _LISTEN_RECONNECT_MAX_DELAY)
                on_listening(True)
        finally:
            if connection is not None:
                connection.terminate()

    async def _connect_listener(
        self, channels: Sequence[str], on_notification: Callable[[Any, int, str, str], None]
    ) -> Any:
        connection = await asyncpg.connect(self.dsn, timeout=self._connect_timeout)
        try:
            for channel in channels:
                await connection.add_listener(channel, on_notification)
        except BaseException:
            connection.terminate()
            raise
        return connection

    # -- the bridge itself -----------------------------------------------------

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` as an asyncio task and wait for it from trio."""
        await trio.lowlevel.checkpoint_if_cancelled()
        loop = self._loop
        token = self._trio_token
        trio_task = trio.lowlevel.current_task()
        call = _Call()

        def deliver(task: asyncio.Task[T]) -> None:  # trio thread
            result: outcome.Outcome[Any]
            if task.cancelled():
                if call.raise_cancel is not None:
                    result = outcome.capture(call.raise_cancel)
                else:
                    result = outcome.Error(asyncpg.InterfaceError("database loop was shut down"))
            elif (exc := task.exception()) is not None:
                result = outcome.Error(exc)
            else:
                result = outcome.Value(task.result())
            trio.lowlevel.reschedule(trio_task, result)

        def on_done(task: asyncio.Task[T]) -> None:  # loop thread
            token.run_sync_soon(deliver, task)

        def start() -> None:  # loop thread
            task = loop.create_task(_invoke(call, fn, args, kwargs))
            call.task = task
            task.add_done_callback(on_done)
            if call.cancel_requested:
                task.cancel()

        def cancel() -> None:  # loop thread
            call.cancel_requested = True
            if call.task is not None and not call.task.done():
                call.task.cancel()
                enforcer = loop.create_task(self._enforce_cancellation(call))
                self._enforcers.add(enforcer)
                enforcer.add_done_callback(self._enforcers.discard)

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:  # trio thread
            # Wait for the asyncio task to finish (and asyncpg to cancel the
            # query) before the trio caller sees its Cancelled.
            call.raise_cancel = raise_cancel
            loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError as exc:  # loop closed
            raise asyncpg.InterfaceError("database is closed") from exc
        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def _stop_loop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        await trio.to_thread.run_sync(self._thread.join)


async def _invoke(
    call: _Call, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: Any
) -> T:
    _current_call.set(call)
    return await fn(*args, **kwargs)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # asyncpg may leave short background tasks (cancel requests); end them.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _wait_until_lost(connection: Any) -> None:
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _conn: lost.set())
    while not lost.is_set() and not connection.is_closed():
        try:
            await asyncio.wait_for(lost.wait(), _LISTEN_PROBE_INTERVAL)
        except TimeoutError:
            try:
                await connection.execute("SELECT 1", timeout=_LISTEN_PROBE_INTERVAL)
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                return


class _NotificationQueue:
    """Trio-side buffer between asyncpg's callbacks and the receiver.

    The loop thread must never wait for a slow receiver, so notifications are
    queued here (bounded) and a trio task forwards them; on overflow the
    channel is remembered and gets a :data:`MISSED` payload later.
    """

    def __init__(self, channels: Sequence[str], max_buffer: int) -> None:
        self._channels = channels
        self._max_buffer = max_buffer
        self._pending: deque[tuple[str, str]] = deque()
        self._missed: dict[str, None] = {}  # an ordered set
        self._wakeup = trio.Event()

    def push(self, channel: str, payload: str) -> None:
        if len(self._pending) >= self._max_buffer:
            self._missed[channel] = None
        else:
            self._pending.append((channel, payload))
        self._wakeup.set()

    def mark_all_missed(self) -> None:
        for channel in self._channels:
            self._missed[channel] = None
        self._wakeup.set()

    async def forward(self, send: trio.MemorySendChannel[tuple[str, str]]) -> None:
        async with send:
            while True:
                if self._pending:
                    item = self._pending.popleft()
                elif self._missed:
                    channel = next(iter(self._missed))
                    del self._missed[channel]
                    item = (channel, MISSED)
                else:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                try:
                    await send.send(item)
                except trio.BrokenResourceError:
                    return  # the receiver closed its end


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside (nested) single-member groups, else the group."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return group if isinstance(inner, BaseExceptionGroup) else inner


def mask_dsn(dsn: str) -> str:
    """The DSN with its password (in the user info or a ``password=`` parameter)
    replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is not None:
        userinfo = f"{parts.username or ''}:***@"
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=userinfo + host)
    if "password=" in parts.query.lower():
        query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        parts = parts._replace(query=query)
    return urllib.parse.urlunsplit(parts)


#: What ``Database.open`` raises when no connection can be made (see ``connect_failure``).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class DatabaseConnectError(StartupError):
    """The database cannot be reached or refuses us; the message says which one and why."""


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """``exc`` as a ``DatabaseUnavailable`` when it says the database went away, else None."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return DatabaseUnavailable(f"the database is not available: {exc}")
    return None


def connect_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words (never the password)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason
        return f"TLS failed: certificate verify failed: {why} (check sslrootcert / sslmode)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, FileNotFoundError):
        return "no PostgreSQL socket there (is PostgreSQL running?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time (timeout): is the host reachable?"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"wrong password ({exc})"
    if isinstance(exc, asyncpg.PostgresError):
        return f"refused by the server: {exc}"
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"unusable connection settings: {exc}"
    text = str(exc)
    if "rejected SSL upgrade" in text:
        return "TLS failed: the server does not accept TLS connections (see sslmode)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or type(exc).__name__


async def wait_until_available(dsn: str, timeout: float) -> None:
    """Return once a connection to ``dsn`` succeeds; raise ``TimeoutError`` after ``timeout`` s."""
    last_error: BaseException | None = None
    async with Database.open(dsn, min_size=0, max_size=1, connect_timeout=timeout) as db:
        with trio.move_on_after(timeout):
            while True:
                try:
                    await db.fetchval("SELECT 1")
                    return
                except UNAVAILABLE_ERRORS as exc:
                    last_error = exc
                await trio.sleep(0.1)
    raise TimeoutError(
        f"PostgreSQL at {mask_dsn(dsn)} not available after {timeout:g}s: {last_error!r}"
    )
