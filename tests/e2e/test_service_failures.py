"""A background service that fails never leaves a process serving without it.

The metrics listener must survive any one connection (a malformed request
used to end it, and the services nursery with it: recorder, config
listener). A service that does fail once the relay serves brings
``relay serve`` down the way SIGTERM does, with exit status 1, so that a
supervisor restarts it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from tests.relay_harness import clean_env, mock_and_relay

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_garbage_on_the_metrics_address_leaves_every_service_running(pg_dsn, tmp_path):
    port = free_port()
    env = {"CODER_AI_GATEWAY_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        with trio.fail_after(10):
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            async with bad:
                await bad.send_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n")
                while await bad.receive_some(65536):
                    pass
        async with httpx.AsyncClient(trust_env=False) as client:
            scrape = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert scrape.status_code == 200
            # The recorder still runs: a request's row arrives.
            body = {
                "model": "mock-tool",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}],
            }
            headers = {"x-api-key": relay.token, "anthropic-version": "2023-06-01"}
            r = await client.post(
                relay.gateway("anthropic") + "/v1/messages", json=body, headers=headers
            )
            assert r.status_code == 200
        await relay.wait_for_rows("SELECT 1 FROM interceptions WHERE model = 'mock-tool'")
        assert relay.app.failure is None


# The relay as an operator runs it, with one background service made to fail
# (once a file appears) after the relay started serving.
FAILING_SERVICE = """
import sys, trio
from pathlib import Path
from relay import cli
from relay.metrics import Metrics

sentinel = Path(sys.argv[1])

async def watch_recorder(self, stats, interval=1.0, *, task_status=trio.TASK_STATUS_IGNORED):
    task_status.started()
    while not sentinel.exists():
        await trio.sleep(0.05)
    raise RuntimeError("injected failure")

Metrics.watch_recorder = watch_recorder
sys.exit(cli.main(["serve"]))
"""


def test_a_service_that_dies_stops_the_process_with_status_1(pg_dsn, tmp_path):
    sentinel = tmp_path / "fail-now"
    env = clean_env(
        PYTHONPATH=str(ROOT),
        CODER_PG_CONNECTION_URL=pg_dsn,
        CODER_AI_GATEWAY_DATA_DIR=str(tmp_path / "data"),
        CODER_AI_GATEWAY_HTTP_ADDRESS="127.0.0.1:0",
        CODER_AI_GATEWAY_SHUTDOWN_GRACE="2s",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", FAILING_SERVICE, str(sentinel)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("relay: listening on "):
                url = line.split()[-1].rstrip(",")
        assert url is not None, proc.stderr.read() if proc.stderr else ""
        assert httpx.get(f"{url}/healthz", trust_env=False).status_code == 200
        sentinel.touch()
        try:
            status = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("the relay kept serving after a service failed") from None
        stderr = proc.stderr.read() if proc.stderr else ""
        assert status == 1, stderr
        assert (
            "relay: stopped: the recorder metrics failed: RuntimeError: injected failure" in stderr
        )
        assert "failed to start" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_metrics_directory_is_set_up_off_the_event_loop(pg_dsn, tmp_path, monkeypatch):
    import threading

    import relay.services

    loop_thread = threading.current_thread()
    set_up_in: list[threading.Thread] = []
    original = relay.services.metrics_for_process

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        set_up_in.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(relay.services, "metrics_for_process", recording)
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, _relay):
        pass
    assert len(set_up_in) == 1 and set_up_in[0] is not loop_thread
