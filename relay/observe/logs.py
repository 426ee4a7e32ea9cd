"""Structured logs: one JSON line per log record, and one per recorded event.

With ``STRUCTURED_LOGGING`` every log line on stderr is one JSON object:
``time``, ``level``, ``logger``, ``message``, then the ids of the request
being served (``request_id``, ``interception_id``, ``user_id``, ``provider``:
``relay.observe.context``; null outside a request), then the line's own
fields and ``exception`` when there is one. ``RecordLogSink`` writes one
line per recorded row as the Coder AI Gateway does (message
``interception log``, ``record_type`` interception_start / interception_end /
token_usage / prompt_usage / tool_usage / model_thought) with the row's
fields. Prompts, tool inputs and thoughts are written only with
``STRUCTURED_LOGGING_CONTENT``; secrets never (a record holds only the
masked ``credential_hint`` of a key, and no log line of the relay carries a
key or a token).

Standard-library logging with this formatter, encoded by msgspec, costs
half of what structlog's default JSON renderer does per line, the same as
structlog given msgspec as its serializer, and needs no bridge for the
third-party loggers (docs/observability.md, "Cost per line";
``python -m bench.log_cost``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from relay.observe.context import current_ids
from relay.record.events import (
    InterceptionRecord,
    ModelThoughtRecord,
    Record,
    TokenUsageRecord,
    ToolUsageRecord,
    UserPromptRecord,
)

PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: The logger of the per-record lines.
RECORD_LOGGER = "relay.interceptions"
RECORD_MESSAGE = "interception log"
_NO_IDS: dict[str, str | None] = dict.fromkeys(
    ("request_id", "interception_id", "user_id", "provider")
)
_BASE_KEYS = frozenset(
    {"time", "level", "logger", "message", "request_id", "interception_id", "user_id", "provider"}
)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line (see the module's docstring for its keys).

    A line's own fields come from ``extra={"fields": {...}}``; a field named
    like a base key fills it only where the request's context left it null
    (a Responses WebSocket turn's rows), so a line cannot pass for another
    request's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encode = msgspec.json.Encoder(enc_hook=str).encode

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = current_ids()
        line.update(_NO_IDS if ids is None else ids.log_fields())
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                if key not in _BASE_KEYS or line[key] is None:
                    line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return self._encode(line).decode("utf-8")


_last_second = -1
_last_prefix = ""


def _timestamp(created: float) -> str:
    """RFC 3339, UTC, milliseconds: ``2026-12-03T23:41:07.123Z`` (the second's text cached)."""
    global _last_second, _last_prefix
    second = int(created)
    if second != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = second
    return f"{_last_prefix}.{int((created - second) * 1000):03d}Z"


def configure_logging(*, structured: bool, level: int = logging.INFO) -> None:
    """The process's logging: JSON lines on stderr, or the plain text of a terminal."""
    root = logging.getLogger()
    if structured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.setLevel(level)
    else:
        logging.basicConfig(level=level, format=PLAIN_FORMAT)
    # httpx logs every request at INFO: a per-request cost on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class RecordSink(Protocol):
    def record(self, records: Sequence[Record]) -> None: ...


class RecordLogSink:
    """The record sink with one ``interception log`` line per row on the way.

    Wraps the request path's sink (the recorder, charging budgets): the rows
    go on unchanged, and each is logged at INFO in the request's own task, so
    the line carries its request's ids.
    """

    def __init__(self, records: RecordSink, *, content: bool = False) -> None:
        self._records = records
        self._content = content
        self._log = logging.getLogger(RECORD_LOGGER)

    def record(self, records: Sequence[Record]) -> None:
        self._records.record(records)
        log = self._log
        if not log.isEnabledFor(logging.INFO):
            return
        for row in records:
            log.info(RECORD_MESSAGE, extra={"fields": record_fields(row, content=self._content)})


def record_type(row: Record) -> str:
    """Coder's ``record_type`` of a row."""
    if isinstance(row, InterceptionRecord):
        return "interception_start" if row.status == "in_progress" else "interception_end"
    if isinstance(row, TokenUsageRecord):
        return "token_usage"
    if isinstance(row, UserPromptRecord):
        return "prompt_usage"
    if isinstance(row, ToolUsageRecord):
        return "tool_usage"
    return "model_thought"


def record_fields(row: Record, *, content: bool = False) -> dict[str, Any]:
    """The fields of one row's log line: ``record_type``, then the row's own.

    An interception row's ``id`` is its ``interception_id``; another row's
    ``id`` is ``record_id``. Without ``content`` the prompt, a tool's input and a
    thought are replaced by their size in UTF-8 bytes.
    """
    fields: dict[str, Any] = {"record_type": record_type(row)}
    values = msgspec.structs.asdict(row)
    row_id = values.pop("id")
    if isinstance(row, InterceptionRecord):
        fields["interception_id"] = row_id
    else:
        fields["record_id"] = row_id
    if not content:
        if isinstance(row, UserPromptRecord):
            del values["prompt"]  # its size stays: original_bytes
        elif isinstance(row, ToolUsageRecord):
            values["input_bytes"] = len(values.pop("input").encode("utf-8", "surrogatepass"))
        elif isinstance(row, ModelThoughtRecord):
            values["content_bytes"] = len(values.pop("content").encode("utf-8", "surrogatepass"))
    fields.update(values)
    return fields
