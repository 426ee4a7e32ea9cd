"""``relay serve`` as a real subprocess, for tests that need a second process or a SIGKILL.

The process gets only the options given (none of the machine's relay
settings), listens on an ephemeral loopback port and writes its output to a
log file; ``relay_process`` returns once it prints the line naming its address
(its services are up by then) and stops it with SIGTERM (SIGKILL if it hangs)
when the block ends, unless the test ended it first.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

RELAY = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]
_LISTENING = re.compile(r"relay: listening on (http://\S+?)(?:,|\s|$)")


@dataclass
class RelayProcess:
    process: trio.Process
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def gateway(self, provider: str) -> str:
        return f"{self.url}/api/v2/ai-gateway/{provider}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.kill()
        await self.process.wait()

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful stop); its exit status."""
        self.process.terminate()
        with trio.move_on_after(timeout):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


def relay_env(options: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CODER_AI_GATEWAY_", "CODER_AIBRIDGE_", "CODER_PG_", "PROMETHEUS_"))
    }
    env.update(PYTHONUNBUFFERED="1", CODER_AI_GATEWAY_HTTP_ADDRESS="127.0.0.1:0")
    env.update(options)
    return env


@contextlib.asynccontextmanager
async def relay_process(
    options: Mapping[str, str], log: Path, *, timeout: float = 60
) -> AsyncIterator[RelayProcess]:
    start = _size(log)
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            [*RELAY, "serve"], env=relay_env(options), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = await _wait_listening(process, log, start, timeout)
        yield RelayProcess(process, url, log)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                await RelayProcess(process, "", log).stop()


async def _wait_listening(process: trio.Process, log: Path, start: int, timeout: float) -> str:
    with trio.move_on_after(timeout):
        while process.returncode is None:
            text = _read_from(log, start)
            match = _LISTENING.search(text)
            if match:
                return match.group(1)
            await trio.sleep(0.05)
    tail = _read_from(log, start)[-3000:]
    raise RuntimeError(f"relay serve did not start (exit {process.returncode}); output:\n{tail}")


# Small local files, read while the test waits anyway.
def _size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _read_from(log: Path, start: int) -> str:
    return log.read_bytes()[start:].decode(errors="replace")
