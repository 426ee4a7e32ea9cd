"""Replay cases read from a dump directory, and what each recorded stream says.

A case is one dumped exchange: the request as sent upstream, the response as
it came back, and (from this relay's sidecar) when each chunk arrived. Dumps
of the Coder AI Gateway have no sidecar: their response is replayed event by
event, without pauses. Their request bodies are pretty-printed JSON, which is
still the same request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.dump import (
    PASSTHROUGH_DIR,
    SUFFIX_CHUNKS,
    SUFFIX_REQUEST,
    SUFFIX_RESPONSE,
    DumpedRequest,
    DumpedResponse,
    DumpFormatError,
    parse_request,
    parse_response,
    parse_sidecar,
)
from relay.facts import Facts, Usage
from relay.intercept.chatcompletions.accumulator import ChatAccumulator
from relay.intercept.messages.accumulator import MessagesAccumulator
from relay.intercept.responses.accumulator import ResponsesAccumulator
from relay.streams.sse import SSEDecoder

Api = Literal["messages", "chat", "responses", "passthrough"]
ProviderType = Literal["anthropic", "openai"]


@dataclass
class Chunk:
    at: float  # seconds after the request, as recorded
    size: int


@dataclass
class ReplayCase:
    id: str  # the dump's path below the directory, without suffix
    provider: str
    api: Api
    api_path: str  # path (and query) under /api/v2/ai-gateway/<provider>
    request: DumpedRequest
    response: DumpedResponse
    response_at: float = 0.0  # when the response headers came, as recorded
    chunks: list[Chunk] = field(default_factory=list)
    has_sidecar: bool = False

    @property
    def body_hash(self) -> str:
        return hashlib.sha256(self.request.body).hexdigest()

    @property
    def path(self) -> str:
        return self.api_path.partition("?")[0]


@dataclass
class SkippedDump:
    id: str
    reason: str


@dataclass
class LoadedDumps:
    cases: list[ReplayCase]
    skipped: list[SkippedDump]
    provider_types: dict[str, ProviderType]


def api_path_of(target: str) -> str:
    """The path under the provider prefix. This relay dumps it as is; the Coder
    AI Gateway dumps the upstream request URI, whose base-URL prefix is cut at
    ``/v1/``."""
    at = target.find("/v1/")
    if at > 0:
        return target[at:]
    if at < 0:
        for tail in ("/chat/completions", "/responses"):
            if target.partition("?")[0].endswith(tail):
                return "/v1" + target[target.rfind(tail) :]
    return target


def api_of(method: str, path: str, passthrough: bool) -> Api | None:
    if path.startswith("/model/"):
        return None  # Bedrock's native API: not replayed
    if not passthrough and method == "POST":
        if path == "/v1/messages":
            return "messages"
        if path == "/v1/chat/completions":
            return "chat"
        if path == "/v1/responses":
            return "responses"
    return "passthrough"


def load_dumps(directory: Path) -> LoadedDumps:
    """Every dumped exchange under ``directory``, oldest first."""
    cases: list[ReplayCase] = []
    skipped: list[SkippedDump] = []
    for request_file in sorted(directory.rglob("*" + SUFFIX_REQUEST), key=_order):
        stem = str(request_file)[: -len(SUFFIX_REQUEST)]
        relative = Path(stem).relative_to(directory)
        case_id = relative.as_posix()
        if len(relative.parts) < 3:
            skipped.append(SkippedDump(case_id, "not under <provider>/<model>/"))
            continue
        response_file = Path(stem + SUFFIX_RESPONSE)
        if not response_file.exists():
            skipped.append(SkippedDump(case_id, "no response was dumped"))
            continue
        try:
            request = parse_request(request_file.read_bytes())
            response = parse_response(response_file.read_bytes())
        except DumpFormatError as exc:
            skipped.append(SkippedDump(case_id, str(exc)))
            continue
        api_path = api_path_of(request.target)
        passthrough = relative.parts[-2] == PASSTHROUGH_DIR
        api = api_of(request.method, api_path.partition("?")[0], passthrough)
        if api is None:
            skipped.append(SkippedDump(case_id, "Bedrock routes are not replayed"))
            continue
        case = ReplayCase(case_id, relative.parts[0], api, api_path, request, response)
        sidecar_file = Path(stem + SUFFIX_CHUNKS)
        if sidecar_file.exists():
            sidecar = parse_sidecar(sidecar_file.read_bytes())
            if not sidecar.complete:
                skipped.append(SkippedDump(case_id, "incomplete dump (data dropped or cut)"))
                continue
            case.has_sidecar = True
            case.response_at = sidecar.response.t if sidecar.response else 0.0
            case.chunks = [Chunk(c.t, c.size) for c in sidecar.chunks]
            if sum(c.size for c in case.chunks) != len(response.body):
                skipped.append(SkippedDump(case_id, "sidecar does not match the response body"))
                continue
        cases.append(case)
    return LoadedDumps(cases, skipped, provider_types(cases))


def _order(path: Path) -> tuple[int, str]:
    millis = path.name.partition("-")[0]
    return (int(millis) if millis.isdigit() else 0, str(path))


def provider_types(cases: list[ReplayCase]) -> dict[str, ProviderType]:
    """Each provider's type, from the APIs its dumps used (headers break a tie)."""
    types: dict[str, ProviderType] = {}
    for case in cases:
        if case.api == "messages":
            types[case.provider] = "anthropic"
        elif case.api in ("chat", "responses"):
            types.setdefault(case.provider, "openai")
    for case in cases:
        if case.provider not in types:
            names = {name.lower() for name, _ in case.request.headers}
            types[case.provider] = "anthropic" if "anthropic-version" in names else "openai"
    return types


def wire_chunks(case: ReplayCase) -> list[tuple[float, bytes]]:
    """The response body cut as recorded, each piece with its recorded time.
    Without a sidecar: one piece per SSE event (or the whole body), no pauses."""
    body = case.response.body
    if case.has_sidecar:
        out, at = [], 0
        for chunk in case.chunks:
            out.append((chunk.at, body[at : at + chunk.size]))
            at += chunk.size
        return out
    if not body:
        return []
    if not _is_event_stream(case.response):
        return [(0.0, body)]
    pieces, start = [], 0
    while start < len(body):
        end = body.find(b"\n\n", start)
        end = len(body) if end < 0 else end + 2
        pieces.append((0.0, body[start:end]))
        start = end
    return pieces


def _is_event_stream(response: DumpedResponse) -> bool:
    return any(
        name.lower() == "content-type" and value.startswith("text/event-stream")
        for name, value in response.headers
    )


def recorded_facts(case: ReplayCase) -> Facts | None:
    """What the relay's accumulator finds in the recorded response (None for passthrough
    and error statuses: nothing to account)."""
    if case.api == "passthrough" or case.response.status >= 400:
        return None
    accumulator: MessagesAccumulator | ChatAccumulator | ResponsesAccumulator
    if case.api == "messages":
        accumulator = MessagesAccumulator()
    elif case.api == "chat":
        accumulator = ChatAccumulator()
    else:
        accumulator = ResponsesAccumulator()
    if _is_event_stream(case.response):
        decoder = SSEDecoder()
        for event in [*decoder.feed(case.response.body), *decoder.close()]:
            if event.dispatch:
                accumulator.feed(event)
    else:
        accumulator.feed_response(case.response.body)
    return accumulator.facts


def usage_tuple(usage: Usage) -> tuple[int, int, int, int]:
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
    )
