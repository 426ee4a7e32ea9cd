"""Issue 13 item 9: record and metric defects, each through the real part.

- interception ids are time-ordered (UUID version 7), as the docs promise;
- a blocking upstream 200 whose JSON body is cut short is recorded as
  ``failed`` with a parse error (Coder's ``wrong_response_format`` capture);
- the Bedrock provider's start-up line names its endpoint and access key.
(``key_pool_failover_attempts`` is checked in tests/e2e/test_access_e2e.py.)
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from relay.options import load_options
from relay.record.events import new_id
from relay.server import run_server
from tests.relay_harness import running_relay


def test_new_ids_are_version_7_and_strictly_increasing():
    before_ms = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]  # many within each millisecond
    after_ms = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert all(a < b for a, b in itertools.pairwise(ids)), "not in creation order"
    assert all(a.bytes < b.bytes for a, b in itertools.pairwise(ids))  # as PostgreSQL sorts
    for i in (ids[0], ids[-1]):
        assert before_ms <= i.int >> 80 <= after_ms  # 48 bits of Unix milliseconds
    assert len({i.int & ((1 << 62) - 1) for i in ids}) == len(ids)  # random tails differ
    assert ids[0] == uuid.UUID(str(ids[0])) and hash(ids[0]) == hash(uuid.UUID(str(ids[0])))


def test_a_forked_child_draws_new_random_bits():
    """The random bits come from a pool: a child must not reuse what its parent has left."""
    tail = (1 << 62) - 1
    new_id()  # the pool is filled and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id's random tail, then out at once
        try:
            os.write(write, (new_id().int & tail).to_bytes(8))
        finally:
            os._exit(0)
    os.close(write)
    child_tail = int.from_bytes(os.read(read, 8))
    os.close(read)
    os.waitpid(pid, 0)
    assert child_tail != new_id().int & tail


# A blocking Responses answer cut in the middle of its JSON, with a correct
# Content-Length: the HTTP exchange is whole, the body is not a response.
TRUNCATED = b'{"id":"resp_0123","object":"response","status":"completed","usage":{"input_tok'


async def serve_truncated_json(task_status: trio.TaskStatus[int]) -> None:
    """An upstream answering every request with 200 and ``TRUNCATED`` (raw sockets)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += await stream.receive_some(65536)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(TRUNCATED), TRUNCATED)
            )

    await trio.serve_listeners(answer, listeners)


async def test_truncated_blocking_json_is_recorded_failed(pg_dsn: str, tmp_path: Path):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_truncated_json)
        env = {
            "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "openai",
            "CODER_AI_GATEWAY_PROVIDER_0_NAME": "cut",
            "CODER_AI_GATEWAY_PROVIDER_0_KEY": "sk-upstream-test-key-0001",
            "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": f"http://127.0.0.1:{port}/v1/",
        }
        async with running_relay(pg_dsn, tmp_path, env) as relay:
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.post(
                    relay.gateway("cut") + "/v1/responses",
                    headers={"authorization": f"Bearer {relay.token}"},
                    json={"model": "gpt-4.1", "input": "hi"},
                )
            # The client gets the upstream's bytes as they came.
            assert (response.status_code, response.content) == (200, TRUNCATED)
            rows = await relay.wait_for_rows("SELECT * FROM interceptions")
            assert rows[0]["id"].version == 7
            assert rows[0]["status"] == "failed"
            assert rows[0]["error_type"] == "response_parse_error"
            assert "could not be parsed" in rows[0]["error_message"]
            assert await relay.db.fetchval("SELECT count(*) FROM token_usages") == 0
        nursery.cancel_scope.cancel()


@pytest.fixture
def hermetic_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("hermetic_aws")
async def test_bedrock_start_up_line_names_its_endpoint_and_access_key(pg_dsn: str, tmp_path: Path):
    access_key = "AKIDRELAYSTARTUP0001"
    env = {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
        "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "bedrock",
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": "claude-aws",
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_BASE_URL": "http://127.0.0.1:9/bedrock",
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_REGION": "us-west-2",
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_ACCESS_KEY": access_key,
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_ACCESS_KEY_SECRET": "relay-startup-secret-0000000000",
    }
    lines: list[str] = []
    stop = trio.Event()
    options = load_options(env, warn=lambda line: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_server(
                options,
                env=env,
                shutdown_trigger=stop.wait,
                out=lines.append,
                task_status=task_status,
            )
        )
        stop.set()
    line = next(line for line in lines if "provider claude-aws" in line)
    assert "-> http://127.0.0.1:9/bedrock" in line, line
    assert "(default endpoint)" not in line and "(no key)" not in line, line
    assert f"aws {access_key[:3]}…{access_key[-4:]}" in line, line
    assert "relay-startup-secret" not in "\n".join(lines)
