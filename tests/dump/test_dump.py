"""Dumps: the Coder AI Gateway's layout, secrets masked, never in a stream's way.

Exchanges with the mock upstream (a real server on a loopback port) are dumped
through ``DumpWriter`` with the same calls the interception shell makes.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from bench.replay.capture import capture_exchange
from relay.dump import (
    SUFFIX_CHUNKS,
    SUFFIX_REQUEST,
    SUFFIX_RESPONSE,
    DumpWriter,
    canonical_header_name,
    format_headers,
    mask_header_value,
    parse_request,
    parse_response,
    parse_sidecar,
    safe_model_dir,
)
from relay.metrics import Metrics
from relay.testing.mock_upstream import MockUpstream

ANTHROPIC_KEY = "sk-ant-api03-SECRETSECRETSECRET-abcd"
OPENAI_KEY = "sk-proj-SECRETSECRETSECRET-wxyz"
COOKIE = "session=SECRETCOOKIEVALUE-0042"
GOV_TOKEN = "rly_SECRETGOVERNANCETOKEN-7777"
SECRETS = (ANTHROPIC_KEY, OPENAI_KEY, "SECRETCOOKIEVALUE", "SECRETGOVERNANCETOKEN", "SECRET")


def _headers(api: str) -> list[tuple[str, str]]:
    common = [
        ("content-type", "application/json"),
        ("user-agent", "test-dump/1.0"),
        ("cookie", COOKIE),
        ("x-coder-ai-governance-token", GOV_TOKEN),
    ]
    if api == "anthropic":
        return [("x-api-key", ANTHROPIC_KEY), ("anthropic-version", "2023-06-01"), *common]
    return [("authorization", f"Bearer {OPENAI_KEY}"), *common]


# (provider, api, path, model, body, streamed)
EXCHANGES = [
    ("anthropic", "anthropic", "/v1/messages?beta=true", "mock-tool", True),
    ("openai", "openai", "/v1/chat/completions", "mock-parallel-tools", True),
    ("openai", "openai", "/v1/chat/completions", "mock-text", False),
    ("openai", "openai", "/v1/responses", "mock-thinking", True),
]


def _body(path: str, model: str, stream: bool) -> bytes:
    if path.startswith("/v1/messages"):
        text = '"max_tokens":64,"messages":[{"role":"user","content":"hi"}]'
    elif path == "/v1/chat/completions":
        text = '"messages":[{"role":"user","content":"hi"}]'
        if stream:
            text += ',"stream_options":{"include_usage":true}'
    else:
        text = '"input":"hi"'
    return f'{{"model":"{model}","stream":{str(stream).lower()},{text}}}'.encode()


def _files(base: Path, pattern: str) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(base.rglob(pattern)) if p.is_file()}


def _upstream_url(mock: MockUpstream, api_path: str) -> str:
    return mock.base_url + api_path


async def _dump_all(base: Path, mock: MockUpstream) -> tuple[DumpWriter, Metrics, list[bytes]]:
    metrics = Metrics()
    writer = DumpWriter(base, metrics)
    received: list[bytes] = []
    async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as client:
        await nursery.start(writer.run)
        for provider, api, path, model, stream in EXCHANGES:
            status, body, _ = await capture_exchange(
                client,
                writer,
                provider=provider,
                model=model,
                url=_upstream_url(mock, path),
                method="POST",
                api_path=path,
                headers=_headers(api),
                body=_body(path, model, stream),
            )
            assert status == 200
            received.append(body)
        await capture_exchange(
            client,
            writer,
            provider="anthropic",
            model=None,
            url=mock.base_url + "/v1/models",
            method="GET",
            api_path="/v1/models",
            headers=_headers("anthropic"),
        )
        await writer.aclose()
    return writer, metrics, received


@pytest.fixture
async def mock(nursery: trio.Nursery) -> MockUpstream:
    upstream = MockUpstream(chunking="random", seed=7)
    await nursery.start(upstream.serve)
    return upstream


async def test_dumps_each_api_in_the_gateway_layout(tmp_path: Path, mock: MockUpstream) -> None:
    writer, _metrics, received = await _dump_all(tmp_path, mock)
    assert writer.stats.started == 5 and writer.stats.dropped == 0 and writer.stats.failed == 0
    files = _files(tmp_path, "*")
    requests = [p for p in files if p.name.endswith(SUFFIX_REQUEST)]
    dirs = sorted({p.parent.relative_to(tmp_path).as_posix() for p in requests})
    assert dirs == [
        "anthropic/mock-tool",
        "anthropic/passthrough",
        "openai/mock-parallel-tools",
        "openai/mock-text",
        "openai/mock-thinking",
    ]
    for request_file in requests:
        stem, _, _ = request_file.name.partition(".")
        millis, _, ident = stem.partition("-")
        assert millis.isdigit() and len(millis) == 13
        uuid.UUID(ident)  # raises unless the name ends with a UUID
    # Each response file holds exactly the bytes the client got; the sidecar adds up.
    by_model = {p.parent.name: p for p in requests}
    for (_provider, _api, path, model, stream), body in zip(EXCHANGES, received, strict=True):
        stem = str(by_model[model])[: -len(SUFFIX_REQUEST)]
        request = parse_request(files[Path(stem + SUFFIX_REQUEST)])
        assert (request.method, request.target) == ("POST", path)
        assert request.body == _body(path, model, stream)
        names = [name for name, _ in request.headers]
        assert names == sorted(names)
        assert "Anthropic-Version" in names or "Authorization" in names
        response = parse_response(files[Path(stem + SUFFIX_RESPONSE)])
        assert response.status == 200 and response.body == body
        sidecar = parse_sidecar(files[Path(stem + SUFFIX_CHUNKS)])
        assert sidecar.complete and sidecar.end is not None and sidecar.end.bytes == len(body)
        assert sum(c.size for c in sidecar.chunks) == len(body)
        times = [c.t for c in sidecar.chunks]
        assert times == sorted(times)
        assert sidecar.response is not None and sidecar.response.t <= times[0]
        assert sidecar.request is not None and sidecar.request.model == model
        if stream:
            assert len(sidecar.chunks) > 1  # random chunking: the pieces are kept apart


async def test_secrets_are_masked_in_every_file(tmp_path: Path, mock: MockUpstream) -> None:
    await _dump_all(tmp_path, mock)
    files = _files(tmp_path, "*")
    assert len(files) == 15
    everything = b"".join(files.values())
    for secret in SECRETS:  # grep: not one whole secret anywhere
        assert secret.encode() not in everything, secret
    text = everything.decode("utf-8", "replace")
    assert "X-Api-Key: sk-…abcd\r\n" in text
    assert "Authorization: Bearer sk-…wxyz\r\n" in text
    assert "Cookie: ses…0042\r\n" in text
    assert "X-Coder-Ai-Governance-Token: rly…7777\r\n" in text


async def test_bedrock_stream_dump_masks_sigv4(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A SigV4-signed Bedrock stream: binary event-stream body kept, AWS secrets masked."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from relay.testing.mock_bedrock import MockBedrock

    access_key, secret_key = "AKIDEXAMPLE0000SECRET", "wJalrXUtnFEMI/SECRETSECRETSECRET"
    session_token = "FwoGZXIvYXdzSECRETSESSIONTOKEN0000"
    bedrock = MockBedrock(credentials={access_key: secret_key}, write_size=17)
    await nursery.start(bedrock.serve, 0)
    body = (
        b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    path = "/model/anthropic.claude-haiku/invoke-with-response-stream"
    signed = AWSRequest("POST", bedrock.base_url + path, data=body)
    signed.headers["content-type"] = "application/json"
    SigV4Auth(Credentials(access_key, secret_key, session_token), "bedrock", "us-east-1").add_auth(
        signed
    )
    headers = [(k.lower(), str(v)) for k, v in signed.headers.items()]
    writer = DumpWriter(tmp_path)
    await nursery.start(writer.run)
    async with httpx.AsyncClient(trust_env=False) as client:
        status, received, chunks = await capture_exchange(
            client,
            writer,
            provider="bedrock",
            model="anthropic.claude-haiku",
            url=bedrock.base_url + path,
            method="POST",
            api_path=path,
            headers=headers,
            body=body,
        )
    await writer.aclose()
    assert status == 200 and chunks > 1
    files = _files(tmp_path, "*")
    everything = b"".join(files.values())
    for secret in (secret_key, session_token, "SECRET"):
        assert secret.encode() not in everything
    text = everything.decode("utf-8", "replace")
    assert "Authorization: AWS4-HMAC-SHA256 Cre…" in text
    assert "X-Amz-Security-Token: Fwo…0000\r\n" in text
    response_file = next(p for p in files if p.name.endswith(SUFFIX_RESPONSE))
    assert parse_response(files[response_file]).body == received  # binary frames, as relayed


def test_header_masking_and_names() -> None:
    assert canonical_header_name("x-api-key") == "X-Api-Key"
    assert canonical_header_name("WWW-AUTHENTICATE") == "Www-Authenticate"
    assert mask_header_value("Bearer sk-0123456789abcdef") == "Bearer sk-…cdef"
    assert mask_header_value("short") == "…"
    lines = format_headers(
        [
            (b"set-cookie", b"a=SECRETSECRETSECRET-1"),
            (b"x-ai-gov-token", b"rly_SECRETSECRETSECRET"),
            (b"proxy-authorization", b"Basic dXNlcjpwYXNzd29yZHBhc3N3b3Jk"),
            (b"x-amz-security-token", b"FwoGZXIvYXdzEBYaDSECRETSECRET"),
            (b"www-authenticate", b'Bearer realm="SECRETSECRETSECRET"'),
            (b"accept", b"text/event-stream"),
            (b"api-key", b"azure-SECRETSECRETSECRET"),
            (b"x-auth-token", b"tok-SECRETSECRETSECRET"),
            (b"proxy-authenticate", b'Basic realm="SECRETSECRETSECRET"'),
        ]
    )
    assert b"SECRETSECRET" not in lines
    assert lines.startswith(b"Accept: text/event-stream\r\nApi-Key: azu\xe2\x80\xa6")


def test_model_directory_cannot_escape() -> None:
    assert safe_model_dir("openai/gpt-4o") == "openai-gpt-4o"
    assert safe_model_dir("..") == "_"
    assert safe_model_dir("") == "_"
    assert safe_model_dir("../../etc") == "..-..-etc"


async def test_unwritable_directory_is_one_warning_and_a_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the dump directory should be")
    metrics = Metrics()
    writer = DumpWriter(blocker / "dumps", metrics)
    caplog.set_level(logging.WARNING, logger="relay.dump")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for n in range(3):
            handle = writer.begin("openai", "m", uuid.uuid4(), "POST", "/v1/responses", [], b"{}")
            assert handle is not None
            handle.response_start(200, [(b"content-type", b"text/event-stream")])
            handle.response_chunk(b"data: %d\n\n" % n)  # the stream goes on regardless
            handle.finish()
            await trio.testing.wait_all_tasks_blocked()
        await writer.aclose()
    assert writer.stats.failed == 3
    assert metrics.registry.get_sample_value("relay_dump_write_failures_total") == 3
    warnings = [r for r in caplog.records if r.name == "relay.dump"]
    assert len(warnings) == 1 and "cannot write" in warnings[0].getMessage()


async def test_a_full_queue_drops_that_dump_without_blocking(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = DumpWriter(tmp_path, metrics, queue_size=4)
    # No writer task yet: the queue fills up, and every call still returns at once.
    handle = writer.begin("anthropic", "m", uuid.uuid4(), "POST", "/v1/messages", [], b"{}")
    assert handle is not None
    handle.response_start(200, [])
    for n in range(10):
        handle.response_chunk(b"event %d\n\n" % n)
    handle.finish()
    assert writer.stats.dropped == 1
    assert metrics.registry.get_sample_value("relay_dump_dropped_total") == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()  # the writer has taken the queue
        later = writer.begin("anthropic", "m", uuid.uuid4(), "POST", "/v1/messages", [], b"{}")
        assert later is not None
        later.response_start(200, [])
        later.response_chunk(b"whole")
        later.finish()
        later.finish()  # twice (a finally after a finally): still one end line
        await writer.aclose()
    sidecars = [parse_sidecar(data) for data in _files(tmp_path, "*" + SUFFIX_CHUNKS).values()]
    assert sorted(s.complete for s in sidecars) == [False, True]
    assert writer.stats.dropped == 1


def test_dumping_off_costs_nothing() -> None:
    writer = DumpWriter(None)
    assert not writer.enabled
    assert writer.begin("openai", "m", uuid.uuid4(), "POST", "/v1/responses", [], b"") is None
    assert writer.begin_passthrough("openai", "GET", "/v1/models", []) is None
