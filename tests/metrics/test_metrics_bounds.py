"""What a client can do to /metrics: grow it, and read it.

Model names and paths are chosen by clients. Thousands of random ones sent
through the real relay must leave /metrics and the circuit breakers bounded
(route patterns, not paths; models beyond the cap folded into ``other``),
and ``initiator_id`` empty unless asked for. ``METRICS_TOKEN`` closes
/metrics to scrapers without the token, on either listener.
"""

from __future__ import annotations

import random
import string

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

CAP = 10
PREFIX = "coder_ai_gateway_"


def label_values(text: str, label: str) -> set[str]:
    values: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(PREFIX):
            for sample in family.samples:
                if label in sample.labels:
                    values.add(sample.labels[label])
    return values


def random_name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(5, 40)))


async def test_random_models_and_paths_leave_metrics_bounded(pg_dsn, tmp_path):
    rng = random.Random(12)
    env = {
        "CODER_AI_GATEWAY_METRICS_MAX_MODELS": str(CAP),
        "CODER_AI_GATEWAY_CIRCUIT_BREAKER_ENABLED": "true",
    }
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        headers = {"authorization": f"Bearer {relay.token}"}
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:

            async def one(i: int) -> None:
                name = random_name(rng)
                if i % 3 == 0:
                    r = await http.get(
                        relay.gateway("openai") + f"/v1/models/{name}", headers=headers
                    )
                elif i % 3 == 1:
                    r = await http.post(
                        relay.gateway("anthropic") + "/v1/messages",
                        headers=headers,
                        json={
                            "model": name,
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    )
                else:
                    r = await http.post(
                        relay.gateway("openai") + "/v1/chat/completions",
                        headers=headers,
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                    )
                assert r.status_code in (200, 404), r.text

            async def run(start: int, count: int) -> None:
                async def worker(w: int) -> None:
                    for i in range(start + w, start + count, 8):
                        await one(i)

                async with trio.open_nursery() as nursery:
                    for w in range(8):
                        nursery.start_soon(worker, w)

            await run(0, 300)
            early = (await http.get(relay.url + "/metrics")).text
            await run(300, 2700)
            late = (await http.get(relay.url + "/metrics")).text

    models = label_values(late, "model")
    assert len(models - {"", "other"}) <= CAP, sorted(models)
    assert "other" in models
    routes = label_values(late, "route")
    assert routes <= {"/v1/messages", "/v1/chat/completions", "/v1/models/*"}, routes
    assert label_values(late, "initiator_id") == {""}  # opt-in only
    # 2,700 more random models and paths added next to nothing.
    assert len(late) < len(early) * 1.2, (len(early), len(late))
    breakers = relay.app.guards.breakers
    assert breakers is not None
    # providers x route patterns x (CAP + "other"), however many models were sent.
    assert len(breakers) <= 2 * (CAP + 1), len(breakers)
    assert len(label_values(late, "endpoint")) <= 2


async def test_initiator_id_label_is_opt_in(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_METRICS_INITIATOR_ID_LABEL": "true"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"authorization": f"Bearer {relay.token}"},
                json={
                    "model": "mock-text",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert r.status_code == 200
            text = (await http.get(relay.url + "/metrics")).text
    ids = label_values(text, "initiator_id") - {""}
    assert len(ids) == 1 and len(next(iter(ids))) == 36  # alice's uuid


async def test_metrics_token_on_the_main_listener(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_METRICS_TOKEN": "metrics-secret-0001"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient(timeout=30) as http:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": f"Bearer {relay.token}"},  # a relay token is not it
                {"authorization": "Basic metrics-secret-0001"},
            ):
                r = await http.get(relay.url + "/metrics", headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert PREFIX not in r.text
            r = await http.get(
                relay.url + "/metrics", headers={"authorization": "Bearer metrics-secret-0001"}
            )
            assert r.status_code == 200 and PREFIX in r.text


async def test_metrics_token_on_a_listener_of_its_own(pg_dsn, tmp_path):
    with trio.socket.socket() as probe:  # a free port for the metrics listener
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "CODER_AI_GATEWAY_METRICS_TOKEN": "metrics-secret-0001",
        "CODER_AI_GATEWAY_METRICS_ADDRESS": f"127.0.0.1:{port}",
    }
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"http://127.0.0.1:{port}/metrics"
            r = await http.get(url)
            assert r.status_code == 401 and PREFIX not in r.text
            r = await http.get(url, headers={"authorization": "Bearer metrics-secret-0001"})
            assert r.status_code == 200 and PREFIX in r.text
            # Not on the main listener at all when it has its own address.
            r = await http.get(relay.url + "/metrics")
            assert r.status_code == 404
