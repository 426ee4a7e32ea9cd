"""A ``relay serve`` subprocess whose providers point at the replay upstream.

It runs on the embedded PostgreSQL of a data directory (a fresh temporary one
unless given) or on a given database. A user and a token are made with the
relay's own CLI (``relay users create``, ``relay tokens create``). The
environment of the replay is not passed on as relay options: providers and
listen address come from the dumps and a free port only.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from relay.providers.types import mask_secret

_RELAY = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]


class RelayStartError(RuntimeError):
    pass


@dataclass
class RelayProcess:
    url: str
    token: str
    data_dir: Path
    postgres_url: str
    log_file: Path

    def describe(self) -> str:
        return f"relay at {self.url} (token {mask_secret(self.token)}, data dir {self.data_dir})"


def relay_env(
    base: Mapping[str, str],
    data_dir: Path,
    postgres_url: str,
    address: str | None = None,
    providers: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, str]:
    """``base`` without any relay option, plus the ones the replay chooses."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(("CODER_AI_GATEWAY_", "CODER_AIBRIDGE_"))
        and k not in ("CODER_PG_CONNECTION_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["CODER_AI_GATEWAY_DATA_DIR"] = str(data_dir)
    if postgres_url:
        env["CODER_PG_CONNECTION_URL"] = postgres_url
    if address:
        env["CODER_AI_GATEWAY_HTTP_ADDRESS"] = address
        env["CODER_AI_GATEWAY_SHUTDOWN_GRACE"] = "2s"
    for index, (name, (provider_type, base_url)) in enumerate(sorted((providers or {}).items())):
        prefix = f"CODER_AI_GATEWAY_PROVIDER_{index}_"
        env[prefix + "TYPE"] = provider_type
        env[prefix + "NAME"] = name
        env[prefix + "BASE_URL"] = base_url
        # The replay upstream ignores it; the relay needs a key to be centralized.
        env[prefix + "KEY"] = "sk-replay-" + secrets.token_hex(12)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cli(args: list[str], env: Mapping[str, str]) -> str:
    result = await trio.run_process(
        [*_RELAY, *args], env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    if result.returncode != 0:
        raise RelayStartError(
            f"relay {args[0]} {args[1]} failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return str(result.stdout.decode().strip())


@asynccontextmanager
async def started_relay(
    upstream_base_url: str,
    provider_types: Mapping[str, str],
    *,
    data_dir: Path | None = None,
    postgres_url: str = "",
    dump_dir: Path | None = None,
    ready_timeout: float = 90.0,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[RelayProcess]:
    """A running relay, stopped (SIGTERM) when the block ends (``dump_dir``: it dumps there;
    ``extra_env``: more relay options, e.g. the AI Gateway Proxy's)."""
    own_dir = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="relay-replay-")) if data_dir is None else data_dir
    directory.mkdir(parents=True, exist_ok=True)
    try:
        providers = {
            name: (kind, upstream_base_url + ("/v1" if kind == "openai" else ""))
            for name, kind in provider_types.items()
        }
        port = _free_port()
        env = relay_env(os.environ, directory, postgres_url, f"127.0.0.1:{port}", providers)
        if dump_dir is not None:
            env["CODER_AI_GATEWAY_DUMP_DIR"] = str(dump_dir)
        env.update(extra_env or {})
        user = "replay-" + secrets.token_hex(4)
        await _cli(["users", "create", user], env)
        token = await _cli(["tokens", "create", "--user", user], env)
        log_file = directory / "replay-relay.log"
        relay = RelayProcess(f"http://127.0.0.1:{port}", token, directory, postgres_url, log_file)
        serve = functools.partial(
            trio.run_process, [*_RELAY, "serve"], env=env, stderr=subprocess.STDOUT, check=False
        )
        with log_file.open("wb") as log:
            async with trio.open_nursery() as nursery:
                process = await nursery.start(functools.partial(serve, stdout=log))
                try:
                    await _wait_ready(relay, process, next(iter(providers), ""), ready_timeout)
                    yield relay
                finally:
                    nursery.cancel_scope.cancel()  # SIGTERM, then SIGKILL after 5 s
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)


async def _wait_ready(
    relay: RelayProcess, process: trio.Process, provider: str, timeout: float
) -> None:
    """Until a provider route answers (401 without a token: the services are up)."""
    probe = f"{relay.url}/api/v2/ai-gateway/{provider}/v1/models"
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with trio.move_on_after(timeout):
            while process.returncode is None:
                try:
                    response = await client.get(probe)
                    if response.status_code != 503:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    tail = relay.log_file.read_text(errors="replace")[-3000:]
    raise RelayStartError(f"relay serve did not become ready; its log ends with:\n{tail}")
