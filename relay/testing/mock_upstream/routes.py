"""From a parsed request to what the mock answers: auth, routing, scenarios.

``Responder.respond`` is sans-io: it returns a ``JsonReply`` or a
``StreamReply`` (bytes, pacing and how the stream ends) and the server
carries it out. Prepared bytes are cached per scenario key so a request
costs a dict lookup and one ``bytes.replace`` of the id placeholder.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Collection, Mapping
from typing import Literal, TypeVar

import msgspec

from . import anthropic, openai_chat, openai_responses, tool_script
from .framing import RANDOM_SPLIT_MAX, Writes, build_writes, pieces
from .scenarios import (
    ID_PLACEHOLDER,
    RETRY_AFTER_SECONDS,
    Chunking,
    Ending,
    KnobError,
    RequestKnobs,
    StreamPlan,
    parse_knobs,
)

Api = Literal["anthropic", "openai"]
Headers = list[tuple[bytes, bytes]]
PLACEHOLDER = ID_PLACEHOLDER.encode()
_Cached = TypeVar("_Cached")
CACHE_LIMIT = 2048  # prepared streams/bodies kept; cleared wholesale beyond it


class JsonReply(msgspec.Struct):
    status: int
    headers: Headers
    body: bytes
    delay_s: float = 0.0  # before the status line
    # Cut scenarios: send only body[:truncate_to], then end the connection.
    truncate_to: int | None = None
    ending: Ending = "complete"


class StreamReply(msgspec.Struct):
    headers: Headers
    writes: Writes
    ending: Ending
    headers_delay_s: float
    first_token_s: float
    gap_s: float


Reply = JsonReply | StreamReply


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _GenerationRequest(msgspec.Struct):
    """Only what the mock reads from a generation request body."""

    model: str | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


_generation_decoder = msgspec.json.Decoder(_GenerationRequest)


def mask_key(key: str) -> str:
    """A hint that identifies a key without revealing it: ``sk-…abcd``."""
    return f"{key[:3]}…{key[-4:]}" if len(key) > 10 else "…"


def _api_of(path: str, headers: Mapping[str, str]) -> Api:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith(("/v1/chat/", "/v1/responses", "/v1/conversations")):
        return "openai"
    # /v1/models and unknown routes: both providers serve /v1/models, so the
    # credential header tells which SDK is asking.
    if "x-api-key" in headers or "anthropic-version" in headers:
        return "anthropic"
    return "openai"


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Responder:
    def __init__(
        self,
        *,
        chunking: Chunking = "event",
        seed: int = 0,
        keys: Collection[str] | None = None,
        rate_limited_keys: Collection[str] = (),
        revoked_keys: Collection[str] = (),
        retry_after: int = RETRY_AFTER_SECONDS,
        split_max: int = RANDOM_SPLIT_MAX,
    ) -> None:
        self.chunking: Chunking = chunking
        self.seed = seed
        self.split_max = split_max  # the largest piece of ``random`` chunking
        self.keys = None if keys is None else frozenset(keys)
        self.rate_limited_keys = frozenset(rate_limited_keys)
        self.revoked_keys = frozenset(revoked_keys)
        self.retry_after = retry_after  # seconds, on each 429 of a rate-limited key
        self._streams: dict[tuple[object, ...], StreamPlan] = {}
        self._writes: dict[tuple[object, ...], Writes] = {}
        self._bodies: dict[tuple[object, ...], bytes] = {}

    def respond(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        request_index: int,
        chunked: bool = True,
    ) -> Reply:
        """Answer one request; ``headers`` maps lower-case names to values."""
        path = target.partition("?")[0]
        api = _api_of(path, headers)
        uid = secrets.token_hex(len(ID_PLACEHOLDER) // 2).encode()
        denied = self._check_key(api, headers, uid)
        if denied is not None:
            return denied
        try:
            return self._route(api, method, path, headers, body, uid, request_index, chunked)
        except (KnobError, msgspec.DecodeError) as exc:
            return self._error(api, 400, uid, str(exc))

    # -- auth ---------------------------------------------------------------

    def _check_key(self, api: Api, headers: Mapping[str, str], uid: bytes) -> JsonReply | None:
        # Anthropic also takes OAuth tokens as Bearer; OpenAI only Bearer.
        key = _bearer(headers)
        if api == "anthropic":
            key = headers.get("x-api-key") or key
        if not key:
            message = (
                "x-api-key header is required"
                if api == "anthropic"
                else "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return self._error(api, 401, uid, message)
        if key in self.revoked_keys or (self.keys is not None and key not in self.keys):
            message = (
                "invalid x-api-key"
                if api == "anthropic"
                else f"Incorrect API key provided: {mask_key(key)}."
            )
            return self._error(api, 401, uid, message)
        if key in self.rate_limited_keys:
            return self._error(api, 429, uid)
        return None

    # -- routing ------------------------------------------------------------

    def _route(
        self,
        api: Api,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        uid: bytes,
        request_index: int,
        chunked: bool,
    ) -> Reply:
        parts = path.strip("/").split("/")
        if method == "POST" and path in ("/v1/messages", "/v1/chat/completions", "/v1/responses"):
            return self._generate(path, headers, body, uid, request_index, chunked)
        if method == "POST" and path == "/v1/traces":
            # An OTLP/HTTP trace collector that keeps nothing (bench.costs' tracing
            # variant exports here): an empty ExportTraceServiceResponse.
            return JsonReply(
                200, [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")], b""
            )
        if method == "POST" and path == "/v1/messages/count_tokens":
            request = _generation_decoder.decode(body)
            knobs = parse_knobs(request.model, headers)
            return self._json(api, 200, uid, anthropic.count_tokens_body("text", knobs.events))
        if method == "GET" and parts[:2] == ["v1", "models"] and len(parts) <= 3:
            wire = anthropic if api == "anthropic" else openai_chat
            found = wire.models_body() if len(parts) == 2 else wire.model_body(parts[2])
            return _with_knobs(self._json(api, 200, uid, found), headers)
        if parts[:2] == ["v1", "responses"] and len(parts) >= 3:
            response_id = parts[2]
            model = "mock-text"
            if method == "GET" and len(parts) == 3:
                return self._json(
                    api, 200, uid, openai_responses.retrieved_body(response_id, model)
                )
            if method == "DELETE" and len(parts) == 3:
                return self._json(
                    api, 200, uid, openai_responses.deleted_body(response_id, "response")
                )
            if method == "POST" and parts[3:] == ["cancel"]:
                cancelled = openai_responses.retrieved_body(response_id, model, "cancelled")
                return self._json(api, 200, uid, cancelled)
            if method == "GET" and parts[3:] == ["input_items"]:
                return self._json(api, 200, uid, openai_responses.items_body())
        if parts[:2] == ["v1", "conversations"]:
            conversation_id = parts[2] if len(parts) >= 3 else "conv_" + ID_PLACEHOLDER
            if len(parts) >= 4 and parts[3] == "items":
                return self._json(api, 200, uid, openai_responses.items_body())
            if method == "DELETE" and len(parts) == 3:
                deleted = openai_responses.deleted_body(conversation_id, "conversation.deleted")
                return self._json(api, 200, uid, deleted)
            if len(parts) <= 3:
                return self._json(
                    api, 200, uid, openai_responses.conversation_body(conversation_id)
                )
        message = (
            f"route not supported: {method} {path}"
            if api == "anthropic"
            else f"Invalid URL ({method} {path})"
        )
        return self._error(api, 404, uid, message)

    def _generate(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        uid: bytes,
        request_index: int,
        chunked: bool,
    ) -> Reply:
        request = _generation_decoder.decode(body)
        knobs = parse_knobs(request.model, headers)
        api: Api = "anthropic" if path == "/v1/messages" else "openai"
        model = request.model or "mock-text"
        script = headers.get(tool_script.HEADER)
        if script is not None:
            return self._scripted(api, path, script, body, model, request.stream, knobs, uid)
        if knobs.scenario == "error-status":
            reply = self._error(api, knobs.status, uid)
            reply.delay_s = knobs.headers_delay_s
            return reply
        include_usage = bool(
            path == "/v1/chat/completions"
            and request.stream_options
            and request.stream_options.include_usage
        )
        events = knobs.events if knobs.scenario == "long" else 0
        key = (path, knobs.scenario, model, events, include_usage, knobs.usage_on_finish)
        if request.stream:
            return self._stream(api, key, knobs, uid, request_index, chunked)
        return self._blocking(api, key, knobs, uid)

    def _scripted(
        self,
        api: Api,
        path: str,
        script_text: str,
        body: bytes,
        model: str,
        stream: bool,
        knobs: RequestKnobs,
        uid: bytes,
    ) -> Reply:
        """A tool-calling answer that follows ``x-mock-tool-script`` (see ``tool_script``)."""
        script = tool_script.parse_script(script_text)
        request = msgspec.json.decode(body)
        if path == "/v1/messages":
            if not stream:
                return self._json(
                    api, 200, uid, tool_script.anthropic_message(script, request, model)
                )
            events = tool_script.anthropic_stream(script, request, model)
        elif path == "/v1/chat/completions":
            if not stream:
                return self._json(
                    api, 200, uid, tool_script.chat_completion(script, request, model)
                )
            events = tool_script.chat_stream(script, request, model)
        elif path == "/v1/responses":
            if not stream:
                return self._json(api, 200, uid, tool_script.responses_body(script, request, model))
            events = tool_script.responses_stream(script, request, model)
        else:
            return self._error(api, 404, uid, "tool scripts: not for this route yet")
        events = [e.replace(PLACEHOLDER, uid) for e in events]
        chunking = knobs.chunking or self.chunking
        writes = build_writes(
            pieces(events, chunking, random.Random(self.seed), self.split_max), True
        )
        return StreamReply(
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                *self._id_headers(api, uid),
            ],
            writes=writes,
            ending="complete",
            headers_delay_s=knobs.headers_delay_s,
            first_token_s=knobs.first_token_s,
            gap_s=knobs.gap_s,
        )

    def _plan(self, key: tuple[object, ...]) -> StreamPlan:
        plan = self._streams.get(key)
        if plan is None:
            path, scenario, model, events, include_usage, on_finish = key
            assert isinstance(scenario, str) and isinstance(model, str)
            assert isinstance(events, int)
            if path == "/v1/messages":
                plan = anthropic.build_stream(scenario, model, events)
            elif path == "/v1/chat/completions":
                plan = openai_chat.build_stream(
                    scenario, model, events, bool(include_usage), usage_on_finish=bool(on_finish)
                )
            else:
                plan = openai_responses.build_stream(scenario, model, events)
            self._streams = _bounded(self._streams)
            self._streams[key] = plan
        return plan

    def _stream(
        self,
        api: Api,
        key: tuple[object, ...],
        knobs: RequestKnobs,
        uid: bytes,
        request_index: int,
        chunked: bool,
    ) -> StreamReply:
        plan = self._plan(key)
        chunking = knobs.chunking or self.chunking
        if chunking in ("event", "coalesce"):
            # Whole events keep each id placeholder intact, so the framed bytes
            # can be cached and the ids swapped in afterwards.
            wkey = (*key, chunking, chunked)
            writes = self._writes.get(wkey)
            if writes is None:
                payloads = pieces(plan.events, chunking, random.Random(self.seed))
                writes = build_writes(payloads, chunked)
                self._writes = _bounded(self._writes)
                self._writes[wkey] = writes
            writes = Writes(writes.wire.replace(PLACEHOLDER, uid), writes.bounds)
        else:
            # Splits may cut through an id: swap the ids in before splitting.
            events = [e.replace(PLACEHOLDER, uid) for e in plan.events]
            rng = random.Random(self.seed * 1_000_003 + request_index)
            writes = build_writes(pieces(events, chunking, rng, self.split_max), chunked)
        return StreamReply(
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                *self._id_headers(api, uid),
            ],
            writes=writes,
            ending=plan.ending,
            headers_delay_s=knobs.headers_delay_s,
            first_token_s=knobs.first_token_s,
            gap_s=knobs.gap_s,
        )

    def _blocking(
        self, api: Api, key: tuple[object, ...], knobs: RequestKnobs, uid: bytes
    ) -> JsonReply:
        path, scenario, model, events, _, _ = key
        assert isinstance(scenario, str) and isinstance(model, str)
        assert isinstance(events, int)
        if scenario == "error-midstream" and api == "anthropic":
            # What the streaming overloaded_error corresponds to without a stream.
            return self._error(api, 529, uid)
        body = self._bodies.get(key)
        if body is None:
            if path == "/v1/messages":
                body = anthropic.build_message(scenario, model, events)
            elif path == "/v1/chat/completions":
                body = openai_chat.build_completion(scenario, model, events)
            else:
                body = openai_responses.build_response(scenario, model, events)
            self._bodies = _bounded(self._bodies)
            self._bodies[key] = body
        reply = self._json(api, 200, uid, body)
        reply.delay_s = knobs.headers_delay_s + knobs.first_token_s
        if scenario in ("drop", "error-midstream"):
            reply.truncate_to = len(reply.body) // 2
            reply.ending = "drop" if scenario == "drop" else "reset"
        return reply

    # -- replies ------------------------------------------------------------

    @staticmethod
    def _id_headers(api: Api, uid: bytes) -> Headers:
        if api == "anthropic":
            return [(b"request-id", b"req_" + uid)]
        return [
            (b"x-request-id", b"req_" + uid),
            (b"openai-version", b"2020-10-01"),
            (b"openai-processing-ms", b"1"),
        ]

    def _json(self, api: Api, status: int, uid: bytes, body: bytes) -> JsonReply:
        body = body.replace(PLACEHOLDER, uid)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self._id_headers(api, uid),
        ]
        return JsonReply(status, headers, body)

    def _error(self, api: Api, status: int, uid: bytes, message: str | None = None) -> JsonReply:
        wire = anthropic if api == "anthropic" else openai_chat
        reply = self._json(api, status, uid, wire.error_body(status, message))
        if status == 429:
            reply.headers.append((b"retry-after", str(self.retry_after).encode()))
        return reply


def _bounded(cache: dict[tuple[object, ...], _Cached]) -> dict[tuple[object, ...], _Cached]:
    return {} if len(cache) >= CACHE_LIMIT else cache


def _with_knobs(reply: JsonReply, headers: Mapping[str, str]) -> JsonReply:
    """The model list with the knobs a passthrough test needs: a delayed head
    (``x-mock-headers-delay-ms``) and a cut body (``x-mock-scenario: drop`` or
    ``error-midstream``: half the body, then FIN or RST)."""
    knobs = parse_knobs(None, headers)
    reply.delay_s = knobs.headers_delay_s
    if knobs.scenario in ("drop", "error-midstream"):
        reply.truncate_to = len(reply.body) // 2
        reply.ending = "drop" if knobs.scenario == "drop" else "reset"
    return reply
