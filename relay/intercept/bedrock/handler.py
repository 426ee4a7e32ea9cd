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
The exchange is the shell's (``relay.intercept.base``: key failover,
cancellation, keepalive, mid-stream failures, the outcome): this module
prepares the signed call (``prepare_bedrock_exchange``, the bedrock kind's
hook) and says how the answer is relayed (``BedrockRelay``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import trio

from relay.asgi import Headers, Scope, Send, forwardable_response_headers, send_response
from relay.dump import DumpHandle
from relay.facts import Facts
from relay.intercept.base import Exchange, Outcome, UpstreamCall
from relay.intercept.bedrock.accounting import BedrockAccounting
from relay.intercept.bedrock.stream import anthropic_error_event, map_bedrock_error
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
from relay.upstream.http11 import UpstreamResponse
from relay.upstream.keypool import Failover
from relay.wire.common import RequestInfo
from relay.wire.errors import ANTHROPIC_ERRORS

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


async def prepare_bedrock_exchange(
    send: Send,
    scope: Scope,
    *,
    route: RouteKind,
    provider: Provider,
    auths: BedrockAuths,
    upstreams: UpstreamClients,
    body: bytes,
    info: RequestInfo,
    outcome: Outcome,
    byok: bool,
    begin_dump: Callable[[str, Headers, bytes], DumpHandle | None],
    actor_headers: Headers,
    failover: Failover | None,
) -> Exchange | None:
    """The signed Bedrock call for one client request, and the relay of its answer.

    Answers the client itself (an Anthropic error, recorded as failed) and
    returns None when the request cannot be made: the provider's AWS
    configuration or credentials fail, or the body cannot be translated.
    ``begin_dump(path, headers, body)`` starts the dump of the signed request
    as it goes upstream (secrets are masked by the dump writer). In BYOK mode
    the client's own ``Authorization`` (a Bedrock API key) goes upstream
    instead of the relay's signature.
    """
    client_headers: Headers = scope["headers"]
    try:
        auth = await auths.get(provider)
    except BedrockConfigError as exc:
        log.error("%s", exc)
        await _fail(send, outcome, 500, "bedrock_config_error", str(exc))
        return None
    try:
        request = bedrock_request(
            route,
            provider,
            client_headers,
            scope.get("raw_path") or scope["path"].encode(),
            body,
            info,
        )
    except InvalidAnthropicBody as exc:
        await _fail(send, outcome, 400, "invalid_request", str(exc))
        return None
    outcome.upstream_model = request.model_id
    for name, value in actor_headers:  # signed with the rest: Bedrock-side proxies see them
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
            return None
    headers = [
        (k.encode(), v.encode("latin-1")) for k, v in (*request.headers.items(), *credential)
    ]
    headers.append((b"accept-encoding", b"identity"))  # the relay reads what it relays
    dump = begin_dump(url[len(base) :] or "/", headers, request.body)
    call = UpstreamCall(
        upstreams.get(provider.name, base),
        "POST",
        url,
        headers,
        request.body,
        failover=failover,
        dump=dump,
    )
    return Exchange(call, BedrockRelay(request))


class BedrockRelay:
    """Bedrock's answer through the shell (``relay.intercept.base.ResponseRelay``).

    To an Anthropic client: the event stream re-emitted as Anthropic SSE event
    by event, errors before it mapped to Anthropic errors. To a Bedrock client:
    everything unchanged (event stream included), decoded on the side. Both
    feed ``BedrockAccounting``.
    """

    __slots__ = ("_accounting", "_request", "keepalive")

    at_boundary = True  # only whole events (or, native, nothing ever added) reach the client

    def __init__(self, request: BedrockRequest) -> None:
        self._request = request
        self._accounting = BedrockAccounting()
        # SSE comments only on the Anthropic SSE stream; an event stream has none.
        self.keepalive = not request.native

    @property
    def finished(self) -> bool:
        # An error event ended the translated stream (a corrupt frame, an exception).
        return not self._request.native and self._accounting.stream.finished

    def facts(self) -> Facts:
        return self._accounting.facts()

    def streams(self, response: UpstreamResponse) -> bool:
        return self._request.streaming

    def stream_headers(self, response: UpstreamResponse) -> Headers:
        if self._request.native:
            return forwardable_response_headers(response.headers.raw, streaming=True)
        return [*SSE_HEADERS, *_request_id(response)]

    def whole(self, response: UpstreamResponse, body: bytes) -> tuple[int, Headers, bytes]:
        status = response.status_code
        headers = forwardable_response_headers(response.headers.raw, streaming=False)
        if status < 400:
            self._accounting.feed_response(body, response.headers)
        elif not self._request.native:
            # A Bedrock client reads AWS errors; an Anthropic one, Anthropic's.
            status, body = map_bedrock_error(status, body, response.headers.multi_items())
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *_request_id(response),
            ]
        return status, headers, body

    def feed(self, chunk: bytes) -> bytes:
        events = self._accounting.feed_stream(chunk)
        if self._request.native:
            return chunk
        return b"".join([event.sse for event in events])

    def end(self) -> bytes:
        events = self._accounting.end_stream()
        if self._request.native:
            return b""
        return b"".join([event.sse for event in events])

    def stream_error(self, message: str) -> bytes | None:
        if self._request.native:
            return None  # no frame can be added safely mid-frame
        return anthropic_error_event("api_error", message).sse


async def _fail(send: Send, outcome: Outcome, status: int, error_type: str, message: str) -> None:
    """The relay cannot make the upstream request: an Anthropic error, recorded as failed."""
    outcome.status = "failed"
    outcome.error_type = error_type
    outcome.error_message = message
    await send_response(send, status, ANTHROPIC_ERRORS.body(status, message))


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
