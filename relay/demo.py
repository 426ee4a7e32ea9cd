"""``relay serve --demo``: the relay in front of the bundled mock upstream.

A new user sees a recorded stream within a minute: the mock speaks the
Anthropic and OpenAI wire formats on loopback, two providers point at it,
a demo user gets a token, and copy-paste commands are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta

import trio

from relay.app import RelayApp
from relay.auth import AuthError, create_token, create_user
from relay.options import Options
from relay.server import run_server
from relay.testing.mock_upstream.server import MockUpstream

_INDEXED = re.compile(r"^CODER_(AI_GATEWAY|AIBRIDGE)_PROVIDER_(\d+)_")
DEMO_USER = "demo"
DEMO_TOKEN_LIFETIME = timedelta(days=1)


def demo_env(mock: MockUpstream, base: dict[str, str]) -> dict[str, str]:
    """The environment plus two providers, ``demo-anthropic`` and ``demo-openai``."""
    env = dict(base)
    used = [int(m.group(2)) for k in env if (m := _INDEXED.match(k))]
    index = max(used) + 1 if used else 0
    for offset, (kind, url) in enumerate(
        (("anthropic", mock.base_url), ("openai", mock.openai_base_url + "/"))
    ):
        prefix = f"CODER_AI_GATEWAY_PROVIDER_{index + offset}_"
        env[prefix + "TYPE"] = kind
        env[prefix + "NAME"] = f"demo-{kind}"
        env[prefix + "KEY"] = "sk-demo-mock-upstream-key"
        env[prefix + "BASE_URL"] = url
    return env


def instructions(url: str, token: str) -> str:
    anthropic = f"{url}/api/v2/ai-gateway/demo-anthropic"
    openai = f"{url}/api/v2/ai-gateway/demo-openai/v1"
    body = (
        '{"model":"mock-text","max_tokens":64,"stream":true,'
        '"messages":[{"role":"user","content":"Hello"}]}'
    )
    return f"""
=== Relay demo ===================================================================
The mock upstream answers any model; 'mock-tool', 'mock-thinking', 'mock-long'
pick other scenarios (see docs/mock-upstream.md). Demo token (valid one day):

  export RELAY_TOKEN={token}

A stream with curl:

  curl -N {anthropic}/v1/messages \\
    -H "x-api-key: $RELAY_TOKEN" -H "anthropic-version: 2023-06-01" \\
    -H "content-type: application/json" -d '{body}'

Claude Code:

  export ANTHROPIC_BASE_URL={anthropic}
  export ANTHROPIC_AUTH_TOKEN=$RELAY_TOKEN
  claude

Codex (~/.codex/config.toml):

  model_provider = "relay"
  [model_providers.relay]
  name = "Relay"
  base_url = "{openai}"
  env_key = "RELAY_TOKEN"
  wire_api = "responses"

What was recorded:

  relay usage
==================================================================================
"""


async def run_demo(
    options: Options,
    *,
    out: Callable[[str], None] = print,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RelayApp] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the demo until SIGINT/SIGTERM (or ``shutdown_trigger``).

    Unless a data directory is named, the demo runs in a temporary one (its
    embedded PostgreSQL, spool, providers, user and token), removed at exit:
    the next ``relay serve`` finds the default data directory as it was.
    """
    with contextlib.ExitStack() as stack:
        if not options.data_dir:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-demo-"))
            options = options.replace(data_dir=directory)
            out(
                f"relay: demo data directory {directory} (removed at exit; name one with "
                "--ai-gateway-data-dir to keep it)"
            )
        await _serve_demo(options, out, shutdown_trigger, task_status)


async def _serve_demo(
    options: Options,
    out: Callable[[str], None],
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[RelayApp],
) -> None:
    mock = MockUpstream(chunking="random", record=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = demo_env(mock, dict(os.environ))

        async def serve_then_stop(task_status: trio.TaskStatus[RelayApp]) -> None:
            await run_server(
                options,
                env=env,
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
                out=out,
            )
            nursery.cancel_scope.cancel()  # the relay has stopped: stop the mock too

        app = await nursery.start(serve_then_stop)
        assert app.services is not None
        db = app.services.db
        try:
            await create_user(db, DEMO_USER)
        except AuthError:
            pass  # an earlier demo made it
        token, _ = await create_token(db, DEMO_USER, DEMO_TOKEN_LIFETIME.total_seconds())
        host, _, port = options.http_address.rpartition(":")
        out(instructions(f"http://{host or '127.0.0.1'}:{port}", token))
        sys.stdout.flush()
        task_status.started(app)
