"""A mock AWS Bedrock runtime on loopback (trio + h11), for tests and the load harness.

It answers ``POST /model/{modelId}/invoke`` (an Anthropic message as JSON,
with the ``x-amzn-bedrock-*-token-count`` headers) and
``POST /model/{modelId}/invoke-with-response-stream`` (an
``application/vnd.amazon.eventstream`` of ``chunk`` events whose base64
``bytes`` are Anthropic events; the last carries
``amazon-bedrock-invocationMetrics``), the way Bedrock does.

Like Bedrock it refuses what it would refuse: a SigV4 signature it cannot
reproduce with botocore from the request it received and its credential
table (403 ``InvalidSignatureException``), an unknown API key, a body with
``model``/``stream`` or other fields outside Bedrock's schema, a missing
``anthropic_version``, an unknown beta flag (400 ``ValidationException``).

Usage::

    mock = MockBedrock(credentials={"AKIDEXAMPLE": "secret"}, api_keys={"bedrock-key"})
    await nursery.start(mock.serve, 0)
    client points at mock.base_url; mock.requests holds what arrived

``mock.scenario`` (or a request's ``x-mock-scenario`` header) picks the answer:
``text``, ``tool_use``, ``thinking``, ``corrupt_crc``, a stream exception
(``throttling``, ``model_stream_error``, ``validation``, ``internal_server``,
``service_unavailable``, ``model_timeout``) or an error before the stream
(``http_throttling``, ``http_validation``, ``http_not_found``,
``http_access_denied``, ``http_unavailable``, ``http_internal``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import h11
import msgspec
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from relay.intercept.bedrock.translate import BEDROCK_SUPPORTED_BETAS as ACCEPTED_BETAS
from relay.streams.eventstream import encode_message

ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Top-level keys Bedrock refuses as "extraneous" (not in its Anthropic schema).
REJECTED_KEYS = ("model", "stream", "metadata", "service_tier", "container", "inference_geo")
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation "
    "for details."
)
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)


# Scenarios ---------------------------------------------------------------
Event = dict[str, Any]  # one Anthropic streaming event, as JSON
# Known figures, so tests can assert exactly what was recorded.
INPUT_TOKENS = 25
CACHE_WRITE_TOKENS = 1200
CACHE_READ_TOKENS = 3400
TEXT_DELTAS = ("Héllo", " from", " Bedrock", " — ", "你好 🚀")  # non-ASCII on purpose
TOOL_PREAMBLE = "I'll check the weather."
TOOL_ID = "toolu_bdrk_01MockWeather"
TOOL_NAME = "get_weather"
TOOL_FRAGMENTS = ('{"city": "Par', 'is", "unit"', ': "celsius"}')
THINKING_DELTAS = ("Let me think", " — about 6 × 7.")
THINKING_SIGNATURE = "RXFNb2NrU2lnbmF0dXJlRm9yQmVkcm9jaw=="
THINKING_ANSWER_DELTAS = ("The answer", " is 42.")
OUTPUT_TOKENS = {"text": 12, "tool_use": 40, "thinking": 30, "corrupt_crc": 12}

# Scenario -> (HTTP status, AWS error type, message). STREAM_EXCEPTIONS end a stream
# with the exception frame of that type (``throttlingException``…) after a first
# delta; on InvokeModel they are answered as HTTP errors, like HTTP_ERRORS always are.
STREAM_EXCEPTIONS: dict[str, tuple[int, str, str]] = {
    "throttling": (429, "ThrottlingException", "Too many requests, please wait."),
    "model_stream_error": (424, "ModelStreamErrorException", "The model stream failed."),
    "validation": (400, "ValidationException", "Input is too long for requested model."),
    "internal_server": (500, "InternalServerException", "An unexpected error occurred."),
    "service_unavailable": (503, "ServiceUnavailableException", "Service unavailable."),
    "model_timeout": (408, "ModelTimeoutException", "Model has timed out."),
}
HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_throttling": (429, "ThrottlingException", "Too many requests, please wait."),
    "http_validation": (400, "ValidationException", "messages: field required"),
    "http_not_found": (404, "ResourceNotFoundException", "Could not resolve the model."),
    "http_access_denied": (403, "AccessDeniedException", "You don't have access to the model."),
    "http_unavailable": (503, "ServiceUnavailableException", "Service unavailable."),
    "http_internal": (500, "InternalServerException", "Internal server error."),
}
STREAM_SCENARIOS = ("text", "tool_use", "thinking", "corrupt_crc", *STREAM_EXCEPTIONS)


def _model_name(model_id: str) -> str:
    """``global.anthropic.claude-sonnet-4-5-20250929-v1:0`` -> ``claude-sonnet-4-5-20250929``."""
    name = model_id.rsplit("/", 1)[-1].rsplit("anthropic.", 1)[-1]
    return re.sub(r"-v\d+(:\d+)?$", "", name)


def _block(index: int, block: Event, deltas: list[Event]) -> list[Event]:
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def script_for(scenario: str, model_id: str) -> list[Event]:
    """The Anthropic events of a scenario, as Bedrock would stream them."""
    usage: Event = {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
        "cache_read_input_tokens": CACHE_READ_TOKENS,
        "output_tokens": 1,
    }
    message: Event = {
        "id": "msg_bdrk_01MockBedrockMessage",
        "type": "message",
        "role": "assistant",
        "model": _model_name(model_id),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[Event] = [{"type": "message_start", "message": message}]
    text: list[Event] = [{"type": "text_delta", "text": t} for t in TEXT_DELTAS]
    if scenario in STREAM_EXCEPTIONS:  # cut after the first delta
        return events + _block(0, {"type": "text", "text": ""}, text[:1])[:2]
    stop_reason = "end_turn"
    if scenario == "tool_use":
        stop_reason = "tool_use"
        tool: Event = {"type": "tool_use", "id": TOOL_ID, "name": TOOL_NAME, "input": {}}
        fragments = ["", *TOOL_FRAGMENTS]
        preamble: list[Event] = [{"type": "text_delta", "text": TOOL_PREAMBLE}]
        json_deltas: list[Event] = [
            {"type": "input_json_delta", "partial_json": f} for f in fragments
        ]
        events += _block(0, {"type": "text", "text": ""}, preamble)
        events += _block(1, tool, json_deltas)
    elif scenario == "thinking":
        thoughts: list[Event] = [{"type": "thinking_delta", "thinking": t} for t in THINKING_DELTAS]
        thoughts.append({"type": "signature_delta", "signature": THINKING_SIGNATURE})
        answer: list[Event] = [{"type": "text_delta", "text": t} for t in THINKING_ANSWER_DELTAS]
        events += _block(0, {"type": "thinking", "thinking": "", "signature": ""}, thoughts)
        events += _block(1, {"type": "text", "text": ""}, answer)
    else:
        events += _block(0, {"type": "text", "text": ""}, text)
    output_tokens = OUTPUT_TOKENS.get(scenario, 12)
    metrics = {
        "inputTokenCount": INPUT_TOKENS,
        "outputTokenCount": output_tokens,
        "invocationLatency": 812,
        "firstByteLatency": 305,
        "cacheReadInputTokenCount": CACHE_READ_TOKENS,
        "cacheWriteInputTokenCount": CACHE_WRITE_TOKENS,
    }
    return [
        *events,
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics},
    ]


def message_from_events(events: list[Event]) -> tuple[Event, Event]:
    """The InvokeModel body (an Anthropic message) and the metrics, from a stream script."""
    message = dict(events[0]["message"])
    blocks: list[Event] = []
    partial: dict[int, str] = {}
    metrics: Event = {}
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
        elif kind == "message_stop":
            metrics = event["amazon-bedrock-invocationMetrics"]
    for index, text in partial.items():
        blocks[index]["input"] = msgspec.json.decode(text)
    message["content"] = blocks
    return message, metrics


class RecordedRequest(msgspec.Struct):
    method: str
    path: str  # the raw request target, query included
    headers: list[tuple[str, str]]  # names in lower case, in order received
    body: bytes
    status: int = 0  # what the mock answered

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


class _Reject(Exception):
    def __init__(self, status: int, aws_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.aws_type, self.message = status, aws_type, message


class MockBedrock:
    def __init__(
        self,
        *,
        region: str = "us-east-1",
        credentials: Mapping[str, str] | None = None,
        session_tokens: Mapping[str, str] | None = None,
        api_keys: Iterable[str] = (),
        scenario: str = "text",
        write_size: int | None = None,
    ) -> None:
        self.region = region
        self.credentials = dict(credentials or {})  # access key id -> secret access key
        # access key id -> the session token it must come with (optional check)
        self.session_tokens = dict(session_tokens or {})
        self.api_keys = set(api_keys)
        self.scenario = scenario
        # Write responses in pieces of this many bytes (None: one frame per write).
        self.write_size = write_size
        self.requests: list[RecordedRequest] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[MockBedrock] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await _read_request(conn, stream)
                if received is None:
                    return
                await self._answer(conn, stream, *received)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client left; nothing to answer
        finally:
            await stream.aclose()

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> None:
        recorded = RecordedRequest(
            method=request.method.decode(),
            path=request.target.decode(),
            headers=[(k.decode().lower(), v.decode()) for k, v in request.headers],
            body=body,
        )
        self.requests.append(recorded)
        try:
            operation, model_id = _route(recorded)
            self._authenticate(recorded)
            _validate_body(body)
        except _Reject as reject:
            recorded.status = reject.status
            await _send_error(conn, stream, reject)
            return
        scenario = recorded.header("x-mock-scenario") or self.scenario
        if scenario in HTTP_ERRORS or (operation == "invoke" and scenario in STREAM_EXCEPTIONS):
            status, aws_type, message = HTTP_ERRORS.get(scenario) or STREAM_EXCEPTIONS[scenario]
            recorded.status = status
            await _send_error(conn, stream, _Reject(status, aws_type, message))
            return
        if scenario not in STREAM_SCENARIOS:
            recorded.status = 400
            await _send_error(conn, stream, _Reject(400, "ValidationException", f"no {scenario}"))
            return
        recorded.status = 200
        events = script_for(scenario, model_id)
        if operation == "invoke":
            await _send_message(conn, stream, events)
        else:
            await self._send_stream(conn, stream, scenario, events)

    def _authenticate(self, request: RecordedRequest) -> None:
        authorization = request.header("authorization")
        if authorization is None:
            raise _Reject(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        if authorization.startswith("Bearer "):
            if authorization[len("Bearer ") :] not in self.api_keys:
                raise _Reject(403, "UnrecognizedClientException", "Invalid API Key format")
            return
        self._verify_sigv4(request, authorization)

    def _verify_sigv4(self, request: RecordedRequest, authorization: str) -> None:
        scheme, _, rest = authorization.partition(" ")
        fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
        if scheme != "AWS4-HMAC-SHA256" or not {"Credential", "SignedHeaders", "Signature"} <= set(
            fields
        ):
            raise _Reject(403, "IncompleteSignatureException", "Authorization header is malformed")
        access_key, _, scope = fields["Credential"].partition("/")
        secret = self.credentials.get(access_key)
        if secret is None:
            raise _Reject(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = request.header("x-amz-date") or ""
        if scope != f"{amz_date[:8]}/{self.region}/bedrock/aws4_request":
            raise _Reject(403, "InvalidSignatureException", f"Credential scope {scope!r} is wrong")
        try:
            signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise _Reject(403, "IncompleteSignatureException", "X-Amz-Date is malformed") from None
        if abs(dt.datetime.now(dt.UTC) - signed_at) > MAX_CLOCK_SKEW:
            raise _Reject(403, "InvalidSignatureException", "Signature expired")
        expected_token = self.session_tokens.get(access_key)
        if expected_token is not None and request.header("x-amz-security-token") != expected_token:
            raise _Reject(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        signed_names = fields["SignedHeaders"].split(";")
        if "host" not in signed_names or "x-amz-date" not in signed_names:
            raise _Reject(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        signed: dict[str, str] = {}
        for name in signed_names:
            values = [v for k, v in request.headers if k == name]
            if not values:
                raise _Reject(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
            signed[name] = ",".join(values)
        content_sha = signed.get("x-amz-content-sha256")
        if content_sha not in (None, hashlib.sha256(request.body).hexdigest()):
            raise _Reject(400, "ValidationException", "x-amz-content-sha256 does not match body")
        # Recompute with botocore from what arrived, as AWS does on its side.
        aws_request = AWSRequest(
            method=request.method,
            url=f"http://{signed['host']}{request.path}",
            headers=signed,
            data=request.body,
        )
        aws_request.context["timestamp"] = amz_date
        signer = SigV4Auth(ReadOnlyCredentials(access_key, secret, None), "bedrock", self.region)
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        if not hmac.compare_digest(expected, fields["Signature"]):
            raise _Reject(403, "InvalidSignatureException", SIGNATURE_MISMATCH)

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        scenario: str,
        events: list[Event],
    ) -> None:
        frames = [_chunk_frame(event, i) for i, event in enumerate(events)]
        if scenario in STREAM_EXCEPTIONS:
            _, aws_type, message = STREAM_EXCEPTIONS[scenario]
            exception_type = aws_type[0].lower() + aws_type[1:]  # the stream's spelling
            frames.append(
                encode_message(
                    {
                        ":message-type": "exception",
                        ":exception-type": exception_type,
                        ":content-type": "application/json",
                    },
                    msgspec.json.encode({"message": message}),
                )
            )
        elif scenario == "corrupt_crc":
            # Flip one payload bit of the second frame: its message CRC no longer matches.
            broken = bytearray(frames[1])
            broken[len(broken) // 2] ^= 0x01
            frames = [frames[0], bytes(broken), *frames[2:]]
        headers = [
            ("content-type", "application/vnd.amazon.eventstream"),
            ("x-amzn-bedrock-content-type", "application/json"),
            ("x-amzn-requestid", _request_id(len(self.requests))),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        if self.write_size:
            whole = b"".join(frames)
            frames = [whole[i : i + self.write_size] for i in range(0, len(whole), self.write_size)]
        for frame in frames:
            await stream.send_all(conn.send(h11.Data(data=frame)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request, bytes] | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _route(request: RecordedRequest) -> tuple[str, str]:
    """(operation, model id) of ``POST /model/{modelId}/{operation}``."""
    path = request.path.split("?", 1)[0]
    parts = path.split("/")
    if (
        request.method == "POST"
        and len(parts) == 4
        and parts[1] == "model"
        and parts[3] in ("invoke", "invoke-with-response-stream")
    ):
        return parts[3], unquote(parts[2])
    raise _Reject(404, "UnknownOperationException", f"no route for {request.method} {path}")


def _validate_body(body: bytes) -> Event:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        raise _Reject(400, "ValidationException", "Malformed input request, please reformat")
    if "anthropic_version" not in decoded:
        raise _Reject(
            400,
            "ValidationException",
            "Malformed input request: #: required key [anthropic_version] not found, "
            "please reformat your input and try again.",
        )
    if decoded["anthropic_version"] != ANTHROPIC_VERSION:
        raise _Reject(400, "ValidationException", "Invalid API version")
    for key in REJECTED_KEYS:
        if key in decoded:
            raise _Reject(
                400,
                "ValidationException",
                f"Malformed input request: #: extraneous key [{key}] is not permitted, "
                "please reformat your input and try again.",
            )
    betas = decoded.get("anthropic_beta", [])
    if not isinstance(betas, list) or any(b not in ACCEPTED_BETAS for b in betas):
        raise _Reject(400, "ValidationException", "invalid beta flag")
    return decoded


def _request_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _chunk_frame(event: Mapping[str, object], index: int) -> bytes:
    encoded = base64.b64encode(msgspec.json.encode(event)).decode()
    # Bedrock pads each chunk with a "p" field of varying length (length hiding).
    padding = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[: 8 + index % 40]
    payload = msgspec.json.encode({"bytes": encoded, "p": padding})
    return encode_message(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


async def _send_message(
    conn: h11.Connection, stream: trio.SocketStream, events: list[Event]
) -> None:
    message, metrics = message_from_events(events)
    counts = [
        ("invocation-latency", "invocationLatency"),
        ("input-token-count", "inputTokenCount"),
        ("output-token-count", "outputTokenCount"),
        ("cache-read-input-token-count", "cacheReadInputTokenCount"),
        ("cache-write-input-token-count", "cacheWriteInputTokenCount"),
    ]
    headers = [(f"x-amzn-bedrock-{name}", str(metrics[key])) for name, key in counts]
    await _send_json(conn, stream, 200, message, headers)


async def _send_error(conn: h11.Connection, stream: trio.SocketStream, reject: _Reject) -> None:
    error_type = f"{reject.aws_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    headers = [("x-amzn-errortype", error_type)]
    await _send_json(conn, stream, reject.status, {"message": reject.message}, headers)


async def _send_json(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    document: object,
    headers: list[tuple[str, str]],
) -> None:
    body = msgspec.json.encode(document)
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-amzn-requestid", _request_id(0)),
        *headers,
    ]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
