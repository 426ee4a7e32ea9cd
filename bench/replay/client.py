"""The replay client: sends recorded requests through a relay and checks every byte.

Each response body the client receives must be byte-identical to the recorded
one (status included). Latency is measured from sending the request to the
response headers, the first body byte and the last.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field

import httpx
import trio

from bench.replay.cases import ReplayCase
from bench.replay.upstream import CASE_HEADER
from relay.dump import SENSITIVE_HEADERS, canonical_header_name

# Set by the client (or its HTTP library) for this connection, not replayed.
_NOT_SENT = frozenset(
    {
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Te",
        "Trailer",
        "Upgrade",
        "Accept-Encoding",
        canonical_header_name(CASE_HEADER),
    }
)


@dataclass
class Target:
    """Where requests go: a relay (with its token), or the replay upstream itself."""

    base_url: str
    token: str | None = None
    direct: bool = False

    def url_for(self, case: ReplayCase) -> str:
        base = self.base_url.rstrip("/")
        if self.direct:
            return base + case.api_path
        return f"{base}/api/v2/ai-gateway/{case.provider}{case.api_path}"


@dataclass
class Outcome:
    case_id: str
    ok: bool
    status: int | None = None
    error: str | None = None
    headers_s: float = 0.0  # request sent → response headers
    first_byte_s: float | None = None
    total_s: float = 0.0
    bytes: int = 0


@dataclass
class Mismatch:
    case_id: str
    expected_status: int
    status: int | None
    expected: bytes
    received: bytes

    def diff(self, max_lines: int = 60) -> str:
        lines = []
        if self.status != self.expected_status:
            lines.append(f"status: recorded {self.expected_status}, received {self.status}\n")
        recorded = self.expected.decode("utf-8", "replace").splitlines(keepends=True)
        received = self.received.decode("utf-8", "replace").splitlines(keepends=True)
        diff = list(
            difflib.unified_diff(recorded, received, "recorded", "received", n=2, lineterm="\n")
        )
        if not diff and self.expected != self.received:
            # Same text once decoded: the difference is in bytes that are not UTF-8.
            at = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(self.expected, self.received, strict=False))
                    if a != b
                ),
                min(len(self.expected), len(self.received)),
            )
            diff = [f"bytes differ at offset {at} (not visible as text)\n"]
        lines += diff[:max_lines]
        if len(diff) > max_lines:
            lines.append(f"... {len(diff) - max_lines} more diff lines\n")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@dataclass
class ReplayRun:
    outcomes: list[Outcome] = field(default_factory=list)
    first_mismatch: Mismatch | None = None
    wall_s: float = 0.0

    @property
    def mismatches(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok and o.error is None)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error is not None)

    def ok_count(self, case_id: str) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.case_id == case_id)


def request_headers(case: ReplayCase, target: Target) -> list[tuple[str, str]]:
    """The recorded headers minus credentials and framing, plus the relay token."""
    headers = [
        (name, value)
        for name, value in case.request.headers
        if canonical_header_name(name) not in SENSITIVE_HEADERS
        and canonical_header_name(name) not in _NOT_SENT
    ]
    headers.append((CASE_HEADER, case.id))
    headers.append(("accept-encoding", "identity"))
    if target.token:
        headers.append(("authorization", f"Bearer {target.token}"))
    return headers


async def replay_cases(
    cases: list[ReplayCase],
    target: Target,
    *,
    concurrency: int = 1,
    repeat: int = 1,
    timeout: float = 120.0,
) -> ReplayRun:
    """Send every case ``repeat`` times, ``concurrency`` at once, oldest first."""
    run = ReplayRun()
    work = [case for _ in range(repeat) for case in cases]
    work.reverse()  # pop() from the end takes them in order
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: never through a proxy from the environment (loopback only).
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout), limits=limits, trust_env=False
    ) as client:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, concurrency)):
                nursery.start_soon(_worker, client, target, work, run)
        run.wall_s = time.perf_counter() - started
    return run


async def _worker(
    client: httpx.AsyncClient, target: Target, work: list[ReplayCase], run: ReplayRun
) -> None:
    while work:
        case = work.pop()
        outcome, received = await _send_one(client, target, case)
        run.outcomes.append(outcome)
        if not outcome.ok and outcome.error is None and run.first_mismatch is None:
            run.first_mismatch = Mismatch(
                case.id, case.response.status, outcome.status, case.response.body, received
            )


async def _send_one(
    client: httpx.AsyncClient, target: Target, case: ReplayCase
) -> tuple[Outcome, bytes]:
    outcome = Outcome(case.id, ok=False)
    parts: list[bytes] = []
    sent = time.perf_counter()
    try:
        request = client.build_request(
            case.request.method,
            target.url_for(case),
            headers=request_headers(case, target),
            content=case.request.body or None,
        )
        response = await client.send(request, stream=True)
        try:
            outcome.headers_s = time.perf_counter() - sent
            outcome.status = response.status_code
            async for piece in response.aiter_raw():
                if outcome.first_byte_s is None:
                    outcome.first_byte_s = time.perf_counter() - sent
                parts.append(piece)
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.total_s = time.perf_counter() - sent
    received = b"".join(parts)
    outcome.bytes = len(received)
    outcome.ok = (
        outcome.error is None
        and outcome.status == case.response.status
        and received == case.response.body
    )
    return outcome, received
