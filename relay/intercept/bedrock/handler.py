"""Bedrock interception: requests of a bedrock provider, relayed through AWS Bedrock.

Two kinds of clients reach a bedrock provider:

- Anthropic clients on ``/v1/messages``: the relay maps the model, turns the
  body into a Bedrock body, signs, and calls InvokeModel (blocking: Bedrock's
  JSON is the Anthropic message, relayed as is) or
  InvokeModelWithResponseStream (each event-stream frame is re-emitted as
  Anthropic SSE as soon as it has arrived). Errors before the stream are
  mapped to Anthropic errors; errors inside it end it with an SSE error event.
- Bedrock clients on ``/model/{modelId}/invoke[-with-response-stream]``: the
  body and the answer go through byte for byte (event stream included); the
  relay only re-signs the request, and decodes the answer for recording.

Both feed the same sans-io accounting (``accounting.BedrockAccounting``:
events, tool calls, usage from Bedrock's own counts, cache tokens included).
Cancellation, keepalive and the outcome are the shell's, from
``relay.intercept.base``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import trio

from relay.asgi import Headers, Receive, Scope, Send, forwardable_response_headers, send_response
from relay.dump import DumpHandle
from relay.intercept.base import (
    Outcome,
    StreamState,
    UpstreamCall,
    answer_exhausted,
    fail_before_response,
    keepalive,
    send_body,
    send_upstream,
    settle_outcome,
    watch_disconnect,
)
from relay.intercept.bedrock.accounting import BedrockAccounting
from relay.intercept.bedrock.stream import (
    anthropic_error_event,
    map_bedrock_error,
)
from relay.intercept.bedrock.translate import (
    InvalidAnthropicBody,
    invoke_path,
    invoke_stream_path,
    map_model,
    to_bedrock_body,
)
from relay.providers.types import (
    DEFAULT_BEDROCK_MODEL,
    DEFAULT_BEDROCK_SMALL_FAST_MODEL,
    Provider,
    ProviderType,
)
from relay.routes import RouteKind
from relay.upstream.aws import (
    BedrockAuth,
    BedrockConfigError,
    BedrockCredentialsError,
    endpoint_url,
)
from relay.upstream.clients import UpstreamClients
from relay.upstream.errors import UpstreamError
from relay.upstream.http11 import UpstreamResponse
from relay.upstream.keypool import Exhausted, Failover
from relay.wire.common import RequestInfo
from relay.wire.errors import anthropic_error_body

log = logging.getLogger("relay.intercept.bedrock")

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class BedrockAuths:
    """One ``BedrockAuth`` per bedrock provider of this process.

    A ``BedrockAuth`` keeps the ambient credentials it resolved (and refreshes
    them), so it lives as long as its provider's settings stay the same; a
    provider changed through the database gets a new one on its next request.
    ``env`` is the relay's environment (region lookup; botocore reads the
    credential chain from the process environment itself).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._auths: dict[str, tuple[Provider, BedrockAuth]] = {}

    async def prepare(self, providers: Iterable[Provider]) -> None:
        """Build every bedrock provider's auth now (at startup).

        Raises ``BedrockConfigError`` naming the first provider that cannot
        work (no region, an unknown profile, half an access key pair).
        """
        for provider in providers:
            if provider.type is ProviderType.BEDROCK:
                await trio.to_thread.run_sync(self._build, provider)

    async def get(self, provider: Provider) -> BedrockAuth:
        cached = self._auths.get(provider.name)
        if cached is not None and cached[0] == provider:
            return cached[1]
        # Building reads the AWS config files: not on the event loop.
        return await trio.to_thread.run_sync(self._build, provider)

    def _build(self, provider: Provider) -> BedrockAuth:
        try:
            auth = BedrockAuth.from_provider(provider, env=self._env)
        except BedrockConfigError as exc:
            raise BedrockConfigError(f"provider {provider.name!r}: {exc}") from None
        self._auths[provider.name] = (provider, auth)
        return auth


@dataclass(frozen=True)
class BedrockRequest:
    """What goes to Bedrock for one client request."""

    model_id: str
    path: str  # /model/{modelId}/invoke[-with-response-stream], model id percent-encoded
    body: bytes
    headers: dict[str, str]  # signed, so sent exactly so
    streaming: bool
    native: bool  # the client speaks Bedrock: its answer is relayed unchanged


def bedrock_request(
    kind: RouteKind,
    provider: Provider,
    client_headers: Headers,
    raw_path: bytes,
    body: bytes,
    info: RequestInfo,
) -> BedrockRequest:
    """The Bedrock request for a client request (raises ``InvalidAnthropicBody``)."""
    if kind is RouteKind.MESSAGES:
        model_id = map_model(
            info.model,
            model=provider.bedrock_model or DEFAULT_BEDROCK_MODEL,
            small_fast_model=provider.bedrock_small_fast_model or DEFAULT_BEDROCK_SMALL_FAST_MODEL,
        )
        betas = ",".join(v.decode("latin-1") for k, v in client_headers if k == b"anthropic-beta")
        upstream_body = to_bedrock_body(body, betas or None)
        streaming = info.stream
        # The response's content type is chosen with X-Amzn-Bedrock-Accept on the stream.
        accept = "x-amzn-bedrock-accept" if streaming else "accept"
        headers = {"content-type": "application/json", accept: "application/json"}
        native = False
    else:
        # The raw path keeps a model id's escapes (an ARN's %2F) as the client sent them.
        model_id = unquote(raw_path.rsplit(b"/", 2)[1].decode("latin-1"))
        upstream_body = body
        streaming = kind is RouteKind.BEDROCK_INVOKE_STREAM
        # Bedrock's operation headers; the rest (the client's own SigV4 headers
        # included) means nothing once the relay signs as itself.
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in client_headers
            if k in (b"content-type", b"accept") or k.startswith(b"x-amzn-bedrock-")
        }
        headers.setdefault("content-type", "application/json")
        native = True
    path = invoke_stream_path(model_id) if streaming else invoke_path(model_id)
    return BedrockRequest(model_id, path, upstream_body, headers, streaming, native)


async def relay_bedrock(
    send: Send,
    receive: Receive,
    scope: Scope,
    *,
    kind: RouteKind,
    provider: Provider,
    auths: BedrockAuths,
    upstreams: UpstreamClients,
    body: bytes,
    info: RequestInfo,
    outcome: Outcome,
    byok: bool,
    keepalive_interval: float,
    begin_dump: Callable[[str, Headers, bytes], DumpHandle | None] | None = None,
    actor_headers: Sequence[tuple[bytes, bytes]] = (),
    failover: Failover | None = None,
) -> None:
    """Serve one request of a bedrock provider; fills ``outcome`` for the recorder.

    ``begin_dump(path, headers, body)`` starts the dump of the signed request
    as it goes upstream (secrets are masked by the dump writer).

    In BYOK mode the client's own ``Authorization`` (a Bedrock API key) goes
    upstream instead of the relay's signature.
    """
    client_headers: Headers = scope["headers"]
    try:
        auth = await auths.get(provider)
    except BedrockConfigError as exc:
        log.error("%s", exc)
        await _fail(send, outcome, 500, "bedrock_config_error", str(exc))
        return
    try:
        request = bedrock_request(
            kind,
            provider,
            client_headers,
            scope.get("raw_path") or scope["path"].encode(),
            body,
            info,
        )
    except InvalidAnthropicBody as exc:
        await _fail(send, outcome, 400, "invalid_request", str(exc), "invalid_request_error")
        return
    outcome.upstream_model = request.model_id
    for name, value in actor_headers:  # signed with the rest, so Bedrock-side proxies see them
        request.headers[name.decode("latin-1")] = value.decode("latin-1")
    base = endpoint_url(auth)
    url = base + request.path
    query: bytes = scope.get("query_string", b"")
    if request.native and query:  # /v1/messages?beta=true is the Anthropic API's, not Bedrock's
        url += "?" + query.decode("latin-1")
    if byok:
        credential = _own_authorization(client_headers)
    elif failover is not None:
        credential = []  # a pool of Bedrock API keys: send_upstream adds one key per attempt
    else:
        try:
            credential = await auth.sign("POST", url, request.headers, request.body)
        except BedrockCredentialsError as exc:
            log.error("provider %r: %s", provider.name, exc)
            await _fail(send, outcome, 500, "bedrock_credentials_error", str(exc))
            return
    headers = [
        (k.encode(), v.encode("latin-1")) for k, v in (*request.headers.items(), *credential)
    ]
    headers.append((b"accept-encoding", b"identity"))  # the relay reads what it relays
    call = UpstreamCall(
        upstreams.get(provider.name, base), "POST", url, headers, request.body, failover=failover
    )
    if begin_dump is not None:
        path = url[len(base) :] or "/"
        call.dump = begin_dump(path, headers, request.body)

    accounting = BedrockAccounting()
    state = StreamState()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope, outcome)
            try:
                await _exchange(
                    send, call, request, accounting, outcome, state, keepalive_interval, nursery
                )
            finally:
                nursery.cancel_scope.cancel()
    finally:
        settle_outcome(outcome, state, accounting.facts())


async def _exchange(
    send: Send,
    call: UpstreamCall,
    request: BedrockRequest,
    accounting: BedrockAccounting,
    outcome: Outcome,
    state: StreamState,
    keepalive_interval: float,
    nursery: trio.Nursery,
) -> None:
    outcome.sent_at = trio.current_time()
    try:
        async with send_upstream(
            call.client, call.method, call.url, call.headers, call.body, call.failover
        ) as response:
            if isinstance(response, Exhausted):
                await answer_exhausted(send, "anthropic", outcome, call.failover, response)
                return
            await _relay_response(
                send,
                call,
                response,
                request,
                accounting,
                outcome,
                state,
                keepalive_interval,
                nursery,
            )
    except UpstreamError as exc:
        if state.headers_sent:
            raise
        await fail_before_response(send, "anthropic", outcome, exc)


async def _relay_response(
    send: Send,
    call: UpstreamCall,
    response: UpstreamResponse,
    request: BedrockRequest,
    accounting: BedrockAccounting,
    outcome: Outcome,
    state: StreamState,
    keepalive_interval: float,
    nursery: trio.Nursery,
) -> None:
    dump = call.dump
    outcome.upstream_status = response.status_code
    if dump is not None:
        dump.response_start(response.status_code, response.headers.raw)
    if response.status_code >= 400 or not request.streaming:
        await _relay_whole(send, response, request, accounting, outcome, state, dump)
        return
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": (
                forwardable_response_headers(response.headers.raw, streaming=True)
                if request.native
                else [*SSE_HEADERS, *_request_id(response)]
            ),
        }
    )
    state.headers_sent = True
    state.last_send = trio.current_time()
    if request.native:
        await _relay_event_stream(send, response, accounting, outcome, state, dump)
    else:
        if keepalive_interval > 0:
            nursery.start_soon(keepalive, send, state, keepalive_interval)
        await _relay_as_sse(send, response, accounting, outcome, state, dump)


async def _relay_whole(
    send: Send,
    response: UpstreamResponse,
    request: BedrockRequest,
    accounting: BedrockAccounting,
    outcome: Outcome,
    state: StreamState,
    dump: DumpHandle | None,
) -> None:
    """A blocking answer, or an error before the stream."""
    body = await response.aread()
    if dump is not None:
        dump.response_chunk(body)
    outcome.upstream_complete = True
    status = response.status_code
    headers = forwardable_response_headers(response.headers.raw, streaming=False)
    if status >= 400:
        outcome.status = "failed"
        outcome.error_type = f"upstream_{status}"
        outcome.error_message = body[:2000].decode("utf-8", "replace")
        if not request.native:  # a Bedrock client reads AWS errors; an Anthropic one, Anthropic's
            status, body = map_bedrock_error(status, body, response.headers.multi_items())
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *_request_id(response),
            ]
    else:
        accounting.feed_response(body, response.headers)
    state.headers_sent = True
    await send({"type": "http.response.start", "status": status, "headers": headers})
    outcome.first_byte_at = trio.current_time()
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _relay_as_sse(
    send: Send,
    response: UpstreamResponse,
    accounting: BedrockAccounting,
    outcome: Outcome,
    state: StreamState,
    dump: DumpHandle | None,
) -> None:
    """Bedrock's event stream, re-emitted as Anthropic SSE event by event."""
    try:
        async for chunk in response.aiter_raw():
            if dump is not None:
                dump.response_chunk(chunk)
            if outcome.first_byte_at is None:
                outcome.first_byte_at = trio.current_time()
            events = accounting.feed_stream(chunk)
            if events:
                await send_body(send, state, b"".join([event.sse for event in events]))
            if accounting.stream.finished:
                break  # an error event ended the stream (a corrupt frame, an exception)
        else:
            events = accounting.end_stream()
            if events:
                await send_body(send, state, b"".join([event.sse for event in events]))
        outcome.upstream_complete = True
    except UpstreamError as exc:
        # End with an error event the SDK raises on, never a silent truncation.
        log.warning("bedrock failed mid-stream: %s", type(exc).__name__)
        _fail_mid_stream(outcome, exc)
        assert outcome.error_message is not None
        await send_body(send, state, anthropic_error_event("api_error", outcome.error_message).sse)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_event_stream(
    send: Send,
    response: UpstreamResponse,
    accounting: BedrockAccounting,
    outcome: Outcome,
    state: StreamState,
    dump: DumpHandle | None,
) -> None:
    """Bedrock's event stream to a Bedrock client, unchanged, decoded on the side."""
    try:
        async for chunk in response.aiter_raw():
            if dump is not None:
                dump.response_chunk(chunk)
            if outcome.first_byte_at is None:
                outcome.first_byte_at = trio.current_time()
            await send_body(send, state, chunk)
            accounting.feed_stream(chunk)
        accounting.end_stream()
        outcome.upstream_complete = True
    except UpstreamError as exc:
        log.warning("bedrock failed mid-stream: %s", type(exc).__name__)
        _fail_mid_stream(outcome, exc)
        # No frame can be added safely mid-frame: the response is left
        # unfinished, so the client's HTTP library reports a broken body.
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _fail_mid_stream(outcome: Outcome, exc: Exception) -> None:
    outcome.upstream_complete = True  # a client leaving now cancels nothing
    outcome.status = "failed"
    outcome.error_type = "upstream_stream_error"
    outcome.error_message = f"upstream connection failed mid-stream ({type(exc).__name__})"


async def _fail(
    send: Send,
    outcome: Outcome,
    status: int,
    error_type: str,
    message: str,
    anthropic_type: str = "api_error",
) -> None:
    """The relay cannot make the upstream request: an Anthropic error, recorded as failed."""
    outcome.status = "failed"
    outcome.error_type = error_type
    outcome.error_message = message
    await send_response(send, status, anthropic_error_body(anthropic_type, message))


def _own_authorization(client_headers: Headers) -> list[tuple[str, str]]:
    """BYOK: the person's own Bedrock API key, as ``Authorization: Bearer``."""
    for k, v in client_headers:
        if k == b"authorization":
            return [("authorization", v.decode("latin-1"))]
    for k, v in client_headers:
        if k == b"x-api-key":
            return [("authorization", "Bearer " + v.decode("latin-1").strip())]
    return []


def _request_id(response: UpstreamResponse) -> Headers:
    value = response.headers.get("x-amzn-requestid")
    return [(b"x-amzn-requestid", value.encode("latin-1"))] if value else []
