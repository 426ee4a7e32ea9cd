"""`/readyz` against a real PostgreSQL that is stopped and started, and a stopped recorder."""

from __future__ import annotations

import httpx
import trio

from tests.relay_harness import mock_and_relay

# Generous client timeouts: on a loaded machine a probe while PostgreSQL
# restarts may take seconds (a safety net, not a timing assertion).
TIMEOUT = httpx.Timeout(30)


async def database_back(http: httpx.AsyncClient, url: str) -> httpx.Response:
    """``/readyz`` once it sees PostgreSQL again: the pool's connections died with
    the server, and the first probe after a restart may still meet one."""
    with trio.fail_after(20):
        while True:
            r = await http.get(url + "/readyz")
            if r.json()["checks"]["database"] == "ok":
                return r
            await trio.sleep(0.05)


async def test_readyz_follows_the_database_and_the_token_cache(pg_dsn, pg_cluster, tmp_path):
    async with (
        mock_and_relay(pg_dsn, tmp_path) as (_mock, relay),
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        r = await http.get(relay.url + "/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "ready",
            "checks": {
                "tokens": "none cached",
                "database": "ok",
                "providers": "2 loaded",
                "recorder": "running",
            },
            "reasons": [],
        }

        async with pg_cluster.down():
            # Nobody's token is cached yet: no request could be authenticated.
            r = await http.get(relay.url + "/readyz")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "not ready"
            assert body["checks"]["database"].startswith("unreachable: ")
            assert len(body["reasons"]) == 1
            assert body["reasons"][0].startswith("the database is unreachable (")
            assert body["reasons"][0].endswith(") and no token is cached")
            # The process is alive all the same.
            assert (await http.get(relay.url + "/healthz")).status_code == 200

        # A request verifies (and caches) alice's token...
        await database_back(http, relay.url)
        models = relay.gateway("openai") + "/v1/models"
        auth = {"authorization": f"Bearer {relay.token}"}
        assert (await http.get(models, headers=auth)).status_code == 200
        async with pg_cluster.down():
            # ...so the relay serves her while PostgreSQL is away: ready.
            r = await http.get(relay.url + "/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"]["tokens"] == "cached"
            assert r.json()["checks"]["database"].startswith("unreachable: ")

        r = await database_back(http, relay.url)
        assert r.status_code == 200
        assert r.json()["checks"]["database"] == "ok"


async def test_readyz_is_503_when_the_recorder_is_not_running(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay), httpx.AsyncClient() as http:
        assert relay.app.services is not None
        await relay.app.services.recorder.aclose()
        r = await http.get(relay.url + "/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["recorder"] == "not running"
        assert r.json()["reasons"] == ["the recorder is not running"]


async def test_readyz_is_503_without_an_enabled_provider(pg_dsn, tmp_path):
    from relay.providers import store
    from tests.relay_harness import config_settled

    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay), httpx.AsyncClient() as http:
        for name in ("anthropic", "openai"):
            await store.set_provider_enabled(relay.db, name, False)
        await config_settled(relay.app)
        r = await http.get(relay.url + "/readyz")
        assert r.status_code == 503
        assert r.json()["reasons"] == ["no provider is enabled (see docs/providers.md)"]
