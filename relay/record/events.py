"""What the recorder stores: one msgspec Struct per table row, and the pure
functions that turn an interception's request side and its ``Facts`` into them.

Every record carries its own UUID ``id``: writes are ``ON CONFLICT (id) DO
NOTHING``, so a retried batch or a replayed spool never duplicates a row. The
field names are the column names of ``relay/schemas/sql/0003_recording.sql``.

Nothing here does I/O. ``python -m relay.record.events --write-schemas``
regenerates ``relay/schemas/json/*.json`` from these types (a test checks drift).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

from relay.facts import Facts, Usage
from relay.pricing.book import PriceLookup, cost_micros

#: How an interception ended (what the relay itself records at its end).
#: ``refused``: turned away before it went upstream (a spent budget).
Status: TypeAlias = Literal["completed", "failed", "cancelled", "refused"]
#: Every state of an ``interceptions`` row: recorded ``in_progress`` when the
#: request is accepted, then ended with a ``Status``; or ``interrupted`` when the
#: relay process serving it was found gone (relay.record.instances).
RowStatus: TypeAlias = Literal[
    "in_progress", "completed", "failed", "cancelled", "interrupted", "refused"
]
CredentialKind: TypeAlias = Literal["centralized", "byok"]
# Timestamps are timezone-aware (UTC); the schema says date-time.
Timestamp: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]


def utc_now() -> datetime:
    return datetime.now(UTC)


_id_lock = threading.Lock()
_last_id_clock = 0  # the 60-bit clock of the latest id: milliseconds and 12 bits below
# The random bits of ids come from one os.urandom call per _RANDOM_POOL_IDS ids
# (a system call per id was a measurable share of a stream's CPU).
_RANDOM_POOL_IDS = 512
_random_pool = b""
_random_at = 0


def _forget_random_pool() -> None:
    # A forked child must not hand out the parent's remaining random bits again.
    global _random_pool, _random_at
    _random_pool, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random_pool)


def _uuid_from_int(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checks (the value is built valid),
    as Python 3.14's ``uuid.UUID._from_int`` does."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", _UNKNOWN_SAFETY)
    return made


_UNKNOWN_SAFETY = uuid.SafeUUID.unknown


def new_id() -> uuid.UUID:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds,
    12 bits of sub-millisecond time, then 62 random bits. Python 3.11 has no
    ``uuid.uuid7``. Within a process the ids are strictly increasing (RFC 9562
    §6.2 method 3, with the clock bumped when two calls see the same time), so
    creation order is id order. Rows arrive roughly in id order, so primary-key
    inserts touch the right edge of the index instead of random pages of a large one.
    """
    global _last_id_clock, _random_pool, _random_at
    milliseconds, below = divmod(time.time_ns(), 1_000_000)
    clock = milliseconds << 12 | (below * 4096 // 1_000_000)
    with _id_lock:
        if clock <= _last_id_clock:
            clock = _last_id_clock + 1  # same (or earlier) time: the next value
        _last_id_clock = clock
        at = _random_at
        if at >= len(_random_pool):
            _random_pool, at = os.urandom(8 * _RANDOM_POOL_IDS), 0
        _random_at = at + 8
        random = int.from_bytes(_random_pool[at : at + 8]) >> 2
    return _uuid_from_int(
        (clock >> 12) << 80
        | 0x7 << 76  # version 7
        | (clock & 0xFFF) << 64
        | 0x2 << 62  # RFC 4122 variant
        | random
    )


class InterceptionMeta(msgspec.Struct, kw_only=True):
    """The request side of one interception, known before the upstream answers.

    The shell builds it when a request is accepted (``id`` and ``started_at``
    default to now, so dumps and logs can name the interception early) and
    hands it to ``records_for`` at the end.
    """

    provider_name: str
    provider_type: str
    model: str  # the model the client asked for
    route: str  # the API path after the provider prefix, e.g. /v1/messages
    initiator_id: uuid.UUID | None = None  # users.id
    api_key_id: str | None = None  # api_keys.id of the relay token
    client: str = "unknown"  # relay.clients.detect_client(headers)
    client_session_id: str | None = None  # relay.clients.client_session_id(...)
    user_agent: str | None = None
    credential_kind: CredentialKind = "centralized"
    credential_hint: str | None = None  # masked, e.g. sk-…abcd; never the key
    id: uuid.UUID = msgspec.field(default_factory=new_id)
    started_at: Timestamp = msgspec.field(default_factory=utc_now)
    instance_id: uuid.UUID | None = None  # relay_instances.id of the process serving it
    request_id: str | None = None  # the relay's request id (x-relay-request-id)


class InterceptionRecord(msgspec.Struct, kw_only=True, tag="interception", tag_field="kind"):
    """One intercepted request: written when it starts (``in_progress``, no
    ``ended_at``) and again when it ends; the later state replaces the earlier
    (the writer upserts, never moving a row back to an earlier state)."""

    id: uuid.UUID
    initiator_id: uuid.UUID | None
    api_key_id: str | None
    provider_name: str
    provider_type: str
    model: str
    route: str
    started_at: Timestamp
    ended_at: Timestamp | None
    status: RowStatus
    error_type: str | None
    error_message: str | None
    client: str
    client_session_id: str | None
    user_agent: str | None
    credential_kind: CredentialKind
    credential_hint: str | None
    # Last, with a default: spool frames written before it existed still decode.
    instance_id: uuid.UUID | None = None
    request_id: str | None = None  # the relay's request id, sent in x-relay-request-id


class TokenUsageRecord(msgspec.Struct, kw_only=True, tag="token_usage", tag_field="kind"):
    """Token counts of one upstream response.

    ``input_tokens`` excludes tokens read from cache (OpenAI's prompt_tokens
    include them; the accumulator subtracts). ``raw`` is the provider's own
    usage object, untouched.
    """

    id: uuid.UUID
    interception_id: uuid.UUID
    provider_response_id: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    extra: dict[str, int]
    raw: dict[str, Any]
    created_at: Timestamp
    # The price book entry it was priced at, when recorded (micro-dollars per
    # million tokens), and its cost in micro-dollars. Last, with defaults:
    # spool frames written before they existed still decode (as unpriced).
    # price_model None: no price matched; the usage is unpriced, never $0.
    price_model: str | None = None
    input_price_micros: int | None = None
    output_price_micros: int | None = None
    cache_read_price_micros: int | None = None
    cache_write_price_micros: int | None = None
    cache_write_1h_price_micros: int | None = None
    reasoning_price_micros: int | None = None
    cost_micros: int | None = None


class UserPromptRecord(msgspec.Struct, kw_only=True, tag="user_prompt", tag_field="kind"):
    """The text of the last user message of the request, cut at the stored-prompt cap."""

    id: uuid.UUID
    interception_id: uuid.UUID
    provider_response_id: str | None
    prompt: str
    created_at: Timestamp
    truncated: bool = False  # ``prompt`` is the first ``max_prompt`` bytes only
    original_bytes: int | None = None  # UTF-8 size of the whole prompt


class CappedPrompt(msgspec.Struct, frozen=True):
    """A prompt as it will be stored: ``cap_prompt``'s result."""

    text: str
    truncated: bool
    original_bytes: int


def cap_prompt(prompt: str, max_bytes: int | None) -> CappedPrompt:
    """The prompt cut at ``max_bytes`` of UTF-8 (None: whole), with its whole size.

    The cut never splits a character. An ASCII prompt (the usual case) is
    measured and cut without encoding it. Capping as soon as the request is
    parsed lets a multi-megabyte prompt go before the stream starts.
    """
    return CappedPrompt(*_cap(prompt, max_bytes))


def _cap(prompt: str, max_bytes: int | None) -> tuple[str, bool, int]:
    if prompt.isascii():
        size = len(prompt)
        if max_bytes is None or size <= max_bytes:
            return prompt, False, size
        return prompt[:max_bytes], True, size
    if max_bytes is not None and len(prompt) > max_bytes:
        # Over the cap in characters already: encode only what could be kept.
        size = _utf8_size(prompt)
        head = prompt[:max_bytes].encode("utf-8", "surrogatepass")[:max_bytes]
        return head.decode("utf-8", "ignore"), True, size
    encoded = prompt.encode("utf-8", "surrogatepass")
    size = len(encoded)
    if max_bytes is None or size <= max_bytes:
        return prompt, False, size
    return encoded[:max_bytes].decode("utf-8", "ignore"), True, size


def _utf8_size(text: str, step: int = 1 << 20) -> int:
    """UTF-8 size of ``text``, encoding at most ``step`` characters at a time."""
    return sum(
        len(text[i : i + step].encode("utf-8", "surrogatepass")) for i in range(0, len(text), step)
    )


class ToolUsageRecord(msgspec.Struct, kw_only=True, tag="tool_usage", tag_field="kind"):
    """A tool call the model made, with its full accumulated input."""

    id: uuid.UUID
    interception_id: uuid.UUID
    provider_response_id: str | None
    tool_call_id: str
    name: str
    input: str  # the JSON text the model produced, as produced
    injected: bool  # true only for tools the relay injected (MCP) and ran itself
    invocation_error: str | None
    created_at: Timestamp
    server_url: str | None = None  # the MCP server of an injected tool


class ModelThoughtRecord(msgspec.Struct, kw_only=True, tag="model_thought", tag_field="kind"):
    """Thinking or reasoning-summary text the model streamed."""

    id: uuid.UUID
    interception_id: uuid.UUID
    provider_response_id: str | None
    content: str
    created_at: Timestamp


Record: TypeAlias = (
    InterceptionRecord | TokenUsageRecord | UserPromptRecord | ToolUsageRecord | ModelThoughtRecord
)
RECORD_TYPES: tuple[type[Record], ...] = (
    InterceptionRecord,
    TokenUsageRecord,
    UserPromptRecord,
    ToolUsageRecord,
    ModelThoughtRecord,
)


def interception_started(interception: InterceptionMeta) -> InterceptionRecord:
    """The row recorded when an interception starts: ``in_progress``, not ended.

    Its end (``records_for``) replaces it; if the process dies first, a relay
    marks it ``interrupted`` (relay.record.instances).
    """
    return _interception_record(interception, None, "in_progress", None, None)


def _interception_record(
    meta: InterceptionMeta,
    ended_at: datetime | None,
    status: RowStatus,
    error_type: str | None,
    error_message: str | None,
) -> InterceptionRecord:
    """The interception's row: the request side from ``meta``, and how it ended."""
    return InterceptionRecord(
        id=meta.id,
        initiator_id=meta.initiator_id,
        api_key_id=meta.api_key_id,
        provider_name=meta.provider_name,
        provider_type=meta.provider_type,
        model=meta.model,
        route=meta.route,
        started_at=meta.started_at,
        ended_at=ended_at,
        status=status,
        error_type=error_type,
        error_message=error_message,
        client=meta.client,
        client_session_id=meta.client_session_id,
        user_agent=meta.user_agent,
        credential_kind=meta.credential_kind,
        credential_hint=meta.credential_hint,
        instance_id=meta.instance_id,
        request_id=meta.request_id,
    )


def records_for(
    interception: InterceptionMeta,
    facts: Facts,
    prompt: str | CappedPrompt | None,
    status: Status,
    error: BaseException | tuple[str, str] | None = None,
    *,
    ended_at: datetime | None = None,
    max_prompt: int | None = None,
    prices: PriceLookup | None = None,
) -> list[Record]:
    """Every row one finished interception produces, the interception first.

    ``prices``: the token usage is priced once, here, for the provider type and
    the model recorded (the one the upstream says answered), at the price in
    effect at ``ended_at``; without a book, or without a match, it is unpriced.

    ``max_prompt``: a ``str`` prompt is cut at that many UTF-8 bytes (None:
    whole); a ``CappedPrompt`` is stored as it is.

    ``error`` is what ended the interception on the relay's side (an exception,
    or an ``(error_type, message)`` pair); without it, an error the upstream
    reported in its stream (``facts.error_type``) is recorded.
    """
    ended = ended_at or utc_now()
    if isinstance(error, BaseException):
        error_type: str | None = type(error).__name__
        error_message: str | None = str(error) or None
    elif error is not None:
        error_type, error_message = error
    else:
        error_type, error_message = facts.error_type, facts.error_message
    iid = interception.id
    response_id = facts.response_id
    records: list[Record] = [
        _interception_record(interception, ended, status, error_type, error_message)
    ]
    # A tool loop's inner requests first (each its own row), then the last one's.
    usages = [(r.response_id, r.usage) for r in facts.round_usages]
    if facts.usage is not None:
        usages.append((response_id, facts.usage))
    for usage_response_id, usage in usages:
        records.append(
            priced(
                TokenUsageRecord(
                    id=new_id(),
                    interception_id=iid,
                    provider_response_id=usage_response_id,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    extra=dict(usage.extra),
                    raw=dict(usage.raw),
                    created_at=ended,
                ),
                usage,
                prices,
                interception.provider_type,
                interception.model,
            )
        )
    if prompt is not None:
        capped = cap_prompt(prompt, max_prompt) if isinstance(prompt, str) else prompt
        records.append(
            UserPromptRecord(
                id=new_id(),
                interception_id=iid,
                provider_response_id=response_id,
                prompt=capped.text,
                created_at=ended,
                truncated=capped.truncated,
                original_bytes=capped.original_bytes,
            )
        )
    for call in facts.tool_calls:
        records.append(
            ToolUsageRecord(
                id=new_id(),
                interception_id=iid,
                provider_response_id=response_id,
                tool_call_id=call.id,
                name=call.name,
                input=call.arguments,
                injected=False,
                invocation_error=None,
                created_at=ended,
            )
        )
    for injected in facts.injected_calls:
        records.append(
            ToolUsageRecord(
                id=new_id(),
                interception_id=iid,
                provider_response_id=response_id,
                tool_call_id=injected.id,
                name=injected.name,
                input=injected.arguments,
                injected=True,
                invocation_error=injected.error,
                created_at=ended,
                server_url=injected.server_url or None,
            )
        )
    for thought in facts.thoughts:
        records.append(
            ModelThoughtRecord(
                id=new_id(),
                interception_id=iid,
                provider_response_id=response_id,
                content=thought,
                created_at=ended,
            )
        )
    return records


def priced(
    record: TokenUsageRecord,
    usage: Usage,
    prices: PriceLookup | None,
    provider_type: str,
    model: str,
) -> TokenUsageRecord:
    """``record`` with the price it was charged at and its cost (unchanged if unpriced)."""
    price = prices.lookup(provider_type, model, record.created_at) if prices else None
    if price is None:
        return record
    record.price_model = price.model
    record.input_price_micros = price.input
    record.output_price_micros = price.output
    record.cache_read_price_micros = price.cache_read
    record.cache_write_price_micros = price.cache_write
    record.cache_write_1h_price_micros = price.cache_write_1h
    record.reasoning_price_micros = price.reasoning
    record.cost_micros = cost_micros(usage, price)
    return record


# --- JSON Schemas -----------------------------------------------------------------------------

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "json"


def json_schemas() -> dict[str, bytes]:
    """File name → JSON Schema text, one per record type plus the tagged union."""
    out: dict[str, bytes] = {}
    for record_type in RECORD_TYPES:
        tag = record_type.__struct_config__.tag
        out[f"record-{tag}.json"] = _pretty(msgspec.json.schema(record_type))
    out["record.json"] = _pretty(msgspec.json.schema(Record))
    return out


def _pretty(schema: object) -> bytes:
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_bytes(text)
        written.append(path)
    return written


def _main(argv: Sequence[str]) -> int:
    if list(argv) == ["--write-schemas"]:
        for path in write_schemas():
            print(path)
        return 0
    print("usage: python -m relay.record.events --write-schemas", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
