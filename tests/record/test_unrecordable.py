"""When usage cannot be written anywhere (issue 13 item 4), through the real relay.

PostgreSQL is stopped and the spool cannot be written (a file stands where its
directory should be: what a read-only or full filesystem refuses, and root
cannot write through it either). Then:

- by default every request is served, and the rows lost are counted the same
  way in the log ("LOST n row(s)" lines), ``stats.lost`` and the
  ``relay_recorder_lost_events`` metric: exactly the rows of the requests served;
- with ``REQUIRE_RECORDING`` new requests get 503 in the provider's shape,
  nothing is lost, and service resumes once PostgreSQL is back.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay.app import UNRECORDABLE_MESSAGE
from tests.relay_harness import RunningRelay, mock_and_relay

# Rows one such request records: its interception at the start and at the end,
# the token usage and the prompt.
ROWS_PER_REQUEST = 4


async def ask(relay: RunningRelay) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.post(
            relay.gateway("anthropic") + "/v1/messages",
            headers={"x-api-key": relay.token, "anthropic-version": "2023-06-01"},
            json={
                "model": "mock-text",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )


def lost_metric(relay: RunningRelay) -> float:
    assert relay.app.services is not None
    text = relay.app.services.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "relay_recorder_lost_events":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def logged_losses(caplog: pytest.LogCaptureFixture) -> int:
    return sum(int(n) for n in re.findall(r"LOST (\d+) row\(s\)", caplog.text))


async def wait_until(condition: Any, timeout: float = 20) -> None:
    with trio.fail_after(timeout):  # a safety net, not a timing assertion
        while not condition():
            await trio.sleep(0.02)


def unwritable_spool(data_dir: Path) -> None:
    (data_dir / "spool").write_text("not a directory")


async def test_by_default_requests_are_served_and_every_loss_counted_alike(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    served = 6
    unwritable_spool(tmp_path)
    with caplog.at_level(logging.ERROR, logger="relay.record.recorder"):
        async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
            assert relay.app.services is not None
            recorder = relay.app.services.recorder
            assert (await ask(relay)).status_code == 200  # verifies (caches) the token
            await relay.wait_for_rows("SELECT 1 FROM interceptions WHERE status = 'completed'")
            async with pg_cluster.down():
                for _ in range(served):
                    assert (await ask(relay)).status_code == 200
                await wait_until(lambda: recorder.stats.lost == served * ROWS_PER_REQUEST)
                await wait_until(lambda: lost_metric(relay) == recorder.stats.lost)
            metric = lost_metric(relay)
        stats = recorder.stats
    assert stats.lost == served * ROWS_PER_REQUEST
    assert logged_losses(caplog) == stats.lost == metric
    assert "usage cannot be recorded" in caplog.text


async def test_require_recording_refuses_new_requests_while_nothing_can_be_recorded(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path
):
    unwritable_spool(tmp_path)
    env = {"CODER_AI_GATEWAY_REQUIRE_RECORDING": "true"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        assert relay.app.services is not None
        recorder = relay.app.services.recorder
        assert (await ask(relay)).status_code == 200
        await relay.wait_for_rows("SELECT 1 FROM interceptions WHERE status = 'completed'")
        upstream_before = len(mock.requests)
        async with pg_cluster.down():
            # Learnt from the recorder's own checks, without a request.
            await wait_until(lambda: recorder.cannot_record)
            accepted = recorder.stats.accepted
            for _ in range(3):
                response = await ask(relay)
                assert response.status_code == 503
                assert response.headers["retry-after"] == "5"
                body = response.json()  # Anthropic's error shape
                assert body["type"] == "error" and body["error"]["message"] == UNRECORDABLE_MESSAGE
            assert len(mock.requests) == upstream_before, "a refused request went upstream"
            assert recorder.stats.accepted == accepted and recorder.stats.lost == 0
        # PostgreSQL is back: served (and recorded) again.
        await wait_until(lambda: not recorder.cannot_record)
        assert (await ask(relay)).status_code == 200
        rows = await relay.wait_for_rows(
            "SELECT 1 FROM interceptions WHERE status = 'completed'", count=2
        )
        assert len(rows) == 2
        assert recorder.stats.lost == 0
