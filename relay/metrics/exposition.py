"""Exposition of the metrics: multiprocess mode, the text format, a listener of its own.

Multiprocess mode is prometheus_client's: each process writes its values to
memory-mapped files in one directory, and whichever process answers a scrape
sums them. Gauges of processes that are gone are dropped at scrape time.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client import values as prom_values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from relay.errors import listen_error

if TYPE_CHECKING:
    from relay.metrics import Metrics

log = logging.getLogger("relay.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


async def send_plain(
    send: Any,
    status: int,
    body: bytes,
    content_type: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


UNAUTHORIZED_BODY = b"metrics token required\n"
UNAUTHORIZED_HEADERS = [(b"www-authenticate", b'Bearer realm="relay metrics"')]


def token_accepted(headers: Iterable[tuple[bytes, bytes]], token: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` is among ``headers`` (always, without a token)."""
    if not token:
        return True
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, given = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(given.strip(), token.encode())
    return False


# -- multiprocess mode ---------------------------------------------------------------------------


def enable_multiprocess(directory: Path) -> None:
    """Make every metric created from now on live in ``directory``'s mmap files.

    prometheus_client chooses its value class when it is imported, from
    ``PROMETHEUS_MULTIPROC_DIR``. A hypercorn worker only learns that it is one
    after the import, so the choice is made here, before the first metric.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    if not getattr(prom_values.ValueClass, "_multiprocess", False):
        prom_values.ValueClass = prom_values.MultiProcessValue()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_multiprocess(directory: Path | str) -> bytes:
    """Sum every process's values in ``directory`` (gauges of dead processes dropped)."""
    path = str(directory)
    for name in os.listdir(path):
        # gauge_livesum_<pid>.db: a worker that died keeps no live gauge.
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid_text = name[:-3].rpartition("_")[2]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                prom_multiprocess.mark_process_dead(int(pid_text), path)
    registry = CollectorRegistry()
    registry.register(_SettledFiles(path))
    return generate_latest(registry)


class _SettledFiles:
    """prometheus_client's multiprocess collector, minus the files still being made.

    A worker that is starting creates its ``<kind>_<pid>.db`` empty and sizes
    it a moment later; prometheus_client reads an empty file's header as a
    struct and fails, so a scrape while a worker started answered 500. Such a
    file holds no values yet: it is left out of this scrape.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Any]:
        files = []
        for entry in os.scandir(self._path):
            if not entry.name.endswith(".db"):
                continue
            try:
                if entry.stat().st_size >= _MMAP_HEADER:
                    files.append(entry.path)
            except FileNotFoundError:
                continue  # a dead process's live gauges, removed meanwhile
        merged: Iterable[Any] = prom_multiprocess.MultiProcessCollector.merge(
            files, accumulate=True
        )
        return merged


# The first 8 bytes of a metrics file: how much of it is used (then padding).
_MMAP_HEADER = 8


def multiprocess_dir_for(data_dir: Path | None, env: Mapping[str, str]) -> Path | None:
    """Where this process's metrics must go to be summed with its siblings', or None.

    The operator's ``PROMETHEUS_MULTIPROC_DIR`` wins. A hypercorn worker (a
    child started by multiprocessing) without it uses
    ``<data dir>/metrics/workers-<master pid>``: all workers of one master
    share it, and directories of masters that are gone are removed.
    """
    configured = env.get(MULTIPROC_ENV) or env.get(MULTIPROC_ENV.lower())
    if configured:
        return Path(configured)
    if multiprocessing.parent_process() is None or data_dir is None:
        return None
    base = Path(data_dir) / "metrics"
    master = os.getppid()
    if base.is_dir():
        for old in base.glob("workers-*"):
            pid_text = old.name.partition("-")[2]
            if pid_text.isdigit() and int(pid_text) != master and not _alive(int(pid_text)):
                shutil.rmtree(old, ignore_errors=True)
    return base / f"workers-{master}"


# -- a listener of its own -----------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_metrics_listener(
    metrics: Metrics,
    address: str,
    *,
    retry_interval: float = 5.0,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``address`` (host:port) until cancelled.

    With several workers only one can hold the port; the others retry now and
    then (so one takes over if the holder dies). Any of them shows every
    worker's values, so one listener is enough. Starts with the bound port, or
    None while another process holds it.
    """
    host, port = split_address(address)
    started = False
    while True:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or metrics.multiprocess_dir is None:
                raise listen_error(address, exc, "METRICS_ADDRESS") from None
            if not started:
                log.info("metrics: %s is served by another worker", address)
                task_status.started(None)
                started = True
            await trio.sleep(retry_interval)
            continue
        bound = listeners[0].socket.getsockname()[1]
        if not started:
            task_status.started(bound)
            started = True
        await trio.serve_listeners(functools.partial(_serve_connection, metrics), listeners)


async def _serve_connection(metrics: Metrics, stream: trio.abc.Stream) -> None:
    """One connection; whatever goes wrong with it ends it, never the listener.

    ``trio.serve_listeners`` lets a handler's exception end the whole listener
    (and with it the services nursery): a malformed request or a peer that
    resets must stop here.
    """
    try:
        await _answer(metrics, stream)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("metrics: connection dropped: %s: %s", type(exc).__name__, exc)
    except Exception:
        log.exception("metrics: a scrape failed")


async def _answer(metrics: Metrics, stream: trio.abc.Stream) -> None:
    """One request per connection: enough for a scraper, and nothing to keep alive."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        request: h11.Request | None = None
        with trio.move_on_after(10):
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(bytes(data))
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return
        if request is None:
            return
        path = request.target.split(b"?")[0]
        extra: list[tuple[bytes, bytes]] = []
        if path != b"/metrics":
            status, body, ctype = 404, b"not found\n", b"text/plain; charset=utf-8"
        elif not token_accepted(request.headers, metrics.token):
            status, body, ctype = 401, UNAUTHORIZED_BODY, b"text/plain; charset=utf-8"
            extra = UNAUTHORIZED_HEADERS
        elif request.method not in (b"GET", b"HEAD"):
            status, body, ctype = 405, b"method not allowed\n", b"text/plain; charset=utf-8"
        else:
            status, ctype = 200, CONTENT_TYPE_PLAIN_0_0_4.encode()
            body = await trio.to_thread.run_sync(metrics.render)
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        out = conn.send(h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD":
            out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)
