"""``python -m bench.log_cost``: the CPU cost of one structured log line, by library.

Each variant formats and writes the same line (a message with one argument
and the request's four ids, plus one recorded event's fields for the
``record`` rows) to a stream that throws it away, many times, interleaved
round by round; the report gives the median microseconds per line and each
variant's ratio to the relay's own (stdlib logging + ``JsonFormatter``,
msgspec). structlog is measured when it is importable (it is not a
dependency: ``uv pip install structlog`` into the venv to compare).
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from relay.facts import Facts, Usage
from relay.observe.context import RequestIds, bind_ids
from relay.observe.logs import PLAIN_FORMAT, JsonFormatter, record_fields
from relay.record.events import InterceptionMeta, records_for

LINES = 20_000
ROUNDS = 7


class _Sink(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def _stdlib(formatter: logging.Formatter, name: str) -> logging.Logger:
    handler = logging.StreamHandler(_Sink())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"bench.log_cost.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class _JsonDumpsFormatter(logging.Formatter):
    """The same line with the standard library's json.dumps (what msgspec replaces)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        return json.dumps(line, default=str)


def _fields() -> dict[str, Any]:
    meta = InterceptionMeta(
        provider_name="anthropic", provider_type="anthropic", model="m", route="/v1/messages"
    )
    facts = Facts(response_id="msg_1", usage=Usage(input_tokens=10, output_tokens=20))
    rows = records_for(meta, facts, "hello", "completed")
    return record_fields(rows[1])  # a token_usage row


def variants() -> dict[str, Callable[[bool], None]]:
    fields = _fields()
    found: dict[str, Callable[[bool], None]] = {}
    for name, formatter in (
        ("stdlib plain text", logging.Formatter(PLAIN_FORMAT)),
        ("stdlib + JsonFormatter (msgspec)", JsonFormatter()),
        ("stdlib + json.dumps", _JsonDumpsFormatter()),
    ):
        logger = _stdlib(formatter, name)

        def run(record: bool, logger: logging.Logger = logger) -> None:
            if record:
                logger.info("interception log", extra={"fields": fields})
            else:
                logger.info("upstream failed mid-stream: %s", "ReadError")

        found[name] = run
    try:
        import structlog
    except ImportError:
        print("bench.log_cost: structlog is not installed: not measured", file=sys.stderr)
        return found

    def add_ids(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        from relay.observe.context import current_ids

        ids = current_ids()
        if ids is not None:
            event.update(ids.log_fields())
        return event

    for name, renderer in (
        ("structlog JSONRenderer (json.dumps)", structlog.processors.JSONRenderer()),
        (
            "structlog JSONRenderer (msgspec)",
            structlog.processors.JSONRenderer(
                serializer=lambda obj, **_kw: __import__("msgspec").json.encode(obj).decode()
            ),
        ),
    ):
        slog = structlog.wrap_logger(
            structlog.PrintLogger(_Sink()),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                add_ids,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=True,
        )

        def srun(record: bool, slog: Any = slog) -> None:
            if record:
                slog.info("interception log", **fields)
            else:
                slog.info("upstream failed mid-stream: %s", "ReadError")

        found[name] = srun
    return found


def main() -> None:
    found = variants()
    ids = RequestIds("01a23e4d-0068-74b1-af60-068fe2148196")
    ids.interception_id, ids.user_id, ids.provider = "01a23e4d-006a", "5776379e", "anthropic"
    unbind = bind_ids(ids)
    results: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(ROUNDS):
            for record in (False, True):
                for name, run in found.items():
                    start = time.perf_counter()
                    for _ in range(LINES):
                        run(record)
                    results.setdefault((name, record), []).append(
                        (time.perf_counter() - start) / LINES * 1e6
                    )
    finally:
        unbind()
    print(f"{LINES} lines x {ROUNDS} rounds, interleaved; median µs per line")
    print(f"{'variant':40} {'plain line':>12} {'record line':>12} {'ratio':>7}")
    ours = statistics.median(results[("stdlib + JsonFormatter (msgspec)", True)])
    for name in found:
        plain = statistics.median(results[(name, False)])
        rec = statistics.median(results[(name, True)])
        print(f"{name:40} {plain:12.2f} {rec:12.2f} {rec / ours:7.2f}")


if __name__ == "__main__":
    main()
