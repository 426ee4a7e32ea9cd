"""What run_interception takes before it relays is given back, whatever raises.

The breaker ticket and the in-flight gauge are taken before the upstream
call; a failure in between (here the dump writer raising, as a bug would)
must not keep a half-open circuit's trial slot, nor leave the request counted
in flight for ever.
"""

from __future__ import annotations

import httpx
import trio

from tests.relay_harness import mock_and_relay

MODEL = "mock-tool"
ROUTE = "/v1/messages"


async def test_a_failure_before_the_relay_gives_back_ticket_and_gauge(pg_dsn, tmp_path):
    env = {
        "CODER_AI_GATEWAY_CIRCUIT_BREAKER_ENABLED": "true",
        "CODER_AI_GATEWAY_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "1",
        "CODER_AI_GATEWAY_CIRCUIT_BREAKER_TIMEOUT": "50ms",
        "CODER_AI_GATEWAY_CIRCUIT_BREAKER_MAX_REQUESTS": "1",
    }
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        services, guards = relay.app.services, relay.app.guards
        assert services is not None and guards is not None and guards.breakers is not None
        # Open the circuit, then let it go half-open: one trial slot.
        breaker = guards.breakers.get("anthropic", ROUTE, MODEL, trio.current_time())
        ticket = breaker.allow(trio.current_time())
        assert ticket is not None
        breaker.record(ticket, failure=True, now=trio.current_time())
        await trio.sleep(0.1)

        def broken_begin(*args: object, **kwargs: object) -> None:
            raise RuntimeError("dump writer bug")

        services.dumps.begin = broken_begin  # type: ignore[method-assign]
        body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": relay.token, "anthropic-version": "2023-06-01"}
        async with httpx.AsyncClient() as client:
            r = await client.post(relay.gateway("anthropic") + ROUTE, json=body, headers=headers)
        assert r.status_code == 500

        # The trial slot is free again, and nothing is in flight.
        assert breaker.allow(trio.current_time()) is not None
        inflight = services.metrics.registry.get_sample_value(
            "coder_ai_gateway_interceptions_inflight",
            {"provider": "anthropic", "model": MODEL, "route": ROUTE},
        )
        assert inflight == 0
        # And the request is on record as the relay's failure.
        rows = await relay.wait_for_rows(
            "SELECT status, error_type FROM interceptions WHERE model = $1", MODEL
        )
        assert [tuple(r) for r in rows] == [("failed", "relay_error")]
