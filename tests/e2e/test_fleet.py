"""The fleet command of docs/deployment.md: hypercorn's own master with two trio workers.

Exactly as documented (``hypercorn -k trio -w 2 -b … --graceful-timeout 30
'relay.app:create_app()'``), on an external PostgreSQL. Requests reach both
workers (which worker holds a connection is read from /proc), and a
provider added with the CLI afterwards is served by both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_harness import clean_env, mock_providers_env

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "relay"), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def process_holding(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """The pid among ``pids`` that holds the accepted end of the client's connection."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server_port and (
                int(remote.split(":")[1], 16) == client_port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


async def chat(port: int, provider: str, token: str, pids: set[int]) -> tuple[int, int | None]:
    """One request on its own connection: (status, the worker that answered it)."""
    body = json.dumps(
        {"model": "mock-text", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    head = (
        f"POST /api/v2/ai-gateway/{provider}/v1/chat/completions HTTP/1.1\r\n"
        f"host: 127.0.0.1:{port}\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head + body)
        received = b""
        while b"\r\n" not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, "the relay closed the connection without an answer"
            received += chunk
        status = int(received.split(b" ", 2)[1])
        client_port = stream.socket.getsockname()[1]
        return status, process_holding(port, client_port, pids)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def worker_pids(master: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == master:
                found.add(int(entry))
    return found


async def test_two_hypercorn_workers_serve_and_both_see_a_cli_change(pg_dsn, tmp_path):
    mock = MockUpstream(chunking="event")
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = clean_env(
            CODER_PG_CONNECTION_URL=pg_dsn,
            CODER_AI_GATEWAY_DATA_DIR=str(tmp_path / "data"),
            **mock_providers_env(mock),
        )
        cli("users", "create", "alice", env=env)
        token = cli("tokens", "create", "--user", "alice", env=env).strip()
        port = free_port()
        command = [
            *(str(BIN / "hypercorn"), "-k", "trio", "-w", "2"),
            *("-b", f"127.0.0.1:{port}", "--graceful-timeout", "30"),
            "relay.app:create_app()",
        ]
        master = await trio.lowlevel.open_process(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output: list[str] = []

        async def read_output() -> None:
            assert master.stdout is not None
            pending = b""
            async for chunk in master.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                output.extend(line.decode() for line in lines)

        nursery.start_soon(read_output)
        try:
            # Each worker announces itself once, as `relay serve` does.
            announced = re.compile(
                rf"relay: listening on http://127\.0\.0\.1:{port} \(worker pid (\d+)\)"
            )
            with trio.fail_after(60):
                while len({m[1] for line in output if (m := announced.fullmatch(line))}) < 2:
                    assert master.poll() is None, "\n".join(output)
                    await trio.sleep(0.05)
            pids = {int(m[1]) for line in output if (m := announced.fullmatch(line))}
            assert pids <= worker_pids(master.pid)  # (multiprocessing adds a resource tracker)
            for name in ("anthropic", "openai"):
                lines = [line for line in output if line.startswith(f"relay: provider {name} ")]
                assert len(lines) == 2, "\n".join(output)
            database = [line for line in output if line.startswith("relay: database: ")]
            assert (
                database == ["relay: database: external PostgreSQL (CODER_PG_CONNECTION_URL)"] * 2
            )
            assert "sk-upstream-test-key-0001" not in "\n".join(output)

            async def until_both_answer(provider: str) -> None:
                served: set[int] = set()
                with trio.fail_after(30):
                    while served != pids:
                        replies: list[tuple[int, int | None]] = []

                        async def one() -> None:
                            replies.append(await chat(port, provider, token, pids))  # noqa: B023

                        async with trio.open_nursery() as batch:
                            for _ in range(16):
                                batch.start_soon(one)
                        for status, pid in replies:
                            if status == 200 and pid is not None:
                                served.add(pid)

            await until_both_answer("openai")
            status, _ = await chat(port, "later", token, pids)
            assert status == 404

            # A provider added with the CLI reaches both workers (LISTEN/NOTIFY), no restart.
            openai_url = mock.openai_base_url + "/"
            cli("providers", "add", "later", "--type", "openai", "--base-url", openai_url, "--key",
                "sk-later-key-0001", env=env)  # fmt: skip
            await until_both_answer("later")
        finally:
            master.send_signal(signal.SIGTERM)
            with trio.fail_after(40):
                await master.wait()
            nursery.cancel_scope.cancel()
        assert master.returncode == 0, "\n".join(output)
        assert not any(alive(pid) for pid in pids)
