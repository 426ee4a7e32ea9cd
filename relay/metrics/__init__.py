"""Prometheus metrics: the Coder AI Gateway's names, plus the relay's own.

``Metrics`` has one cheap method per fact the hot path learns (label children
are cached, so a call is a dict lookup and an add). ``metrics_endpoint`` is an
ASGI handler that renders the text format; ``serve_metrics_listener`` serves
it on an address of its own (option ``METRICS_ADDRESS``).

Several processes (``hypercorn -w N``) use prometheus_client's multiprocess
mode: every process writes its values to memory-mapped files in one directory
and whichever process answers a scrape sums them. ``metrics_for_process``
picks the mode: ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it; a
directory of the data dir keyed by the hypercorn master's pid when this
process is a hypercorn worker; otherwise (``relay serve``, one process) plain
in-memory values. See docs/metrics.md.

Label values a client chooses (model, tool name, client) are bounded by
``relay.metrics.labels.BoundedLabels``; routes are route patterns, never
paths; ``initiator_id`` (one series per person) is empty unless the operator
turns it on (``METRICS_INITIATOR_ID_LABEL``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from relay.facts import Facts, Usage
from relay.metrics.exposition import (
    MULTIPROC_ENV,
    UNAUTHORIZED_BODY,
    UNAUTHORIZED_HEADERS,
    enable_multiprocess,
    multiprocess_dir_for,
    render_multiprocess,
    send_plain,
    serve_metrics_listener,
    split_address,
    token_accepted,
)
from relay.metrics.labels import OTHER, BoundedLabels, method_label

PREFIX = "coder_ai_gateway_"
RELAY_PREFIX = "relay_"

DisconnectPhase = Literal["before-response", "before-first-byte", "mid-stream"]
BreakerState = Literal["closed", "half-open", "open"]
_BREAKER_VALUES = {"closed": 0.0, "half-open": 0.5, "open": 1.0}
KEY_STATES = ("valid", "temporary", "permanent")

# The Coder AI Gateway's buckets for interception durations.
DURATION_BUCKETS = (0.5, 2, 5, 15, 30, 60, 120)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
FAILOVER_BUCKETS = (1, 2, 3, 4, 5)
WEBSOCKET_TURN_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 1000)

DEFAULT_MAX_MODELS = 100
# Tool names and SDK names are chosen by clients too; these caps are generous.
MAX_TOOL_NAMES = 200
MAX_CLIENTS = 50


class RecorderStatsLike(Protocol):
    queued: int
    spooled: int
    lost: int


class InterceptionTimer:
    """What ``interception_started`` hands back; pass it to ``interception_finished``."""

    __slots__ = ("done", "inflight", "model", "provider", "route", "started")

    def __init__(self, provider: str, model: str, route: str, inflight: Any) -> None:
        self.provider = provider
        self.model = model
        self.route = route
        self.inflight = inflight
        self.started = time.perf_counter()
        self.done = False


def _cached(cache: dict[tuple[str, ...], Any], metric: Any, key: tuple[str, ...]) -> Any:
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key)
    return child


class Metrics:
    """Every metric of one relay process. Build one per process (see ``metrics_for_process``)."""

    def __init__(
        self,
        *,
        multiprocess_dir: Path | str | None = None,
        max_models: int = DEFAULT_MAX_MODELS,
        initiator_label: bool = False,
        token: str = "",
    ) -> None:
        # Bearer token a scrape must carry (METRICS_TOKEN); empty: none.
        self.token = token
        # Client-chosen label values, each bounded (see relay.metrics.labels).
        self.models = BoundedLabels(max_models)
        self.tool_names = BoundedLabels(MAX_TOOL_NAMES)
        self.clients = BoundedLabels(MAX_CLIENTS)
        self.initiator_label = initiator_label
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir else None
        if self.multiprocess_dir is not None:
            enable_multiprocess(self.multiprocess_dir)
        # The Coder AI Gateway (Go client) has no *_created series; neither do we.
        disable_created_metrics()
        self.registry = reg = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
            # mode: how processes combine in multiprocess mode (live*: dead ones drop out).
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode=mode)  # type: ignore[arg-type]

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: Any) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg)

        p, r = PREFIX, RELAY_PREFIX
        provider_model = ("provider", "model")
        who = ("initiator_id", "client")
        breaker = ("provider", "endpoint", "model")
        self.interceptions = counter(
            p + "interceptions",
            "Intercepted requests.",
            (*provider_model, "status", "route", "method", *who),
        )
        self.inflight = gauge(
            p + "interceptions_inflight",
            "Intercepted requests currently being processed.",
            (*provider_model, "route"),
            "livesum",
        )
        self.duration = histogram(
            p + "interceptions_duration_seconds",
            "Total intercepted request duration, including upstream processing.",
            provider_model,
            DURATION_BUCKETS,
        )
        self.passthroughs = counter(
            p + "passthrough",
            "Requests passed through to an upstream provider without interception.",
            ("provider", "route", "method"),
        )
        self.prompts = counter(p + "prompts", "Prompts issued by users.", (*provider_model, *who))
        self.token_counts = counter(
            p + "tokens", "Tokens used by intercepted requests.", (*provider_model, "type", *who)
        )
        self.tool_selections = counter(
            p + "non_injected_tool_selections",
            "Tools selected by a model for the client to invoke.",
            (*provider_model, "name"),
        )
        self.injected_invocations = counter(
            p + "injected_tool_invocations",
            "Injected (MCP) tools the relay invoked for the model.",
            ("server", "name"),
        )
        self.breaker_state = gauge(
            p + "circuit_breaker_state",
            "Current circuit-breaker state: 0 closed, 0.5 half-open, 1 open.",
            breaker,
            "livemax",
        )
        self.breaker_trips = counter(
            p + "circuit_breaker_trips",
            "Times a circuit breaker transitioned to the open state.",
            breaker,
        )
        self.breaker_rejects = counter(
            p + "circuit_breaker_rejects",
            "Requests rejected because a circuit breaker was open.",
            breaker,
        )
        self.key_states = gauge(
            p + "key_pool_state",
            "Provider keys in each state: valid, temporary or permanent.",
            ("provider", "state"),
            "livemax",
        )
        self.key_transitions = counter(
            p + "key_pool_state_transitions",
            "Provider key state transitions during failover.",
            ("provider", "reason"),
        )
        self.key_exhaustions = counter(
            p + "key_pool_exhaustions",
            "Times a provider key pool had no usable key.",
            ("provider", "outcome"),
        )
        self.key_failover_attempts = histogram(
            p + "key_pool_failover_attempts",
            "Keys attempted before a request succeeded or exhausted the provider key pool.",
            ("provider",),
            FAILOVER_BUCKETS,
        )
        self.provider_info_gauge = gauge(
            p + "provider_info",
            "Configured providers; value 1 (0 once removed, in multiprocess mode).",
            ("provider_name", "provider_type", "status"),
            "livemax",
        )
        self.reload_attempt = gauge(
            p + "providers_last_reload_timestamp_seconds",
            "Unix time of the last attempt to rebuild the provider set.",
            (),
            "livemax",
        )
        self.reload_success = gauge(
            p + "providers_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rebuild of the provider set.",
            (),
            "livemax",
        )
        # Cost control (docs/cost.md): spend in micro-dollars, by
        # provider and model; by user only with the initiator label option.
        # The relay's own names: the Gateway's cost-control metric names and
        # labels could not be checked, and coder_ai_gateway_* are exactly its.
        c = r + "cost_"
        self.spend = counter(
            c + "spend_micros",
            "Cost of recorded usage, in micro-dollars (1e-6 USD), at the prices it was recorded with.",
            (*provider_model, "initiator_id"),
        )
        self.unpriced = counter(
            c + "unpriced_usages",
            "Usage rows recorded without a price (their model matched no price book entry).",
            provider_model,
        )
        self.budget_refusals = counter(
            c + "budget_refusals", "Requests refused because a budget was spent.", ("budget",)
        )
        self.minute_refusals = counter(
            c + "minute_limit_refusals",
            "Requests refused by REQUESTS_PER_MINUTE or TOKENS_PER_MINUTE (limit: requests, tokens).",
            ("limit",),
        )
        self.budget_warnings = counter(
            c + "budget_soft_limit_warnings",
            "Times a budget was found past its soft limit (once per budget and period per process).",
            ("budget",),
        )
        self.budget_spend = gauge(
            c + "budget_spend_micros",
            "What a budget has spent in its current period, as this process last saw it.",
            ("budget",),
            "livemax",
        )
        self.budget_limit = gauge(
            c + "budget_limit_micros", "A budget's limit per period.", ("budget",), "livemax"
        )
        # The relay's own.
        self.recorder_queue = gauge(
            r + "recorder_queue_depth",
            "Recorded rows waiting in memory for the database writer.",
            (),
            "livesum",
        )
        self.recorder_spooled = counter(
            r + "recorder_spooled_events",
            "Recorded rows written to the on-disk spool (the database was away or slow).",
        )
        self.recorder_lost = counter(
            r + "recorder_lost_events", "Recorded rows neither written nor spooled. Must stay 0."
        )
        self.ttfb_seconds = histogram(
            r + "upstream_ttfb_seconds",
            "Time from sending the upstream request to its first response body byte.",
            ("provider",),
            TTFB_BUCKETS,
        )
        self.disconnects = counter(
            r + "client_disconnects",
            "Clients that went away before the end of their response, by phase.",
            ("phase",),
        )
        self.dump_failures = counter(
            r + "dump_write_failures",
            "Exchanges whose dump could not be written (unwritable directory, full disk).",
        )
        self.dump_drops = counter(
            r + "dump_dropped", "Exchanges whose dump lost data because the dump queue was full."
        )
        # The AI Gateway Proxy (docs/proxy.md), under Coder's names.
        self.proxy_sessions = counter(
            p + "proxy_connect_sessions",
            "Proxy sessions accepted, by type: mitm (decrypted) or tunneled.",
            ("type",),
        )
        self.proxy_mitm_requests = counter(
            p + "proxy_mitm_requests",
            "Requests decrypted by the proxy and served as relay requests.",
            ("provider",),
        )
        self.proxy_inflight_mitm = gauge(
            p + "proxy_inflight_mitm_requests",
            "Decrypted requests being served.",
            (),
            "livesum",
        )
        self.proxy_mitm_responses = counter(
            p + "proxy_mitm_responses",
            "Answers to decrypted requests, by status code and provider.",
            ("code", "provider"),
        )
        self.proxy_refusals = counter(
            r + "proxy_refusals",
            "Proxy requests refused, by reason (auth, port, blocked, dial, timeout, ...).",
            ("reason",),
        )
        self.websockets_open = gauge(
            r + "responses_websockets_open",
            "Responses WebSockets currently bridged, by provider.",
            ("provider",),
            "livesum",
        )
        self.websocket_refusals = counter(
            r + "responses_websocket_refusals",
            "Responses WebSocket upgrades refused, by reason (426 ones send the client to HTTP).",
            ("reason",),
        )
        self.websocket_turns = histogram(
            r + "responses_websocket_turns",
            "response.create turns per Responses WebSocket, observed when it closes.",
            ("provider",),
            WEBSOCKET_TURN_BUCKETS,
        )
        self._children: dict[int, dict[tuple[str, ...], Any]] = {}
        self._providers_shown: set[tuple[str, str, str]] = set()
        self._recorder_seen = (0, 0)

    def _child(self, metric: Any, *labels: str) -> Any:
        cache = self._children.get(id(metric))
        if cache is None:
            cache = self._children[id(metric)] = {}
        return _cached(cache, metric, labels)

    # -- interceptions ---------------------------------------------------------------------------

    def _initiator(self, initiator_id: object) -> str:
        if not self.initiator_label or initiator_id is None:
            return ""
        return str(initiator_id)

    def interception_started(self, provider: str, model: str, route: str) -> InterceptionTimer:
        """``route``: the route's pattern (``ProviderKind.route_label``), not the path."""
        model = self.models.fold(model)
        inflight = self._child(self.inflight, provider, model, route)
        inflight.inc()
        return InterceptionTimer(provider, model, route, inflight)

    def interception_finished(
        self,
        timer: InterceptionTimer,
        *,
        status: str,
        method: str,
        initiator_id: object,
        client: str,
    ) -> None:
        if timer.done:
            return
        timer.done = True
        timer.inflight.dec()
        self._child(
            self.interceptions,
            timer.provider,
            timer.model,
            status,
            timer.route,
            method_label(method),
            self._initiator(initiator_id),
            self.clients.fold(client),
        ).inc()
        self._child(self.duration, timer.provider, timer.model).observe(
            time.perf_counter() - timer.started
        )

    def interception_facts(
        self,
        provider: str,
        model: str,
        initiator_id: object,
        client: str,
        facts: Facts,
        prompt: str | None,
    ) -> None:
        """Prompt, token and tool-selection counts of one finished interception."""
        model = self.models.fold(model)
        client = self.clients.fold(client)
        initiator = self._initiator(initiator_id)
        if prompt:
            self._child(self.prompts, provider, model, initiator, client).inc()
        if facts.usage is not None:
            self.tokens(provider, model, initiator, client, facts.usage)
        for inner in facts.round_usages:  # a tool loop's earlier upstream requests
            self.tokens(provider, model, initiator, client, inner.usage)
        for call in facts.tool_calls:
            name = self.tool_names.fold(call.name)
            self._child(self.tool_selections, provider, model, name).inc()
        for injected in facts.injected_calls:
            name = self.tool_names.fold(injected.name)
            self._child(self.injected_invocations, injected.server, name).inc()

    def tokens(
        self, provider: str, model: str, initiator_id: str, client: str, usage: Usage
    ) -> None:
        """Token counts by type, named as the Coder AI Gateway names them."""
        counts = {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_write_input_tokens": usage.cache_write_tokens,
            **usage.extra,
        }
        for kind, count in counts.items():
            # A provider breaking its own invariant must not break the counter.
            if isinstance(count, int) and count > 0:
                self._child(self.token_counts, provider, model, kind, initiator_id, client).inc(
                    count
                )

    def cost(
        self, provider: str, model: str, initiator_id: object, cost_micros: int | None
    ) -> None:
        """One recorded usage row's cost (None: unpriced)."""
        model = self.models.fold(model)
        if cost_micros is None:
            self._child(self.unpriced, provider, model).inc()
        elif cost_micros > 0:
            initiator = self._initiator(initiator_id)
            self._child(self.spend, provider, model, initiator).inc(cost_micros)

    def budget_refused(self, budget: str) -> None:
        self._child(self.budget_refusals, budget).inc()

    def minute_limit_refused(self, limit: str) -> None:
        """limit: ``requests`` or ``tokens``."""
        self._child(self.minute_refusals, limit).inc()

    def budget_soft_limit(self, budget: str) -> None:
        self._child(self.budget_warnings, budget).inc()

    def budget_state(self, budgets: Iterable[tuple[str, int, int]]) -> None:
        """(name, spent, limit) of every budget, after a refresh."""
        for name, spent, limit in budgets:
            self._child(self.budget_spend, name).set(spent)
            self._child(self.budget_limit, name).set(limit)

    def passthrough(self, provider: str, route: str, method: str) -> None:
        """``route``: the route's pattern (``ProviderKind.route_label``), not the path."""
        self._child(self.passthroughs, provider, route, method_label(method)).inc()

    def ttfb(self, provider: str, seconds: float) -> None:
        self._child(self.ttfb_seconds, provider).observe(seconds)

    def disconnect(self, phase: str) -> None:
        self._child(self.disconnects, phase).inc()

    def websocket_opened(self, provider: str) -> None:
        self._child(self.websockets_open, provider).inc()

    def websocket_closed(self, provider: str, turns: int) -> None:
        self._child(self.websockets_open, provider).dec()
        self._child(self.websocket_turns, provider).observe(turns)

    def websocket_refused(self, reason: str) -> None:
        """``reason``: a fixed word (auth, disabled, not_bridged, user_cap, process_cap, upstream…)."""
        self._child(self.websocket_refusals, reason).inc()

    # -- resilience ------------------------------------------------------------------------------

    def circuit_breaker_state(self, provider: str, endpoint: str, model: str, state: str) -> None:
        """state: ``closed``, ``half-open`` or ``open`` (a BreakerState or its value)."""
        model = self.models.fold(model)
        self._child(self.breaker_state, provider, endpoint, model).set(_BREAKER_VALUES[state])

    def circuit_breaker_trip(self, provider: str, endpoint: str, model: str) -> None:
        self._child(self.breaker_trips, provider, endpoint, self.models.fold(model)).inc()

    def circuit_breaker_reject(self, provider: str, endpoint: str, model: str) -> None:
        self._child(self.breaker_rejects, provider, endpoint, self.models.fold(model)).inc()

    def circuit_breaker_forgotten(self, provider: str, endpoint: str, model: str) -> None:
        """A circuit was evicted: its state series goes with it (its counters stay)."""
        key = (provider, endpoint, self.models.fold(model))
        cache = self._children.get(id(self.breaker_state), {})
        if cache.pop(key, None) is None:
            return
        if self.multiprocess_dir is not None:
            # Removing a child does not remove it from the mmap files.
            self.breaker_state.labels(*key).set(0)
        else:
            self.breaker_state.remove(*key)

    def key_pool_state(self, provider: str, counts: Mapping[str, int]) -> None:
        """How many keys are ``valid``, ``temporary`` (cooling down) and ``permanent`` (failed)."""
        for state in KEY_STATES:
            self._child(self.key_states, provider, state).set(counts.get(state, 0))

    def key_pool_transition(self, provider: str, reason: str) -> None:
        """reason: ``rate_limited``, ``unauthorized`` or ``forbidden``."""
        self._child(self.key_transitions, provider, reason).inc()

    def key_pool_exhausted(self, provider: str, outcome: str) -> None:
        """outcome: ``rate_limited`` or ``auth_failed``."""
        self._child(self.key_exhaustions, provider, outcome).inc()

    def key_pool_attempts(self, provider: str, attempts: int) -> None:
        self._child(self.key_failover_attempts, provider).observe(attempts)

    # -- providers ---------------------------------------------------------------------------

    def providers(self, providers: Iterable[tuple[str, str, str]], *, success: bool = True) -> None:
        """The provider set after a (re)load: (name, type, status) with status
        ``enabled``, ``disabled`` or ``error``."""
        now = time.time()
        self.reload_attempt.set(now)
        if not success:
            return
        self.reload_success.set(now)
        shown = {(n, str(t), s) for n, t, s in providers}
        for gone in self._providers_shown - shown:
            if self.multiprocess_dir is not None:
                # Removing a child does not remove it from the mmap files.
                self.provider_info_gauge.labels(*gone).set(0)
            else:
                self.provider_info_gauge.remove(*gone)
        for labels in shown:
            self.provider_info_gauge.labels(*labels).set(1)
        self._providers_shown = shown

    # -- recorder and dumps ------------------------------------------------------------------

    def recorder(self, queued: int, spooled_total: int, lost_total: int) -> None:
        """Copy the recorder's counters (cumulative totals since it started)."""
        self.recorder_queue.set(queued)
        seen_spooled, seen_lost = self._recorder_seen
        if spooled_total > seen_spooled:
            self.recorder_spooled.inc(spooled_total - seen_spooled)
        if lost_total > seen_lost:
            self.recorder_lost.inc(lost_total - seen_lost)
        self._recorder_seen = (max(spooled_total, seen_spooled), max(lost_total, seen_lost))

    async def watch_recorder(
        self,
        stats: RecorderStatsLike,
        interval: float = 1.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Copy ``Recorder.stats`` every ``interval`` (a task in the server's nursery)."""
        self.recorder(stats.queued, stats.spooled, stats.lost)
        task_status.started()
        while True:
            await trio.sleep(interval)
            self.recorder(stats.queued, stats.spooled, stats.lost)

    def proxy_session(self, kind: str) -> None:
        self._child(self.proxy_sessions, kind).inc()

    def proxy_refused(self, reason: str) -> None:
        self._child(self.proxy_refusals, reason).inc()

    def proxy_mitm_request(self, provider: str) -> None:
        self._child(self.proxy_mitm_requests, provider).inc()
        self.proxy_inflight_mitm.inc()

    def proxy_mitm_response(self, provider: str, code: int) -> None:
        self.proxy_inflight_mitm.dec()
        self._child(self.proxy_mitm_responses, str(code), provider).inc()

    def dump_write_failure(self) -> None:
        self.dump_failures.inc()

    def dump_dropped(self) -> None:
        self.dump_drops.inc()

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text format: this process's values, or every process's in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        return render_multiprocess(self.multiprocess_dir)

    async def metrics_endpoint(self, scope: Any, receive: Any, send: Any) -> None:
        """ASGI handler for ``GET /metrics``."""
        if not token_accepted(scope.get("headers", ()), self.token):
            await send_plain(
                send, 401, UNAUTHORIZED_BODY, b"text/plain; charset=utf-8", UNAUTHORIZED_HEADERS
            )
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await send_plain(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8")
            return
        # Off the event loop: multiprocess mode reads every worker's files.
        body = await trio.to_thread.run_sync(self.render)
        if scope.get("method") == "HEAD":
            body = b""
        await send_plain(send, 200, body, CONTENT_TYPE_PLAIN_0_0_4.encode())


_process_metrics: Metrics | None = None


def metrics_for_process(
    data_dir: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    max_models: int = DEFAULT_MAX_MODELS,
    initiator_label: bool = False,
    token: str = "",
) -> Metrics:
    """The ``Metrics`` of this process, in the mode its deployment needs.

    In multiprocess mode there can be only one per process (its values live in
    files named after the pid), so later calls return the same object.
    """
    global _process_metrics
    if _process_metrics is not None:
        return _process_metrics
    directory = multiprocess_dir_for(data_dir, os.environ if env is None else env)
    labels: dict[str, Any] = {
        "max_models": max_models,
        "initiator_label": initiator_label,
        "token": token,
    }
    if directory is None:
        return Metrics(**labels)
    _process_metrics = Metrics(multiprocess_dir=directory, **labels)
    return _process_metrics


__all__ = [
    "MULTIPROC_ENV",
    "OTHER",
    "BoundedLabels",
    "InterceptionTimer",
    "Metrics",
    "metrics_for_process",
    "multiprocess_dir_for",
    "render_multiprocess",
    "serve_metrics_listener",
    "split_address",
]
