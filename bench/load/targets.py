"""Start and stop what the harness measures, and watch it through /proc.

Targets, each an async context manager yielding a ``RunningTarget``:

- ``direct``: the in-process mock upstream itself (the generator's ceiling);
- ``relay``: ``relay serve`` in a subprocess, providers pointed at the mock,
  a user and token made with the ``relay users`` / ``relay tokens`` commands,
  PostgreSQL from ``CODER_PG_CONNECTION_URL`` or embedded in a temporary
  data directory;
- ``asgi``: the pass-through floor under ``hypercorn -k trio``, with the
  relay's own upstream client (``relay.upstream.http11``);
- ``asgi-httpx``: the same app reading its upstream through httpx (an extra
  for comparison, not a floor: it measures httpx's per-chunk cost);
- ``splice``: the bare trio + h11 splice floor;
- ``litellm``: LiteLLM proxy (a virtualenv made by ``bench/peers/litellm.sh``).

Every subprocess runs in the nursery of its context manager: leaving the
block terminates it (SIGTERM, then SIGKILL after five seconds).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import string
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import trio

from relay.testing.mock_upstream import MockUpstream

from .loadgen import Endpoint, Headers

TARGETS = ("direct", "relay", "asgi", "asgi-httpx", "splice", "litellm")
UPSTREAM_KEY = "sk-bench-upstream-0000"
CLIENT_KEY = "sk-bench-client-0000"  # targets without authentication still get a key
STARTUP_TIMEOUT_S = {"relay": 90.0, "litellm": 180.0}
_CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]


class TargetError(Exception):
    """A target could not be started or does not answer as expected."""


class RunningTarget(msgspec.Struct):
    name: str
    endpoint: Endpoint
    pid: int | None  # the serving process, watched in /proc (None: in-process mock)
    log_path: str | None = None
    pinned: bool = False


# -- /proc ----------------------------------------------------------------------------------


class ProcSample(msgspec.Struct):
    rss_kb: int
    cpu_s: float  # user + system time of every thread so far
    at: float  # time.perf_counter()


def sample_proc(pid: int | None) -> ProcSample | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
    return ProcSample(rss, cpu, time.perf_counter())


def system_busy_s() -> float:
    """CPU seconds all CPUs have spent running processes since boot (/proc/stat), plus
    the time the hypervisor stole. Interrupt time is left out: loopback traffic is
    processed in softirqs that no process is charged for, ours included."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + steal) / _CLK_TCK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def serving_pid(pid: int) -> int:
    """The process that serves: ``pid``, or its only Python worker child (hypercorn
    or uvicorn started with worker processes). PostgreSQL children are ignored."""
    workers = [c for c in _children(pid) if _comm(c).startswith("python")]
    return workers[0] if len(workers) == 1 else pid


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin every thread of ``pid`` (threads started later inherit it)."""
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)
    except OSError:
        return False
    return True


def free_port() -> int:
    # The small race (another process taking the port before the target binds
    # it) is acceptable on a benchmark machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- starting -------------------------------------------------------------------------------


def _credentials(openai: bytes, anthropic: bytes) -> dict[str, Headers]:
    return {
        "openai": ((b"authorization", b"Bearer " + openai),),
        "anthropic": ((b"x-api-key", anthropic),),
    }


async def _wait_ready(
    process: trio.Process, port: int, health_path: str | None, log_path: Path, timeout_s: float
) -> None:
    """Until ``GET health_path`` answers 200 (or the port accepts, without a path)."""
    request = b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n" % (
        (health_path or "/").encode()
    )
    with trio.move_on_after(timeout_s):
        while process.returncode is None:
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    if health_path is None:
                        return
                    await stream.send_all(request)
                    head = await stream.receive_some(4096)
                    if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                        return
            await trio.sleep(0.1)
    tail = _tail(log_path)
    if process.returncode is not None:
        raise TargetError(f"exited with status {process.returncode}; log ends:\n{tail}")
    raise TargetError(f"not ready after {timeout_s:.0f} s; log ends:\n{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def _subprocess(
    name: str,
    command: list[str],
    port: int,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    health_path: str | None = None,
    timeout_s: float | None = None,
) -> AsyncIterator[tuple[int, Path]]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    check=False,
                    stdin=None,
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=REPO,
                )
            )
            try:
                if timeout_s is None:
                    timeout_s = STARTUP_TIMEOUT_S.get(name, 30.0)
                await _wait_ready(process, port, health_path, log_path, timeout_s)
                yield serving_pid(process.pid), log_path
            finally:
                nursery.cancel_scope.cancel()


async def _relay_cli(args: list[str], env: dict[str, str]) -> str:
    """Run a ``relay`` admin command; its stdout (a token, for tokens create)."""
    done = await trio.run_process(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode != 0:
        # stderr never holds a token (it is printed on stdout only).
        raise TargetError(f"relay {args[0]} {args[1]} failed: {done.stderr.decode()[-500:]}")
    return str(done.stdout.decode().strip())


def _relay_env(mock: MockUpstream, data_dir: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CODER_AI_GATEWAY_", "CODER_AIBRIDGE_"))
    }
    env.update(
        CODER_AI_GATEWAY_OPENAI_KEY=UPSTREAM_KEY,
        CODER_AI_GATEWAY_OPENAI_BASE_URL=mock.openai_base_url + "/",
        CODER_AI_GATEWAY_ANTHROPIC_KEY=UPSTREAM_KEY,
        CODER_AI_GATEWAY_ANTHROPIC_BASE_URL=mock.base_url + "/",
        CODER_AI_GATEWAY_SHUTDOWN_GRACE="1s",
    )
    if data_dir is not None:
        env["CODER_AI_GATEWAY_DATA_DIR"] = data_dir
    return env


@contextlib.asynccontextmanager
async def _relay(mock: MockUpstream, log_dir: Path) -> AsyncIterator[RunningTarget]:
    data_dir = None
    if not os.environ.get("CODER_PG_CONNECTION_URL"):
        data_dir = tempfile.mkdtemp(prefix="relay-bench-")
        os.chmod(data_dir, 0o755)  # the embedded cluster runs as 'postgres' when we are root
    try:
        env = _relay_env(mock, data_dir)
        user = f"bench-{os.getpid()}-{int(time.time())}"
        await _relay_cli(["users", "create", user], env)
        token = (await _relay_cli(["tokens", "create", "--user", user], env)).encode()
        port = free_port()
        command = [sys.executable, "-m", "relay.cli", "serve"]
        command += ["--ai-gateway-http-address", f"127.0.0.1:{port}"]
        async with _subprocess(
            "relay", command, port, log_dir, env=env, health_path="/healthz"
        ) as (
            pid,
            log,
        ):
            endpoint = Endpoint(
                "127.0.0.1",
                port,
                {
                    "openai": "/api/v2/ai-gateway/openai",
                    "anthropic": "/api/v2/ai-gateway/anthropic",
                },
                _credentials(token, token),
            )
            yield RunningTarget("relay", endpoint, pid, str(log))
    finally:
        if data_dir is not None:
            await trio.to_thread.run_sync(_remove_data_dir, data_dir)


def _remove_data_dir(data_dir: str) -> None:
    # The relay stops its embedded cluster on exit; if it was killed instead,
    # stop() finds no live user left and stops the server before the removal.
    from relay.db.embedded import EmbeddedPostgres

    with contextlib.suppress(Exception):
        EmbeddedPostgres(Path(data_dir)).stop()
    shutil.rmtree(data_dir, ignore_errors=True)


LITELLM_CONFIG = REPO / "bench" / "peers" / "litellm-config.yaml"


def _litellm_config(mock: MockUpstream) -> str:
    template = string.Template(LITELLM_CONFIG.read_text())
    return template.substitute(api_base=mock.openai_base_url, api_key=UPSTREAM_KEY)


def _litellm_command(
    litellm_bin: str | None, mock: MockUpstream, log_dir: Path, port: int
) -> list[str]:
    if not litellm_bin or not Path(litellm_bin).exists():
        raise TargetError("LiteLLM is not installed: run bench/peers/litellm.sh")
    config = log_dir / "litellm-config.yaml"
    config.write_text(_litellm_config(mock))
    command = [litellm_bin, "--config", str(config), "--host", "127.0.0.1"]
    return [*command, "--port", str(port), "--num_workers", "1"]


@contextlib.asynccontextmanager
async def start_target(
    name: str,
    mock: MockUpstream,
    log_dir: Path,
    *,
    litellm_bin: str | None = None,
) -> AsyncIterator[RunningTarget]:
    """Start target ``name`` against ``mock``; stop it when the block is left."""
    key = CLIENT_KEY.encode()
    if name == "direct":
        yield RunningTarget(
            "direct", Endpoint("127.0.0.1", _port(mock), {}, _credentials(key, key)), None
        )
        return
    if name == "relay":
        async with _relay(mock, log_dir) as target:
            yield target
        return
    port = free_port()
    env: dict[str, str] | None = None
    health: str | None = None
    if name in ("asgi", "asgi-httpx"):
        module = "asgi_passthrough" if name == "asgi" else "asgi_httpx"
        command = [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "0"]
        command += ["-b", f"127.0.0.1:{port}", f"bench.load.floors.{module}:app"]
        env = {**os.environ, "BENCH_UPSTREAM": mock.base_url}
    elif name == "splice":
        command = [sys.executable, "-m", "bench.load.floors.trio_splice"]
        command += ["--port", str(port), "--upstream", mock.base_url]
    elif name == "litellm":
        command = _litellm_command(litellm_bin, mock, log_dir, port)
        # LiteLLM refuses to start without a master key; clients present it as
        # their key (a fresh one per run, never printed).
        key = b"sk-" + secrets.token_hex(32).encode()
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": key.decode(),
        }
        health = "/health/liveliness"
    else:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    async with _subprocess(name, command, port, log_dir, env=env, health_path=health) as (pid, log):
        yield RunningTarget(
            name, Endpoint("127.0.0.1", port, {}, _credentials(key, key)), pid, str(log)
        )


def _port(mock: MockUpstream) -> int:
    if mock.port is None:
        raise TargetError("the mock upstream is not serving")
    return mock.port


def describe_machine() -> dict[str, Any]:
    """What the report says about the machine the figures come from."""
    import platform

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("trio", "hypercorn", "h11", "httpx", "msgspec"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": versions,
    }
