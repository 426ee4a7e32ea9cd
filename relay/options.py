"""Every option of the relay, declared once.

Each option has a new name (env ``CODER_AI_GATEWAY_<X>``, flag
``--ai-gateway-<x>``) and a deprecated alias (env ``CODER_AIBRIDGE_<X>``, flag
``--aibridge-<x>``) that works exactly like it and prints one deprecation line.
Where both are given the new name wins. Flags win over the environment.

``docs/configuration.md`` is generated from this registry
(``python -m relay.options --markdown``), and so is ``relay/option_fields.py``
(``--write-fields``): the typed, frozen attributes of ``Options``, one per
option, of the type its parser returns. Tests fail when either drifts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigurationError
from relay.option_fields import OptionFields

NEW_ENV_PREFIX = "CODER_AI_GATEWAY_"
OLD_ENV_PREFIX = "CODER_AIBRIDGE_"
NEW_FLAG_PREFIX = "--ai-gateway-"
OLD_FLAG_PREFIX = "--aibridge-"


class OptionError(ConfigurationError, ValueError):
    """An option has a value that cannot be used; the message names it."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kib|kb|mib|mb|gib|gb)?\s*$", re.I)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(text: str) -> float:
    """Parse ``15s``, ``250ms``, ``30m``, ``2h``, ``60d`` (bare numbers are seconds)."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 15s, 30m, 2h, 60d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """Parse ``33554432``, ``32MiB``, ``512KB``."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 32MiB)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_str(text: str) -> str:
    return text


_ADDRESS_RE = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Za-z:.%]+)\]|(?P<host>[A-Za-z0-9._-]*)):(?P<port>\d+)$"
)


def parse_address(text: str) -> str:
    """``HOST:PORT`` (``[::1]:4001`` for IPv6; an empty host listens on every interface).

    The text is returned unchanged; only its shape and the port range are checked,
    so ``localhost`` (no port) or port 99999 are refused here, before anything starts.
    """
    value = text.strip()
    m = _ADDRESS_RE.match(value)
    if m is None:
        if re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError(f"{text!r} has no port (use HOST:PORT, e.g. {value}:4001)")
        if value.count(":") > 1 and not value.startswith("["):
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:4001")
        raise ValueError(f"{text!r} is not a HOST:PORT address (e.g. 127.0.0.1:4001)")
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is out of range (0-65535)")
    return value


def split_proxy_upstream(text: str) -> tuple[str, str, int, tuple[str, str] | None]:
    """``http(s)://[user:pass@]host:port`` → (scheme, host, port, (user, pass) or None).

    A ValueError never quotes the value: it may hold a password.
    """
    shape = "http(s)://[user:pass@]host:port"
    try:
        url = urllib.parse.urlsplit(text.strip())
        port = url.port
    except ValueError:
        raise ValueError(f"not a URL of the form {shape}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"the scheme must be http or https ({shape})")
    if not url.hostname or port is None:
        raise ValueError(f"needs a host and a port ({shape})")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"no path or query: only {shape}")
    credentials = None
    if url.username is not None or url.password is not None:
        user = urllib.parse.unquote(url.username or "")
        credentials = (user, urllib.parse.unquote(url.password or ""))
    return url.scheme, url.hostname, port, credentials


def parse_proxy_upstream(text: str) -> str:
    """Empty, or ``http(s)://[user:pass@]host:port`` (see ``split_proxy_upstream``)."""
    value = text.strip()
    if value:
        split_proxy_upstream(value)
    return value


def parse_optional_address(text: str) -> str:
    """Empty, or ``HOST:PORT`` (see ``parse_address``)."""
    return parse_address(text) if text.strip() else ""


_PG_SCHEMES = ("postgresql", "postgres")


def parse_pg_url(text: str) -> str:
    """Empty (embedded mode) or a ``postgresql://`` / ``postgres://`` URL."""
    value = text.strip()
    if not value:
        return ""
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in _PG_SCHEMES:
        from relay.db.bridge import mask_dsn

        raise ValueError(
            f"{mask_dsn(value)} is not a PostgreSQL URL "
            "(use postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    return value


def parse_non_negative_int(text: str) -> int:
    value = parse_int(text)
    if value < 0:
        raise ValueError(f"cannot be negative: {value} (0 means no limit)")
    return value


def parse_minute_subject(text: str) -> str:
    value = text.strip().lower()
    if value not in ("user", "token"):
        raise ValueError("must be user or token")
    return value


def parse_positive_int(text: str) -> int:
    value = parse_int(text)
    if value < 1:
        raise ValueError(f"must be at least 1: {value}")
    return value


def parse_cidr_list(text: str) -> str:
    """Comma-separated address ranges (``10.0.0.0/8, fd00::/8``), returned normalised."""
    import ipaddress

    ranges = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            ranges.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"{part!r} is not an address range (e.g. 10.1.0.0/16)") from None
    return ",".join(ranges)


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_header_name(text: str) -> str:
    if not _HEADER_NAME_RE.match(text):
        raise ValueError(f"{text!r} is not a valid HTTP header name")
    return text


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


@dataclass(frozen=True)
class Option:
    """One option. ``key`` is the suffix after the prefix, e.g. ``HTTP_ADDRESS``."""

    key: str
    parse: Callable[[str], Any]
    default: str
    help: str
    group: str = "General"
    secret: bool = False
    # Options that are not under the AI Gateway prefix (CODER_PG_CONNECTION_URL).
    env_override: str | None = None
    flag_override: str | None = None
    has_alias: bool = True

    @property
    def attr(self) -> str:
        return self.key.lower()

    @property
    def env(self) -> str:
        return self.env_override or NEW_ENV_PREFIX + self.key

    @property
    def alias_env(self) -> str | None:
        return OLD_ENV_PREFIX + self.key if self.has_alias else None

    @property
    def flag(self) -> str:
        return self.flag_override or NEW_FLAG_PREFIX + self.key.lower().replace("_", "-")

    @property
    def alias_flag(self) -> str | None:
        return OLD_FLAG_PREFIX + self.key.lower().replace("_", "-") if self.has_alias else None


def _opt(*args: Any, **kwargs: Any) -> Option:
    return Option(*args, **kwargs)


OPTIONS: tuple[Option, ...] = (
    # General
    _opt(
        "PG_CONNECTION_URL",
        parse_pg_url,
        "",
        "PostgreSQL URL. Empty: a private PostgreSQL cluster is started inside the "
        "data directory (embedded mode).",
        env_override="CODER_PG_CONNECTION_URL",
        flag_override="--postgres-url",
        has_alias=False,
        secret=True,
    ),
    _opt(
        "HTTP_ADDRESS",
        parse_address,
        "127.0.0.1:4001",
        "Address the relay listens on (host:port; [::1]:4001 for IPv6, :4001 for every interface).",
    ),
    _opt(
        "DATA_DIR",
        parse_str,
        "",
        "Data directory: the embedded PostgreSQL cluster and the recorder's spool. "
        "Empty: a per-user data directory (~/.local/share/relay).",
    ),
    _opt(
        "DUMP_DIR",
        parse_str,
        "",
        "Base directory for request/response dumps. Each provider dumps to "
        "<base>/<provider name>. Empty: no dumps.",
    ),
    _opt("ACCESS_URL", parse_str, "", "The URL clients use to reach the relay (shown in output)."),
    _opt(
        "ALLOW_BYOK",
        parse_bool,
        "true",
        "Allow people to bring their own provider key (BYOK) with their relay token in "
        "the X-Coder-AI-Governance-Token header.",
        group="Access",
    ),
    _opt(
        "SEND_ACTOR_HEADERS",
        parse_bool,
        "false",
        "Send the person's user id and user name upstream (intercepted routes only, never "
        "passthrough). Client-sent headers of those names are always removed.",
        group="Access",
    ),
    _opt(
        "ACTOR_ID_HEADER",
        parse_header_name,
        "X-AI-Bridge-Actor-ID",
        "Header carrying the person's user id when actor headers are sent.",
        group="Access",
    ),
    _opt(
        "ACTOR_USERNAME_HEADER",
        parse_header_name,
        "X-AI-Bridge-Actor-Metadata-Username",
        "Header carrying the person's user name when actor headers are sent.",
        group="Access",
    ),
    _opt(
        "RATE_LIMIT",
        parse_non_negative_int,
        "0",
        "Requests per second per relay token, per relay process (bursts of this many pass); "
        "beyond it 429 with Retry-After. 0: off.",
        group="Access",
    ),
    _opt(
        "REQUESTS_PER_MINUTE",
        parse_non_negative_int,
        "0",
        "Intercepted requests per UTC minute per user (see MINUTE_LIMITS_PER), across every "
        "relay process sharing the database (eventual by about two sync intervals); beyond "
        "it 429 in the provider's shape with Retry-After, recorded as refused. 0: off.",
        group="Access",
    ),
    _opt(
        "TOKENS_PER_MINUTE",
        parse_non_negative_int,
        "0",
        "Tokens (input, output, cache read and write) per UTC minute per user (see "
        "MINUTE_LIMITS_PER), across the fleet; counted when the usage is recorded, so a "
        "request is refused once the minute's tokens reached it, and a running stream is "
        "never cut. 0: off.",
        group="Access",
    ),
    _opt(
        "MINUTE_LIMITS_PER",
        parse_minute_subject,
        "user",
        "What REQUESTS_PER_MINUTE and TOKENS_PER_MINUTE limit: each `user`, or each relay `token`.",
        group="Access",
    ),
    _opt(
        "MINUTE_LIMITS_SYNC_INTERVAL",
        parse_duration,
        "1s",
        "How often each relay process adds its per-minute counts to PostgreSQL and reads "
        "the fleet's totals back (one statement per interval, whatever the traffic).",
        group="Access",
    ),
    _opt(
        "MAX_CONCURRENCY",
        parse_non_negative_int,
        "0",
        "Requests one relay process serves at a time; beyond it 503 at once (no queueing). "
        "0: unlimited.",
        group="Resilience",
    ),
    _opt(
        "MAX_CONNECTIONS",
        parse_int,
        "1000",
        "Client connections one relay process holds open; one more is answered 503 "
        "(connection: close) before its request is read. Keep it well under the process's "
        "fd limit (a streaming request also holds an upstream connection). 0: unlimited.",
        group="Resilience",
    ),
    _opt(
        "KEY_AUTH_COOLDOWN",
        parse_duration,
        "10m",
        "How long a provider key refused with 401/403 is left out of its key pool (a 429 "
        "rests the key for the provider's Retry-After, 60s without one).",
        group="Resilience",
    ),
    _opt(
        "CIRCUIT_BREAKER_ENABLED",
        parse_bool,
        "false",
        "Circuit breakers per provider, route and model: after repeated upstream 429, 503, "
        "504 (and Anthropic 529) answers, requests get 503 at once for a while.",
        group="Resilience",
    ),
    _opt(
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        parse_positive_int,
        "5",
        "Consecutive failures that open a circuit.",
        group="Resilience",
    ),
    _opt(
        "CIRCUIT_BREAKER_INTERVAL",
        parse_duration,
        "10s",
        "While a circuit is closed, its failure count starts over this often.",
        group="Resilience",
    ),
    _opt(
        "CIRCUIT_BREAKER_TIMEOUT",
        parse_duration,
        "30s",
        "How long an open circuit refuses requests before it lets trial requests through "
        "(half-open).",
        group="Resilience",
    ),
    _opt(
        "CIRCUIT_BREAKER_MAX_REQUESTS",
        parse_positive_int,
        "3",
        "Trial requests a half-open circuit lets through; when all succeed it closes, the "
        "first failure opens it again.",
        group="Resilience",
    ),
    _opt(
        "MAX_REQUEST_BODY",
        parse_size,
        "32MiB",
        "Largest request body accepted; larger bodies get 413.",
        group="Requests",
    ),
    _opt(
        "MAX_BODIES_IN_FLIGHT",
        parse_size,
        "256MiB",
        "Request bytes one relay process holds at once, summed over every "
        "request body being read or relayed; a request that would go over it gets 503 (with "
        "Retry-After) in the provider's shape. 0: no limit.",
        group="Requests",
    ),
    _opt(
        "REQUEST_BODY_TIMEOUT",
        parse_duration,
        "30s",
        "Longest time a client may take to send a whole request body; beyond it 408 and "
        "the connection is closed. The body is read before a MAX_CONCURRENCY slot is taken.",
        group="Requests",
    ),
    _opt(
        "REQUEST_BODY_IDLE_TIMEOUT",
        parse_duration,
        "10s",
        "Longest silence while a request body is being sent; beyond it 408 and the "
        "connection is closed.",
        group="Requests",
    ),
    _opt(
        "KEEPALIVE_INTERVAL",
        parse_duration,
        "15s",
        "Idle gap on a stream after which an SSE comment (': keepalive') is sent.",
        group="Requests",
    ),
    _opt(
        "SHUTDOWN_GRACE",
        parse_duration,
        "30s",
        "On SIGTERM/SIGINT, how long open streams may run before they are cancelled.",
        group="Requests",
    ),
    _opt(
        "UPSTREAM_CONNECT_TIMEOUT",
        parse_duration,
        "10s",
        "Timeout for connecting to a provider (504 when exceeded).",
        group="Requests",
    ),
    _opt(
        "UPSTREAM_READ_TIMEOUT",
        parse_duration,
        "10m",
        "Longest silence from a provider before the request fails.",
        group="Requests",
    ),
    _opt(
        "RESPONSES_WEBSOCKET",
        parse_bool,
        "true",
        "Bridge the OpenAI Responses API over WebSocket (wss://…/<openai provider>/v1/"
        "responses, what Codex tries first with supports_websockets). Off: upgrades are "
        "answered 426 and clients fall back to HTTP.",
        group="Requests",
    ),
    _opt(
        "RESPONSES_WEBSOCKET_MAX_PER_USER",
        parse_non_negative_int,
        "16",
        "Responses WebSockets one person may hold open per relay process; one more is "
        "answered 426 (the client falls back to HTTP). 0: unlimited.",
        group="Requests",
    ),
    _opt(
        "RESPONSES_WEBSOCKET_MAX",
        parse_non_negative_int,
        "512",
        "Responses WebSockets one relay process holds open; one more is answered 426. "
        "0: unlimited.",
        group="Requests",
    ),
    _opt(
        "RESPONSES_WEBSOCKET_LIFETIME",
        parse_duration,
        "60m",
        "Longest life of a Responses WebSocket: then OpenAI's "
        "websocket_connection_limit_reached error event and close 1001.",
        group="Requests",
    ),
    _opt(
        "RESPONSES_WEBSOCKET_PING_INTERVAL",
        parse_duration,
        "30s",
        "A ping to the client and to the provider this often on a Responses WebSocket. 0: none.",
        group="Requests",
    ),
    _opt(
        "RETENTION",
        parse_duration,
        "60d",
        "How long recorded interceptions, token usage, prompts, tool calls and thoughts "
        "are kept; older rows are deleted in the background. 0: keep forever.",
        group="Recording",
    ),
    _opt(
        "BUDGET_REFRESH_INTERVAL",
        parse_duration,
        "2s",
        "How often each relay process rereads the budgets' spend totals from PostgreSQL "
        "(one query per interval): other processes' spend reaches its budget checks within "
        "this plus their recorder flush interval.",
        group="Recording",
    ),
    _opt(
        "RECORDER_FLUSH_INTERVAL",
        parse_duration,
        "50ms",
        "Longest time a recorded event waits in memory before its batch is written.",
        group="Recording",
    ),
    _opt(
        "RECORDER_BATCH_SIZE",
        parse_int,
        "1000",
        "Rows per write: a batch is written when it reaches this size or the flush "
        "interval has passed, whichever comes first.",
        group="Recording",
    ),
    _opt(
        "MAX_STORED_PROMPT",
        parse_size,
        "64KiB",
        "Longest prompt stored (UTF-8 bytes); a longer one is stored cut, marked "
        "truncated, with its whole size (user_prompts.truncated, original_bytes). "
        "0: store whole prompts.",
        group="Recording",
    ),
    _opt(
        "RECORDER_QUEUE_SIZE",
        parse_int,
        "10000",
        "Interceptions whose records may wait in memory for the writer; beyond it they "
        "go straight to the on-disk spool (a stream never waits for the recorder).",
        group="Recording",
    ),
    _opt(
        "REQUIRE_RECORDING",
        parse_bool,
        "false",
        "Refuse new intercepted requests with 503 (in the provider's error shape, with "
        "Retry-After) while their usage could be neither written to PostgreSQL nor spooled "
        "to disk (database away and spool unwritable or full); checked every second. "
        "false: such requests are served and their records counted as lost.",
        group="Recording",
    ),
    _opt(
        "ADMIN_TOKEN",
        parse_str,
        "",
        "Bearer token of the admin API (/api/v2/ai-gateway/admin/...) and a sign-in of the "
        "console (docs/console.md), beside the relay tokens of admin users (relay users "
        "admin NAME). Empty: only admin users' tokens are admitted.",
        group="Recording",
        secret=True,
    ),
    _opt(
        "METRICS_ADDRESS",
        parse_optional_address,
        "",
        "Where /metrics (Prometheus text format) is served. Empty: on the main listener; "
        "host:port: on a listener of its own. See docs/metrics.md.",
        group="Observability",
    ),
    _opt(
        "METRICS_TOKEN",
        parse_str,
        "",
        "Bearer token /metrics requires (Authorization: Bearer <token>), on the main "
        "listener and on METRICS_ADDRESS alike; others get 401. Empty: /metrics is open "
        "to whoever reaches it. See docs/security.md.",
        group="Observability",
        secret=True,
    ),
    _opt(
        "METRICS_MAX_MODELS",
        parse_int,
        "100",
        "Distinct model names one relay process gives metric series (and circuit breakers) "
        'of their own; later ones are counted under model="other". Model names are '
        "chosen by clients: this bounds /metrics.",
        group="Observability",
    ),
    _opt(
        "METRICS_INITIATOR_ID_LABEL",
        parse_bool,
        "false",
        "Fill the initiator_id label (the user's id) of the interception, prompt and "
        "token metrics: one series per person. Off: the label is empty.",
        group="Observability",
    ),
    _opt(
        "STRUCTURED_LOGGING",
        parse_bool,
        "false",
        'Log JSON lines on stderr: one line per recorded event (message "interception log", '
        "record_type interception_start, interception_end, token_usage, prompt_usage, "
        "tool_usage, model_thought) and every other line in the same shape, with the request "
        "id, interception id, user id and provider. Off: plain text. See docs/observability.md.",
        group="Observability",
    ),
    _opt(
        "STRUCTURED_LOGGING_CONTENT",
        parse_bool,
        "false",
        "With STRUCTURED_LOGGING: the log lines carry the prompt text, the tool call inputs "
        "and the model's thoughts too. Off: only their sizes.",
        group="Observability",
    ),
    _opt(
        "TRACE_ENABLE",
        parse_bool,
        "false",
        "Export OpenTelemetry traces (a span per interception, its upstream request, injected "
        "tool calls, passthrough and recording). The exporter and the sampler are configured "
        "by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, "
        "...). See docs/observability.md.",
        group="Observability",
        env_override="CODER_TRACE_ENABLE",
        flag_override="--trace",
        has_alias=False,
    ),
    _opt(
        "PROXY_ENABLED",
        parse_bool,
        "false",
        "Run the AI Gateway Proxy: an HTTPS_PROXY for clients that cannot change their base "
        "URL. It decrypts the traffic of the known LLM hosts and serves it as relay requests, "
        "and tunnels everything else. See docs/proxy.md.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_LISTEN_ADDR",
        parse_address,
        "127.0.0.1:8888",
        "Address the proxy listens on (host:port).",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_CERT_FILE",
        parse_str,
        "",
        "PEM certificate of the CA that signs the proxy's leaf certificates (with "
        "PROXY_KEY_FILE). Empty: a CA generated into <data dir>/proxy/ on first start.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_KEY_FILE",
        parse_str,
        "",
        "PEM private key of that CA.",
        group="AI Gateway Proxy",
        secret=True,
    ),
    _opt(
        "PROXY_TLS_CERT_FILE",
        parse_str,
        "",
        "PEM certificate (chain) of the proxy's own listener (with PROXY_TLS_KEY_FILE): "
        "clients then speak TLS (1.2 at least) to the proxy, HTTPS_PROXY=https://…. "
        "Empty: the listener is plain TCP.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_TLS_KEY_FILE",
        parse_str,
        "",
        "PEM private key of PROXY_TLS_CERT_FILE.",
        group="AI Gateway Proxy",
        secret=True,
    ),
    _opt(
        "PROXY_UPSTREAM",
        parse_proxy_upstream,
        "",
        "A corporate proxy, http(s)://[user:pass@]host:port, that tunneled (not decrypted) "
        "traffic goes through by CONNECT (Proxy-Authorization: Basic with user:pass). It "
        "resolves the names again: the guarantee against DNS rebinding is then its to keep. "
        "Empty: tunnels connect directly.",
        group="AI Gateway Proxy",
        secret=True,
    ),
    _opt(
        "PROXY_UPSTREAM_CA",
        parse_str,
        "",
        "PEM CA bundle to trust for an https:// PROXY_UPSTREAM. Empty: the system's CAs.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_ALLOWED_PRIVATE_CIDRS",
        parse_cidr_list,
        "",
        "Comma-separated address ranges (10.1.0.0/16, fd00::/8) tunneled traffic may reach "
        "although they are private or reserved. Empty: none.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_MAX_TUNNELS",
        parse_non_negative_int,
        "1000",
        "Connections the proxy holds open at once, authenticated or not; one more is "
        "answered 503 and closed. 0: unlimited.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_MAX_TUNNELS_PER_USER",
        parse_non_negative_int,
        "100",
        "Tunnels (decrypted or not) one proxy user holds open at once; one more is "
        "answered 429. 0: unlimited.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_HEADER_TIMEOUT",
        parse_duration,
        "10s",
        "Longest time a client may take to send its proxy request head (CONNECT line and "
        "headers); beyond it the connection is closed.",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_DIAL_TIMEOUT",
        parse_duration,
        "10s",
        "Longest time resolving and connecting to a tunnel's destination may take (504 "
        "when exceeded).",
        group="AI Gateway Proxy",
    ),
    _opt(
        "PROXY_IDLE_TIMEOUT",
        parse_duration,
        "5m",
        "A tunnel that carries no byte either way for this long is closed.",
        group="AI Gateway Proxy",
    ),
    # Legacy single-provider options.
    _opt("OPENAI_KEY", parse_str, "", "Key of the provider named 'openai'.", "Providers", True),
    _opt(
        "OPENAI_BASE_URL",
        parse_str,
        "https://api.openai.com/v1/",
        "Base URL of the provider named 'openai'.",
        "Providers",
    ),
    _opt(
        "ANTHROPIC_KEY", parse_str, "", "Key of the provider named 'anthropic'.", "Providers", True
    ),
    _opt(
        "ANTHROPIC_BASE_URL",
        parse_str,
        "https://api.anthropic.com/",
        "Base URL of the provider named 'anthropic'.",
        "Providers",
    ),
    _opt("BEDROCK_REGION", parse_str, "", "Region of the provider named 'bedrock'.", "Providers"),
    _opt(
        "BEDROCK_ACCESS_KEY",
        parse_str,
        "",
        "AWS access key id of the provider named 'bedrock'.",
        "Providers",
        True,
    ),
    _opt(
        "BEDROCK_ACCESS_KEY_SECRET",
        parse_str,
        "",
        "AWS secret access key of the provider named 'bedrock'.",
        "Providers",
        True,
    ),
    _opt(
        "BEDROCK_MODEL",
        parse_str,
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "Bedrock model for requests of the provider named 'bedrock'.",
        "Providers",
    ),
    _opt(
        "BEDROCK_SMALL_FAST_MODEL",
        parse_str,
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "Bedrock model for 'haiku' requests of the provider named 'bedrock'.",
        "Providers",
    ),
    _opt(
        "BEDROCK_BASE_URL",
        parse_str,
        "",
        "Replaces https://bedrock-runtime.<region>.amazonaws.com for the provider named 'bedrock'.",
        "Providers",
    ),
    # MCP tool injection (docs/mcp.md); the servers themselves are indexed (MCP_SERVER_KEYS).
    _opt(
        "MCP_TOOL_TIMEOUT",
        parse_duration,
        "60s",
        "Longest an injected MCP tool call may take; past it the model is told the call timed out.",
        "MCP tool injection",
    ),
    _opt(
        "MCP_MAX_ROUNDS",
        parse_positive_int,
        "10",
        "Most upstream requests one answer may take while the model calls injected tools; "
        "past it the answer ends with an error.",
        "MCP tool injection",
    ),
    _opt(
        "MCP_REFRESH_INTERVAL",
        parse_duration,
        "5m",
        "How often each MCP server's tool list is fetched again (it is also fetched on "
        "notifications/tools/list_changed, and a server that is down is retried this often, "
        "at most every 30s); 0: only at start and on notifications.",
        "MCP tool injection",
    ),
    _opt(
        "MCP_CONNECT_TIMEOUT",
        parse_duration,
        "10s",
        "Longest connecting to an MCP server and listing its tools may take.",
        "MCP tool injection",
    ),
    _opt(
        "MCP_MAX_RESULT_SIZE",
        parse_size,
        "256KiB",
        "Largest tool result (UTF-8 text) handed to the model; a longer one is cut and says so.",
        "MCP tool injection",
    ),
)

OPTIONS_BY_KEY = {o.key: o for o in OPTIONS}

# Keys of indexed providers: CODER_AI_GATEWAY_PROVIDER_<N>_<KEY>.
PROVIDER_KEYS: tuple[tuple[str, str], ...] = (
    ("TYPE", "Provider type: openai, anthropic, bedrock or copilot."),
    ("NAME", "Instance name used in the route (defaults to TYPE); ^[a-z0-9]+(-[a-z0-9]+)*$."),
    ("KEY", "The provider's API key (for bedrock: a Bedrock API key)."),
    ("KEYS", "Comma-separated key pool, at most 5, tried in order (not with KEY)."),
    ("BASE_URL", "Upstream base URL."),
    ("BEDROCK_REGION", "AWS region."),
    ("BEDROCK_ACCESS_KEY", "AWS access key id (not with KEY)."),
    ("BEDROCK_ACCESS_KEY_SECRET", "AWS secret access key."),
    ("BEDROCK_MODEL", "Bedrock model for ordinary requests."),
    ("BEDROCK_SMALL_FAST_MODEL", "Bedrock model for requests naming a 'haiku' model."),
    ("BEDROCK_BASE_URL", "Replaces the Bedrock runtime endpoint."),
    (
        "RESPONSES_WEBSOCKET",
        "openai: bridge the Responses API over WebSocket (default true; false: 426, "
        "clients use HTTP).",
    ),
)


# Keys of indexed MCP servers: CODER_AI_GATEWAY_MCP_SERVER_<N>_<KEY> (docs/mcp.md).
MCP_SERVER_KEYS: tuple[tuple[str, str], ...] = (
    (
        "NAME",
        "The server's name in injected tool names (bmcp_<NAME>_<tool>); ^[a-z0-9]+(-[a-z0-9]+)*$.",
    ),
    ("URL", "The server's Streamable HTTP endpoint (http:// or https://)."),
    (
        "HEADERS",
        "Headers sent with every request to the server (secret): a JSON object, or "
        "`Name: value` pairs one per line.",
    ),
    ("TOOL_ALLOW_REGEX", "Only tools whose name matches are injected (empty: all)."),
    ("TOOL_DENY_REGEX", "Tools whose name matches are not injected; deny wins over allow."),
)
_MCP_KNOWN_KEYS = frozenset(key for key, _ in MCP_SERVER_KEYS)
_MCP_VAR_RE = re.compile(r"^(CODER_AI_GATEWAY_|CODER_AIBRIDGE_)MCP_SERVER_([^_]+)_(.+)$")
_MCP_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MCP_MAX_SERVERS = 32


@dataclass(frozen=True, slots=True)
class McpServerOption:
    """One configured MCP server; ``headers`` are secret (never in a repr or a log)."""

    index: int
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allow: re.Pattern[str] | None = None
    deny: re.Pattern[str] | None = None

    def injects(self, tool: str) -> bool:
        """Deny wins over allow; no allow pattern allows every tool."""
        if self.deny is not None and self.deny.search(tool):
            return False
        return self.allow is None or self.allow.search(tool) is not None


def parse_mcp_headers(text: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of strings, or ``Name: value`` lines. The message never shows a value."""
    value = text.strip()
    if not value:
        return ()
    pairs: list[tuple[str, str]] = []
    if value.startswith("{"):
        import json

        try:
            obj = json.loads(value)
        except ValueError:
            raise ValueError("not a JSON object of header names to values") from None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise ValueError("a JSON object whose values are strings is required")
        pairs = [(str(k), v) for k, v in obj.items()]
    else:
        for line in value.splitlines():
            if not line.strip():
                continue
            name, sep, rest = line.partition(":")
            if not sep:
                raise ValueError("each line must be `Name: value`")
            pairs.append((name.strip(), rest.strip()))
    for name, header_value in pairs:
        if not _HEADER_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if any(c in header_value for c in "\r\n\0"):
            raise ValueError(f"the value of {name} has a line break or NUL")
    return tuple(pairs)


def _mcp_regex(text: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def parse_mcp_servers(
    env: Mapping[str, str], warn: Callable[[str], None]
) -> tuple[McpServerOption, ...]:
    """The indexed MCP servers: indices from 0, contiguous; every problem in one error."""
    indices: set[int] = set()
    problems: list[str] = []
    for name in sorted(env):
        m = _MCP_VAR_RE.match(name)
        if not m:
            continue
        raw_index, key = m.group(2), m.group(3)
        if not raw_index.isdigit() or (raw_index != "0" and raw_index.startswith("0")):
            problems.append(f"{name}: MCP server index {raw_index!r} is not a number like 0, 1, 2")
            continue
        if key not in _MCP_KNOWN_KEYS:
            known = ", ".join(k for k, _ in MCP_SERVER_KEYS)
            warn(f"WARN: {name} is not an MCP server setting and is ignored (known: {known}).")
            continue
        indices.add(int(raw_index))
    servers: list[McpServerOption] = []
    names: dict[str, str] = {}
    if len(indices) > MCP_MAX_SERVERS:
        problems.append(f"at most {MCP_MAX_SERVERS} MCP servers can be configured")
    for index in sorted(indices)[:MCP_MAX_SERVERS]:
        if index > 0 and index - 1 not in indices:
            problems.append(
                f"{NEW_ENV_PREFIX}MCP_SERVER_{index}_*: MCP server indices must be contiguous "
                f"from 0 ({index - 1} is missing)"
            )
        raw: dict[str, tuple[str, str]] = {}
        for key in _MCP_KNOWN_KEYS:
            new, old = f"{NEW_ENV_PREFIX}MCP_SERVER_{index}_{key}", None
            old = f"{OLD_ENV_PREFIX}MCP_SERVER_{index}_{key}"
            value, source = lookup_env(env, new, old, warn)
            if value is not None and source is not None and value.strip():
                raw[key] = (value.strip(), source)

        def var(key: str, index: int = index, raw: dict[str, tuple[str, str]] = raw) -> str:
            return raw[key][1] if key in raw else f"{NEW_ENV_PREFIX}MCP_SERVER_{index}_{key}"

        name = raw.get("NAME", ("", ""))[0]
        url = raw.get("URL", ("", ""))[0]
        start = len(problems)
        if not name:
            problems.append(f"{var('NAME')} is required")
        elif not _MCP_NAME_RE.match(name):
            problems.append(
                f"{var('NAME')}={name!r}: a name must match ^[a-z0-9]+(-[a-z0-9]+)*$ "
                "(lower-case letters, digits, single hyphens)"
            )
        elif name in names:
            problems.append(f"{var('NAME')}={name!r}: the name is taken by {names[name]}")
        else:
            names[name] = var("NAME")
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if not url:
            problems.append(f"{var('URL')} is required")
        elif scheme not in ("http", "https") or not url.partition("://")[2].strip("/"):
            problems.append(f"{var('URL')}: an http:// or https:// URL is required")
        headers: tuple[tuple[str, str], ...] = ()
        allow = deny = None
        try:
            headers = parse_mcp_headers(raw.get("HEADERS", ("", ""))[0])
        except ValueError as exc:
            problems.append(f"{var('HEADERS')}: {exc}")
        for key in ("TOOL_ALLOW_REGEX", "TOOL_DENY_REGEX"):
            try:
                pattern = _mcp_regex(raw.get(key, ("", ""))[0])
            except ValueError as exc:
                problems.append(f"{var(key)}: {exc}")
                continue
            if key == "TOOL_ALLOW_REGEX":
                allow = pattern
            else:
                deny = pattern
        if len(problems) == start:
            servers.append(McpServerOption(index, name, url, headers, allow, deny))
    if problems:
        raise OptionError("\n".join(problems))
    return tuple(servers)


_PROVIDER_VAR_RE = re.compile(r"^(CODER_AI_GATEWAY_|CODER_AIBRIDGE_)PROVIDER_[^_]+_.+$")
_INDEX_RE = re.compile(r"PROVIDER_?S?_?(\d+)")


def closest_env_name(name: str) -> str | None:
    """The known variable ``name`` most likely meant (indexed providers keep their index).

    Under one of the two prefixes only the rest is compared (the shared prefix would
    make every name look alike); any other name is compared whole, strictly.
    """
    m = _INDEX_RE.search(name)
    index = m.group(1) if m else "0"
    keys = [o.key for o in OPTIONS if o.env_override is None]
    keys += [f"PROVIDER_{index}_{key}" for key, _ in PROVIDER_KEYS]
    for prefix in (NEW_ENV_PREFIX, OLD_ENV_PREFIX):
        if name.startswith(prefix):
            found = difflib.get_close_matches(name[len(prefix) :], keys, n=1, cutoff=0.7)
            return prefix + found[0] if found else None
    candidates = [o.env for o in OPTIONS if o.env_override] + [
        prefix + key for prefix in (NEW_ENV_PREFIX, OLD_ENV_PREFIX) for key in keys
    ]
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.85)
    return found[0] if found else None


def unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    """One line per ``CODER_AI_GATEWAY_*`` / ``CODER_AIBRIDGE_*`` variable that is no option.

    A variable under another ``CODER_`` name is only reported when it is very close
    to a known one (``CODER_AI_GATEWY_...``): Coder's own variables may share the
    environment. Indexed provider variables are checked by ``relay.providers.env``.
    """
    known = {o.env for o in OPTIONS} | {o.alias_env for o in OPTIONS if o.alias_env}
    lines = []
    for name in sorted(env):
        if (
            not name.startswith("CODER_")
            or name in known
            or _PROVIDER_VAR_RE.match(name)
            or _MCP_VAR_RE.match(name)
        ):
            continue
        ours = name.startswith((NEW_ENV_PREFIX, OLD_ENV_PREFIX))
        suggestion = closest_env_name(name)
        if suggestion is None and not ours:
            continue
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        lines.append(f"WARN: {name} is not a relay option and is ignored{hint}")
    return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class Options(OptionFields):
    """Resolved option values, one typed attribute per option (``Option.attr``).

    Built by ``load_options`` only, which has checked every value; frozen, so
    what was checked is what is used.
    """

    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The indexed MCP servers (CODER_AI_GATEWAY_MCP_SERVER_<N>_<KEY>), checked.
    mcp_servers: tuple[McpServerOption, ...] = ()

    def source(self, attr: str) -> str:
        """Where a value came from: 'default', an env var name or a flag."""
        return self._sources.get(attr, "default")

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` (option attributes), the sources kept."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(OptionFields)}


@dataclass
class Warnings:
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)


def deprecation_line(old: str, new: str) -> str:
    return f"WARN: {old} is deprecated; use {new} instead (the old name still works)."


def lookup_env(
    env: Mapping[str, str], new: str, old: str | None, warn: Callable[[str], None]
) -> tuple[str | None, str | None]:
    """Value and source of an env option, honouring the deprecated alias."""
    if new in env:
        return env[new], new
    if old is not None and old in env:
        warn(deprecation_line(old, new))
        return env[old], old
    return None, None


def add_flags(parser: argparse.ArgumentParser, options: Iterable[Option] = OPTIONS) -> None:
    """Add each option's flag (shown in --help) and its alias (hidden)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options:
        group = groups.get(opt.group)
        if group is None:
            group = groups[opt.group] = parser.add_argument_group(opt.group)
        default_text = "(empty)" if opt.default == "" else opt.default
        group.add_argument(
            opt.flag,
            dest=f"opt_{opt.attr}",
            default=None,
            metavar=opt.key,
            help=f"{opt.help} Env: {opt.env}. Default: {default_text}.",
        )
        if opt.alias_flag:
            group.add_argument(
                opt.alias_flag, dest=f"optalias_{opt.attr}", default=None, help=argparse.SUPPRESS
            )


def load_options(
    env: Mapping[str, str],
    flags: argparse.Namespace | None = None,
    warn: Callable[[str], None] | None = None,
) -> Options:
    """Resolve every option: flag, alias flag, env, alias env, then default."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    for line in unknown_env_warnings(env):
        warn(line)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw: str | None = None
        source: str | None = None
        if flags is not None:
            v = getattr(flags, f"opt_{opt.attr}", None)
            if v is not None:
                raw, source = v, opt.flag
            else:
                v = getattr(flags, f"optalias_{opt.attr}", None)
                if v is not None and opt.alias_flag:
                    warn(deprecation_line(opt.alias_flag, opt.flag))
                    raw, source = v, opt.alias_flag
        if raw is None:
            raw, source = lookup_env(env, opt.env, opt.alias_env, warn)
        if raw is None:
            raw, source = opt.default, "default"
        try:
            values[opt.attr] = opt.parse(raw)
        except ValueError as exc:
            raise OptionError(f"{source}: {exc}") from None
        sources[opt.attr] = source or "default"
    options = Options(**values, _sources=sources, mcp_servers=parse_mcp_servers(env, warn))
    check_options(options)
    return options


def check_options(options: Options) -> None:
    """Refuse values that each parse but cannot be used (together), naming where they came from.

    Part of ``load_options``: every option is refused here, before anything is
    bound, connected or started; what is built from the options afterwards
    (``relay.limits.RequestGuards.from_options``, the services) only builds.
    """

    def named(attr: str) -> str:
        source = options.source(attr)
        return f"{OPTIONS_BY_KEY[attr.upper()].env} (default)" if source == "default" else source

    bodies, request_body = options.max_bodies_in_flight, options.max_request_body
    if bodies and bodies < request_body:
        raise OptionError(
            f"{named('max_bodies_in_flight')}: {bodies} bytes is less than MAX_REQUEST_BODY "
            f"({request_body} bytes); use 0 (no limit) or at least MAX_REQUEST_BODY"
        )
    if options.metrics_max_models < 0:
        raise OptionError(f"{named('metrics_max_models')}: cannot be negative")


def markdown() -> str:
    """docs/configuration.md, generated from the registry."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m relay.options --markdown`; do not edit by hand. -->",
        "",
        "Every option can be given as an environment variable or as a flag of "
        "`relay serve`; a flag wins over the environment. Durations take `ms`, `s`, "
        "`m`, `h`, `d` (`15s`, `60d`); sizes take `KiB`, `MiB`, `GiB`.",
        "",
        "**Old names still work.** Every `CODER_AI_GATEWAY_<X>` variable has a deprecated "
        "alias `CODER_AIBRIDGE_<X>`, and every `--ai-gateway-<x>` flag has the alias "
        "`--aibridge-<x>`. An alias works exactly like the new name and prints one "
        "deprecation line naming it; where both are set, the new name wins.",
        "",
    ]
    groups: dict[str, list[Option]] = {}
    for opt in OPTIONS:
        groups.setdefault(opt.group, []).append(opt)
    for group, opts in groups.items():
        out += [f"## {group}", "", "| Environment | Flag | Default | Description |"]
        out += ["|---|---|---|---|"]
        for opt in opts:
            default = f"`{opt.default}`" if opt.default else "(empty)"
            out.append(f"| `{opt.env}` | `{opt.flag}` | {default} | {opt.help} |")
        out.append("")
    out += [
        "## Indexed providers",
        "",
        "Several provider instances, of one type or several, are configured with "
        "`CODER_AI_GATEWAY_PROVIDER_<N>_<KEY>` (alias `CODER_AIBRIDGE_PROVIDER_<N>_<KEY>`). "
        "Indices start at 0, are contiguous and sort numerically (10 after 9). "
        "See [providers.md](providers.md).",
        "",
        "| Key | Description |",
        "|---|---|",
    ]
    for key, help_text in PROVIDER_KEYS:
        out.append(f"| `{key}` | {help_text} |")
    out += [
        "",
        "## Indexed MCP servers",
        "",
        "Tools of MCP servers (Streamable HTTP) injected into every request are configured "
        "with `CODER_AI_GATEWAY_MCP_SERVER_<N>_<KEY>` (alias "
        "`CODER_AIBRIDGE_MCP_SERVER_<N>_<KEY>`), indices from 0, contiguous. "
        "See [mcp.md](mcp.md).",
        "",
        "| Key | Description |",
        "|---|---|",
    ]
    for key, help_text in MCP_SERVER_KEYS:
        out.append(f"| `{key}` | {help_text} |")
    out.append("")
    return "\n".join(out)


FIELDS_PATH = Path(__file__).with_name("option_fields.py")
_FIELD_TYPES: tuple[type, ...] = (str, int, float, bool)


def field_type(opt: Option) -> str:
    """The name of the type ``opt``'s parser returns (from its annotation)."""
    returned = typing.get_type_hints(opt.parse).get("return")
    if returned not in _FIELD_TYPES:
        raise TypeError(f"{opt.key}: its parser must be annotated to return one of {_FIELD_TYPES}")
    return typing.cast(type, returned).__name__


def fields_source() -> str:
    """relay/option_fields.py, generated from the registry."""
    out = [
        '"""The typed attributes of ``relay.options.Options``: one per option, generated.',
        "",
        "Generated by ``python -m relay.options --write-fields`` from ``relay.options.OPTIONS``",
        "(each option's type is its parser's return type); do not edit by hand: a test",
        "fails when this file drifts from the registry.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "",
        "",
        "@dataclass(frozen=True, slots=True, kw_only=True)",
        "class OptionFields:",
        '    """Every option\'s value; ``relay.options.Options`` adds where each came from."""',
        "",
    ]
    for opt in OPTIONS:
        out.append(f"    {opt.attr}: {field_type(opt)}  # {opt.env}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown())
    elif sys.argv[1:] == ["--write-fields"]:
        FIELDS_PATH.write_text(fields_source())
    else:
        print("usage: python -m relay.options --markdown | --write-fields", file=sys.stderr)
        sys.exit(2)
