"""Prometheus metrics: values after known calls, the text format, several processes.

Every scrape goes through a real server on a loopback port and is parsed back
with prometheus_client's own parser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client.parser import text_string_to_metric_families

from relay.facts import Facts, InjectedToolCall, ToolCall, Usage
from relay.metrics import Metrics, metrics_for_process, serve_metrics_listener

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, set[str]]]:
    """Samples by (name, sorted labels), and each family's label names."""
    samples: Samples = {}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = labels.setdefault(family.name, set())
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            names.update(k for k in sample.labels if k not in ("le", "quantile"))
    return samples, labels


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def asgi_app(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await endpoint(scope, receive, send)

    return app


async def scrape_via_hypercorn(metrics: Metrics, nursery: trio.Nursery) -> str:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(
        lambda task_status: hypercorn_serve(
            asgi_app(metrics.metrics_endpoint),  # type: ignore[arg-type]
            config,
            shutdown_trigger=trio.sleep_forever,
            task_status=task_status,
        )
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(binds[0] + "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        post = await client.post(binds[0] + "/metrics")
        assert post.status_code == 405
    return response.text


def traffic(m: Metrics) -> None:
    """Known traffic: two interceptions, one still in flight, and the rest of the facts."""
    user = "7f1c0a53-0000-4000-8000-000000000001"
    done = m.interception_started("anthropic", "claude-x", "/v1/messages")
    m.interception_started("openai", "gpt-x", "/v1/responses")  # still in flight
    m.ttfb("anthropic", 0.3)
    facts = Facts(
        usage=Usage(
            input_tokens=10,
            output_tokens=20,
            cache_read_tokens=30,
            cache_write_tokens=0,  # zero: no sample added
            extra={"cache_creation_5m": 4, "bogus": -1},  # negative: ignored
        ),
        tool_calls=[ToolCall(id="t1", name="read_file"), ToolCall(id="t2", name="read_file")],
        injected_calls=[
            InjectedToolCall(
                id="t3", name="bmcp_gh_get", arguments="{}", server="gh", server_url="http://gh"
            )
        ],
    )
    m.interception_facts("anthropic", "claude-x", user, "claude-code", facts, "hello")
    m.interception_facts("anthropic", "claude-x", user, "claude-code", Facts(), None)
    m.interception_finished(
        done, status="completed", method="POST", initiator_id=user, client="claude-code"
    )
    m.interception_finished(  # twice: counted once
        done, status="completed", method="POST", initiator_id=user, client="claude-code"
    )
    m.passthrough("anthropic", "/v1/models", "GET")
    m.proxy_session("mitm")
    m.proxy_session("tunneled")
    m.proxy_refused("blocked")
    m.proxy_mitm_request("openai")
    m.proxy_mitm_response("openai", 200)
    for phase in ("before-response", "mid-stream", "mid-stream"):
        m.disconnect(phase)
    m.circuit_breaker_state("openai", "/v1/responses", "gpt-x", "half-open")
    m.circuit_breaker_trip("openai", "/v1/responses", "gpt-x")
    m.circuit_breaker_reject("openai", "/v1/responses", "gpt-x")
    m.key_pool_state("openai", {"valid": 2, "temporary": 1})
    m.key_pool_transition("openai", "rate_limited")
    m.key_pool_exhausted("openai", "rate_limited")
    m.key_pool_attempts("openai", 3)
    m.providers([("anthropic", "anthropic", "enabled"), ("old", "openai", "disabled")])
    m.providers([("anthropic", "anthropic", "enabled")])
    m.recorder(queued=5, spooled_total=10, lost_total=0)
    m.recorder(queued=2, spooled_total=15, lost_total=1)
    m.dump_write_failure()
    m.dump_dropped()


async def test_values_after_known_traffic(nursery: trio.Nursery) -> None:
    m = Metrics(initiator_label=True)
    traffic(m)
    samples, _ = parse(await scrape_via_hypercorn(m, nursery))
    user = "7f1c0a53-0000-4000-8000-000000000001"
    p = "coder_ai_gateway_"
    assert (
        value(
            samples,
            p + "interceptions_total",
            provider="anthropic",
            model="claude-x",
            status="completed",
            route="/v1/messages",
            method="POST",
            initiator_id=user,
            client="claude-code",
        )
        == 1
    )
    inflight = {k[1]: v for k, v in samples.items() if k[0] == p + "interceptions_inflight"}
    assert inflight == {
        (("model", "claude-x"), ("provider", "anthropic"), ("route", "/v1/messages")): 0,
        (("model", "gpt-x"), ("provider", "openai"), ("route", "/v1/responses")): 1,
    }
    assert (
        value(
            samples,
            p + "interceptions_duration_seconds_count",
            provider="anthropic",
            model="claude-x",
        )
        == 1
    )
    assert (
        value(
            samples,
            p + "prompts_total",
            provider="anthropic",
            model="claude-x",
            initiator_id=user,
            client="claude-code",
        )
        == 1
    )
    tokens = {dict(k[1])["type"]: v for k, v in samples.items() if k[0] == p + "tokens_total"}
    assert tokens == {
        "input": 10,
        "output": 20,
        "cache_read_input_tokens": 30,
        "cache_creation_5m": 4,
    }
    assert (
        value(
            samples,
            p + "non_injected_tool_selections_total",
            provider="anthropic",
            model="claude-x",
            name="read_file",
        )
        == 2
    )
    injected = value(
        samples, p + "injected_tool_invocations_total", server="gh", name="bmcp_gh_get"
    )
    assert injected == 1
    assert (
        value(
            samples, p + "passthrough_total", provider="anthropic", route="/v1/models", method="GET"
        )
        == 1
    )
    breaker = {"provider": "openai", "endpoint": "/v1/responses", "model": "gpt-x"}
    assert value(samples, p + "circuit_breaker_state", **breaker) == 0.5
    assert value(samples, p + "circuit_breaker_trips_total", **breaker) == 1
    assert value(samples, p + "circuit_breaker_rejects_total", **breaker) == 1
    assert value(samples, p + "key_pool_state", provider="openai", state="valid") == 2
    assert value(samples, p + "key_pool_state", provider="openai", state="permanent") == 0
    assert (
        value(
            samples,
            p + "key_pool_state_transitions_total",
            provider="openai",
            reason="rate_limited",
        )
        == 1
    )
    assert (
        value(samples, p + "key_pool_exhaustions_total", provider="openai", outcome="rate_limited")
        == 1
    )
    assert value(samples, p + "key_pool_failover_attempts_sum", provider="openai") == 3
    info = [dict(k[1]) for k in samples if k[0] == p + "provider_info"]
    assert info == [
        {"provider_name": "anthropic", "provider_type": "anthropic", "status": "enabled"}
    ]
    assert value(samples, "relay_recorder_queue_depth") == 2
    assert value(samples, "relay_recorder_spooled_events_total") == 15
    assert value(samples, "relay_recorder_lost_events_total") == 1
    assert value(samples, "relay_upstream_ttfb_seconds_count", provider="anthropic") == 1
    assert (
        value(samples, "relay_upstream_ttfb_seconds_bucket", provider="anthropic", le="0.25") == 0
    )
    assert value(samples, "relay_upstream_ttfb_seconds_bucket", provider="anthropic", le="0.5") == 1
    assert value(samples, "relay_client_disconnects_total", phase="mid-stream") == 2
    assert value(samples, "relay_client_disconnects_total", phase="before-response") == 1
    assert value(samples, "relay_dump_write_failures_total") == 1
    assert value(samples, "relay_dump_dropped_total") == 1


# The Coder AI Gateway's label sets (its docs/ai-coder/ai-gateway monitoring table).
GATEWAY_LABELS = {
    "interceptions": {"provider", "model", "status", "route", "method", "initiator_id", "client"},
    "interceptions_inflight": {"provider", "model", "route"},
    "interceptions_duration_seconds": {"provider", "model"},
    "passthrough": {"provider", "route", "method"},
    "prompts": {"provider", "model", "initiator_id", "client"},
    "tokens": {"provider", "model", "type", "initiator_id", "client"},
    "non_injected_tool_selections": {"provider", "model", "name"},
    "injected_tool_invocations": {"server", "name"},
    "circuit_breaker_state": {"provider", "endpoint", "model"},
    "circuit_breaker_trips": {"provider", "endpoint", "model"},
    "circuit_breaker_rejects": {"provider", "endpoint", "model"},
    "key_pool_state": {"provider", "state"},
    "key_pool_state_transitions": {"provider", "reason"},
    "key_pool_exhaustions": {"provider", "outcome"},
    "key_pool_failover_attempts": {"provider"},
    "provider_info": {"provider_name", "provider_type", "status"},
    "providers_last_reload_timestamp_seconds": set(),
    "providers_last_reload_success_timestamp_seconds": set(),
    # The AI Gateway Proxy's (docs/proxy.md).
    "proxy_connect_sessions": {"type"},
    "proxy_mitm_requests": {"provider"},
    "proxy_inflight_mitm_requests": set(),
    "proxy_mitm_responses": {"code", "provider"},
}


async def test_label_sets_are_the_gateways(nursery: trio.Nursery) -> None:
    m = Metrics()
    traffic(m)
    _, labels = parse(await scrape_via_hypercorn(m, nursery))
    ours = {
        k.removeprefix("coder_ai_gateway_"): v
        for k, v in labels.items()
        if k.startswith("coder_ai_gateway_")
    }
    assert ours == GATEWAY_LABELS


@dataclass
class FakeRecorderStats:
    queued: int = 3
    spooled: int = 7
    lost: int = 0


async def test_recorder_stats_are_copied(nursery: trio.Nursery) -> None:
    m = Metrics()
    stats = FakeRecorderStats()
    await nursery.start(m.watch_recorder, stats, 3600)
    assert m.registry.get_sample_value("relay_recorder_queue_depth") == 3
    assert m.registry.get_sample_value("relay_recorder_spooled_events_total") == 7


async def test_listener_of_its_own(nursery: trio.Nursery) -> None:
    m = Metrics()
    m.disconnect("before-first-byte")
    port = await nursery.start(serve_metrics_listener, m, "127.0.0.1:0")
    async with httpx.AsyncClient(trust_env=False) as client:
        ok = await client.get(f"http://127.0.0.1:{port}/metrics")
        missing = await client.get(f"http://127.0.0.1:{port}/other")
        wrong = await client.delete(f"http://127.0.0.1:{port}/metrics")
    assert (ok.status_code, missing.status_code, wrong.status_code) == (200, 404, 405)
    samples, _ = parse(ok.text)
    assert value(samples, "relay_client_disconnects_total", phase="before-first-byte") == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n",
    ],
)
async def test_a_malformed_request_does_not_end_the_listener(nursery: trio.Nursery, garbage):
    m = Metrics()
    port = await nursery.start(serve_metrics_listener, m, "127.0.0.1:0")
    with trio.fail_after(10):
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        async with bad:
            await bad.send_all(garbage)
            while await bad.receive_some(65536):
                pass  # until the listener closes it
    async with httpx.AsyncClient(trust_env=False) as client:
        ok = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert ok.status_code == 200


# -- several processes ------------------------------------------------------------------------

WRITER = """
import sys, trio
from relay.metrics import Metrics, serve_metrics_listener
directory, count = sys.argv[1], int(sys.argv[2])
m = Metrics(multiprocess_dir=directory)
for _ in range(count):
    m.passthrough("anthropic", "/v1/models", "GET")
m.interception_started("openai", "gpt-x", "/v1/responses")  # in flight until the process ends
m.ttfb("openai", 0.2)
async def main():
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics_listener, m, "127.0.0.1:0")
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes stdin
        nursery.cancel_scope.cancel()
trio.run(main)
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _scrape(url: str) -> Samples:
    response = httpx.get(url, trust_env=False, timeout=10)
    assert response.status_code == 200
    return parse(response.text)[0]


def test_two_processes_one_endpoint_shows_the_sum(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_clean_env(),
            cwd=ROOT,
        )
        for count in (2, 3)
    ]
    try:
        ports = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{ports[0]}/metrics"
        samples = _scrape(url)
        passthrough = {"provider": "anthropic", "route": "/v1/models", "method": "GET"}
        inflight = {"provider": "openai", "model": "gpt-x", "route": "/v1/responses"}
        p = "coder_ai_gateway_"
        assert value(samples, p + "passthrough_total", **passthrough) == 5
        assert value(samples, p + "interceptions_inflight", **inflight) == 2
        assert value(samples, "relay_upstream_ttfb_seconds_count", provider="openai") == 2
        # The second process ends: its counts stay, its in-flight gauge goes.
        procs[1].stdin.close()  # type: ignore[union-attr]
        procs[1].wait(timeout=20)
        samples = _scrape(url)
        assert value(samples, p + "passthrough_total", **passthrough) == 5
        assert value(samples, p + "interceptions_inflight", **inflight) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def multiworker_app() -> Callable[..., Any]:
    """An app factory for `hypercorn -w 2` (below): each worker counts itself once."""
    holder: dict[str, Metrics] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            metrics = metrics_for_process(Path(os.environ["CODER_AI_GATEWAY_DATA_DIR"]))
            metrics.passthrough("worker", "/started", "GET")
            holder["metrics"] = metrics
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await holder["metrics"].metrics_endpoint(scope, receive, send)

    return app


def test_hypercorn_workers_share_their_metrics(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stale = tmp_path / "metrics" / "workers-4194000"  # a master that is gone
    stale.mkdir(parents=True)
    env = _clean_env()
    env["CODER_AI_GATEWAY_DATA_DIR"] = str(tmp_path)
    master = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "-k",
            "trio",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "tests.metrics.test_metrics:multiworker_app()",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and started != 2:
            try:
                samples = _scrape(f"http://127.0.0.1:{port}/metrics")
                started = value(
                    samples,
                    "coder_ai_gateway_passthrough_total",
                    provider="worker",
                    route="/started",
                    method="GET",
                )
            except httpx.HTTPError:
                pass
            if master.poll() is not None:
                pytest.fail(master.stderr.read().decode())  # type: ignore[union-attr]
            time.sleep(0.2)
        assert started == 2  # both workers' counts, whichever answered
        assert (tmp_path / "metrics" / f"workers-{master.pid}").is_dir()
        assert not stale.exists()
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(timeout=20)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


def test_client_chosen_labels_are_bounded() -> None:
    """Models beyond the cap, long names and odd methods fold into 'other'; an
    evicted circuit takes its state series with it."""
    from relay.app import attach_guard_metrics
    from relay.limits import RequestGuards
    from relay.options import load_options
    from relay.upstream.breaker import BreakerSettings, CircuitBreakers

    m = Metrics(max_models=2)
    assert [m.models.fold(x) for x in ("a", "b", "c", "a", "", "other", "x" * 300)] == [
        "a",
        "b",
        "other",
        "a",
        "",
        "other",
        "other",
    ]
    m.passthrough("openai", "/v1/conversations/*", "BREW")
    assert m.registry.get_sample_value(
        "coder_ai_gateway_passthrough_total",
        {"provider": "openai", "route": "/v1/conversations/*", "method": "other"},
    )
    guards = RequestGuards.from_options(load_options({}, warn=lambda line: None))
    guards.breakers = CircuitBreakers(BreakerSettings(), max_circuits=2)
    attach_guard_metrics(guards, m)
    for model in ("a", "b", "a"):
        guards.breakers.get("openai", "/v1/responses", model, 0)
    state = "coder_ai_gateway_circuit_breaker_state"
    labels = {"provider": "openai", "endpoint": "/v1/responses"}
    assert m.registry.get_sample_value(state, {**labels, "model": "b"}) == 0
    guards.breakers.get("openai", "/v1/chat/completions", "a", 0)  # evicts ("/v1/responses", "b")
    assert len(guards.breakers) == 2
    assert m.registry.get_sample_value(state, {**labels, "model": "b"}) is None
    assert m.registry.get_sample_value(state, {**labels, "model": "a"}) == 0


def test_cost_metrics() -> None:
    m = Metrics()
    m.cost("anthropic", "claude-sonnet-4-5-20250929", "u1", 458)
    m.cost("anthropic", "claude-sonnet-4-5-20250929", "u1", 42)
    m.cost("openai", "mystery", "u1", None)
    m.budget_refused("team")
    m.budget_soft_limit("team")
    m.budget_state([("team", 900, 1000)])
    get = m.registry.get_sample_value
    spend = {"provider": "anthropic", "model": "claude-sonnet-4-5-20250929", "initiator_id": ""}
    assert get("relay_cost_spend_micros_total", spend) == 500  # no user label by default
    assert get("relay_cost_unpriced_usages_total", {"provider": "openai", "model": "mystery"}) == 1
    assert get("relay_cost_budget_refusals_total", {"budget": "team"}) == 1
    assert get("relay_cost_budget_soft_limit_warnings_total", {"budget": "team"}) == 1
    assert get("relay_cost_budget_spend_micros", {"budget": "team"}) == 900
    assert get("relay_cost_budget_limit_micros", {"budget": "team"}) == 1000


def test_a_scrape_while_a_worker_creates_its_file_is_answered(tmp_path: Path) -> None:
    """A worker that is starting has made its metrics file but not sized it yet (0
    bytes): the scrape leaves that file out instead of failing (it answered 500)."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from relay.metrics.exposition import render_multiprocess

    settled = MmapedDict(str(tmp_path / "counter_1001.db"))
    key = mmap_key("relay_x", "relay_x_total", ["provider"], ["openai"], "a counter")
    settled.write_value(key, 3.0, 0.0)
    settled.close()
    (tmp_path / "counter_1002.db").touch()  # the starting worker's, still empty
    samples = parse(render_multiprocess(tmp_path).decode())[0]
    assert value(samples, "relay_x_total", provider="openai") == 3.0
