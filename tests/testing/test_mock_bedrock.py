"""The mock Bedrock speaks Bedrock's wire format and refuses what Bedrock refuses.

Its streams are checked with decoders it does not share with the relay: the
official Anthropic SDK's Bedrock client and botocore's ``EventStreamBuffer``.
Its signature check is exercised with requests signed by botocore directly.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import anthropic
import httpx
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from relay.intercept.bedrock.stream import BedrockStreamTranslator
from relay.testing.mock_bedrock import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    HTTP_ERRORS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    SIGNATURE_MISMATCH,
    STREAM_EXCEPTIONS,
    TEXT_DELTAS,
    THINKING_ANSWER_DELTAS,
    THINKING_DELTAS,
    TOOL_FRAGMENTS,
    TOOL_NAME,
    MockBedrock,
)

MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
ACCESS_KEY = "AKIAMOCKBEDROCK00001"
SECRET = "mock-bedrock-secret-0123456789abcdefghij"
API_KEY = "ABSKbW9jay1iZWRyb2NrLWtleQ=="
# This SDK release fills in its own API version; Bedrock wants its own.
BEDROCK_VERSION = {"anthropic_version": "bedrock-2023-05-31"}
BODY = {**BEDROCK_VERSION, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def mock(nursery: trio.Nursery) -> MockBedrock:
    server = MockBedrock(credentials={ACCESS_KEY: SECRET}, api_keys={API_KEY})
    await nursery.start(server.serve, 0)
    return server


@pytest.fixture
def sdk(mock: MockBedrock) -> anthropic.AsyncAnthropicBedrock:
    return anthropic.AsyncAnthropicBedrock(
        api_key=API_KEY, aws_region="us-east-1", base_url=mock.base_url, max_retries=0
    )


def path(model: str = MODEL, stream: bool = True) -> str:
    operation = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{model.replace(':', '%3A')}/{operation}"


async def post(
    mock: MockBedrock,
    body: object = BODY,
    *,
    stream: bool = True,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    auth = {"authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.post(
            mock.base_url + path(stream=stream),
            content=json.dumps(body).encode(),
            headers=auth | (headers or {}),
        )


def botocore_messages(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, m.payload) for m in buffer]


def chunk_events(data: bytes) -> list[dict[str, object]]:
    events = []
    for headers, payload in botocore_messages(data):
        assert headers == {
            ":event-type": "chunk",
            ":content-type": "application/json",
            ":message-type": "event",
        }
        events.append(json.loads(base64.b64decode(json.loads(payload)["bytes"])))
    return events


# --- the official SDK as the client ----------------------------------------------------


async def test_sdk_blocking(sdk: anthropic.AsyncAnthropicBedrock, mock: MockBedrock) -> None:
    raw = await sdk.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_body=BEDROCK_VERSION,
    )
    message = await raw.parse()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "".join(TEXT_DELTAS)  # type: ignore[union-attr]
    assert message.model == "claude-sonnet-4-5-20250929"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS["text"])
    assert usage.cache_read_input_tokens == CACHE_READ_TOKENS
    assert usage.cache_creation_input_tokens == CACHE_WRITE_TOKENS
    assert raw.headers["x-amzn-bedrock-cache-read-input-token-count"] == str(CACHE_READ_TOKENS)
    assert raw.headers["x-amzn-bedrock-cache-write-input-token-count"] == str(CACHE_WRITE_TOKENS)
    assert raw.headers["x-amzn-bedrock-input-token-count"] == str(INPUT_TOKENS)
    assert mock.requests[-1].path == f"/model/{MODEL}/invoke"  # the SDK leaves ":" as is


@pytest.mark.parametrize("scenario", ["text", "tool_use", "thinking"])
async def test_sdk_streaming(
    sdk: anthropic.AsyncAnthropicBedrock, mock: MockBedrock, scenario: str
) -> None:
    mock.scenario = scenario
    async with sdk.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_body=BEDROCK_VERSION,
    ) as stream:
        message = await stream.get_final_message()
    blocks = {b.type: b for b in message.content}
    if scenario == "text":
        assert blocks["text"].text == "".join(TEXT_DELTAS)  # type: ignore[union-attr]
    elif scenario == "tool_use":
        assert blocks["tool_use"].name == TOOL_NAME  # type: ignore[union-attr]
        assert blocks["tool_use"].input == json.loads("".join(TOOL_FRAGMENTS))  # type: ignore[union-attr]
        assert message.stop_reason == "tool_use"
    else:
        assert blocks["thinking"].thinking == "".join(THINKING_DELTAS)  # type: ignore[union-attr]
        assert blocks["text"].text == "".join(THINKING_ANSWER_DELTAS)  # type: ignore[union-attr]
    assert message.usage.output_tokens == OUTPUT_TOKENS[scenario]
    assert message.usage.cache_read_input_tokens == CACHE_READ_TOKENS


async def test_sdk_sees_errors_before_the_stream(
    sdk: anthropic.AsyncAnthropicBedrock, mock: MockBedrock
) -> None:
    mock.scenario = "http_throttling"
    with pytest.raises(anthropic.RateLimitError):
        await sdk.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_body=BEDROCK_VERSION,
        )


# --- the event stream, read with botocore ------------------------------------------------


async def test_stream_frames_and_invocation_metrics(mock: MockBedrock) -> None:
    response = await post(mock)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    events = chunk_events(response.content)
    assert events[0]["type"] == "message_start"
    assert events[-1] == {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": INPUT_TOKENS,
            "outputTokenCount": OUTPUT_TOKENS["text"],
            "invocationLatency": 812,
            "firstByteLatency": 305,
            "cacheReadInputTokenCount": CACHE_READ_TOKENS,
            "cacheWriteInputTokenCount": CACHE_WRITE_TOKENS,
        },
    }


async def test_write_size_changes_framing_not_bytes(mock: MockBedrock) -> None:
    whole = (await post(mock)).content
    mock.write_size = 7
    assert (await post(mock)).content == whole


async def test_relay_translation_agrees_with_botocore(mock: MockBedrock) -> None:
    mock.scenario = "tool_use"
    data = (await post(mock)).content
    translator = BedrockStreamTranslator()
    translated = [*translator.feed(data[:101]), *translator.feed(data[101:]), *translator.end()]
    expected = chunk_events(data)
    del expected[-1]["amazon-bedrock-invocationMetrics"]
    assert [json.loads(e.data) for e in translated] == expected
    usage = translator.usage()
    assert usage is not None and usage.cache_write_tokens == CACHE_WRITE_TOKENS


@pytest.mark.parametrize("scenario", sorted(STREAM_EXCEPTIONS))
async def test_stream_exceptions(mock: MockBedrock, scenario: str) -> None:
    mock.scenario = scenario
    status, aws_type, message = STREAM_EXCEPTIONS[scenario]
    messages = botocore_messages((await post(mock)).content)
    headers, payload = messages[-1]
    assert headers == {
        ":message-type": "exception",
        ":exception-type": aws_type[0].lower() + aws_type[1:],
        ":content-type": "application/json",
    }
    assert json.loads(payload) == {"message": message}
    assert len(messages) == 4  # message_start, a block start, one delta, the exception
    blocking = await post(mock, stream=False)
    assert blocking.status_code == status
    assert blocking.headers["x-amzn-errortype"].split(":")[0] == aws_type


async def test_corrupt_crc_is_a_checksum_error_for_botocore(mock: MockBedrock) -> None:
    mock.scenario = "corrupt_crc"
    with pytest.raises(ChecksumMismatch):
        botocore_messages((await post(mock)).content)


@pytest.mark.parametrize("scenario", sorted(HTTP_ERRORS))
async def test_errors_before_the_stream(mock: MockBedrock, scenario: str) -> None:
    status, aws_type, message = HTTP_ERRORS[scenario]
    for stream in (True, False):
        response = await post(mock, stream=stream, headers={"x-mock-scenario": scenario})
        assert response.status_code == status
        assert response.headers["x-amzn-errortype"].split(":")[0] == aws_type
        assert response.json() == {"message": message}
    assert mock.requests[-1].status == status


# --- what Bedrock refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        ({"model": MODEL}, "extraneous key [model]"),
        ({"stream": True}, "extraneous key [stream]"),
        ({"metadata": {"user_id": "u"}}, "extraneous key [metadata]"),
        ({"anthropic_version": None}, "required key [anthropic_version]"),
        ({"anthropic_beta": ["claude-code-20250219"]}, "invalid beta flag"),
    ],
)
async def test_bodies_bedrock_refuses(
    mock: MockBedrock, change: dict[str, object], message_part: str
) -> None:
    body = {k: v for k, v in (BODY | change).items() if v is not None}
    response = await post(mock, body)
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert message_part in response.json()["message"]


async def test_accepted_beta(mock: MockBedrock) -> None:
    body = BODY | {"anthropic_beta": ["interleaved-thinking-2025-05-14"]}
    assert (await post(mock, body)).status_code == 200


# --- SigV4 verification -------------------------------------------------------------------


def botocore_signed(
    mock: MockBedrock, body: bytes, *, secret: str = SECRET, when: dt.datetime | None = None
) -> dict[str, str]:
    request = AWSRequest(
        method="POST",
        url=mock.base_url + path(),
        data=body,
        headers={"content-type": "application/json"},
    )
    signer = SigV4Auth(Credentials(ACCESS_KEY, secret, "tok"), "bedrock", mock.region)
    if when is None:
        signer.add_auth(request)
    else:  # sign as botocore would have at ``when``
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        signer._modify_request_before_signing(request)
        signature = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        signer._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


async def send(mock: MockBedrock, headers: dict[str, str], body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.post(mock.base_url + path(), content=body, headers=headers)


async def test_botocore_signature_is_accepted(mock: MockBedrock) -> None:
    body = json.dumps(BODY).encode()
    response = await send(mock, botocore_signed(mock, body), body)
    assert response.status_code == 200
    assert mock.requests[-1].header("x-amz-security-token") == "tok"


@pytest.mark.parametrize("tamper", ["secret", "body", "header", "date", "token"])
async def test_signature_mismatch_is_refused(mock: MockBedrock, tamper: str) -> None:
    body = json.dumps(BODY).encode()
    if tamper == "date":
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
        response = await send(mock, botocore_signed(mock, body, when=stale), body)
        assert response.status_code == 403
        assert response.json() == {"message": "Signature expired"}
        return
    headers = botocore_signed(mock, body, secret=SECRET + "x" if tamper == "secret" else SECRET)
    if tamper == "header":
        headers["Content-Type"] = "text/plain"
    if tamper == "token":
        mock.session_tokens[ACCESS_KEY] = "another token"
        response = await send(mock, headers, body)
        assert response.headers["x-amzn-errortype"].startswith("UnrecognizedClientException:")
        return
    response = await send(mock, headers, body + b" " if tamper == "body" else body)
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert response.json() == {"message": SIGNATURE_MISMATCH}


async def test_missing_or_unknown_credentials(mock: MockBedrock) -> None:
    body = json.dumps(BODY).encode()
    response = await send(mock, {}, body)
    assert (response.status_code, response.json()) == (
        403,
        {"message": "Missing Authentication Token"},
    )
    headers = botocore_signed(mock, body)
    headers["Authorization"] = headers["Authorization"].replace(ACCESS_KEY, "AKIAUNKNOWN000000000")
    response = await send(mock, headers, body)
    assert response.headers["x-amzn-errortype"].startswith("UnrecognizedClientException:")
    bearer = await send(mock, {"authorization": "Bearer not-a-known-key"}, body)
    assert bearer.status_code == 403
