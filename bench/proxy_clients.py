"""Real clients through the AI Gateway Proxy, with their default base URLs (a manual check).

Starts the in-process mock upstream and a ``relay serve`` with
``PROXY_ENABLED`` (providers ``anthropic`` and ``openai`` on the mock), then
runs Claude Code and Codex with only ``HTTPS_PROXY`` and the proxy's CA set,
and prints what they answered and what reached the mock. Everything stays on
loopback: the decrypted hosts are never resolved. Install the clients first:

    npm install --prefix DIR @anthropic-ai/claude-code @openai/codex
    python -m bench.proxy_clients DIR [claude] [codex]
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import trio

from bench.replay.relay_process import started_relay
from relay.testing.mock_upstream import MockUpstream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    with trio.move_on_after(180):
        done = await trio.run_process(
            cmd, env=env, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
        )
        out = done.stdout.decode(errors="replace").strip()
        return f"exit {done.returncode}: {out[-500:]}"
    return "timed out"


async def main(npm_dir: Path, which: list[str]) -> None:
    bin_dir = npm_dir / "node_modules" / ".bin"
    mock = MockUpstream(chunking="event")
    data = Path(tempfile.mkdtemp(prefix="relay-proxy-clients-"))
    home = Path(tempfile.mkdtemp(prefix="relay-proxy-clients-home-"))
    port = _free_port()
    extra = {
        "CODER_AI_GATEWAY_PROXY_ENABLED": "true",
        "CODER_AI_GATEWAY_PROXY_LISTEN_ADDR": f"127.0.0.1:{port}",
    }
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mock.serve, 0)
            providers = {"anthropic": "anthropic", "openai": "openai"}
            async with started_relay(
                mock.base_url, providers, data_dir=data, extra_env=extra
            ) as relay:
                ca = str(data / "proxy" / "ca.pem")
                base = {
                    "PATH": os.environ["PATH"],
                    "HOME": str(home),
                    "HTTPS_PROXY": f"http://me:{relay.token}@127.0.0.1:{port}",
                    "NODE_EXTRA_CA_CERTS": ca,  # Node clients
                    "SSL_CERT_FILE": ca,  # Codex (Rust)
                    "DISABLE_TELEMETRY": "1",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "DISABLE_AUTOUPDATER": "1",
                }
                if "claude" in which:
                    env = {**base, "ANTHROPIC_API_KEY": relay.token}
                    cmd = [str(bin_dir / "claude"), "-p", "--model", "mock-text", "say hi"]
                    print("claude:", await _run(cmd, env, home))
                if "codex" in which:
                    (home / ".codex").mkdir(exist_ok=True)
                    env = {
                        **base,
                        "OPENAI_API_KEY": relay.token,
                        "CODEX_HOME": str(home / ".codex"),
                    }
                    cmd = [
                        str(bin_dir / "codex"),
                        "exec",
                        "--skip-git-repo-check",
                        "-m",
                        "mock-text",
                        "say hi",
                    ]
                    print("codex:", await _run(cmd, env, home))
                for request in mock.requests:
                    print(
                        "mock:",
                        request.method,
                        request.path,
                        request.status,
                        request.header("user-agent"),
                    )
                lines = relay.log_file.read_text().splitlines()
                print("\n".join(line for line in lines if "relay.proxy" in line))
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    trio.run(main, Path(sys.argv[1]), sys.argv[2:] or ["claude", "codex"])
