"""Turn a ``SuiteResult`` into results.json, results.md and PNG plots.

Plots need matplotlib; without it they are skipped and the Markdown says so.
Ratios and the issue's targets are computed here, from figures of one run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from .results import RunSummary, SuiteResult, TargetResult

FLOORS = {
    "asgi": "ASGI pass-through floor (relay's upstream client)",
    "splice": "trio splice floor",
}
LABELS = {
    "direct": "mock direct (generator ceiling)",
    "asgi-httpx": "ASGI pass-through with httpx (extra, not a floor)",
    "relay": "relay",
    "litellm": "LiteLLM proxy",
    **FLOORS,
}
SUBJECT = "relay"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _pair(run: RunSummary | None, pick: Callable[[RunSummary], tuple[float, float] | None]) -> str:
    values = pick(run) if run is not None else None
    return f"{_fmt(values[0])} / {_fmt(values[1])}" if values else "–"


def _p50_p99(run: RunSummary) -> tuple[float, float] | None:
    return (run.total.p50_ms, run.total.p99_ms) if run.total else None


def added_latency(result: SuiteResult, name: str) -> tuple[float, float] | None:
    """p50 and p99 of sequential blocking requests, minus the same through nothing."""
    direct, target = result.target("direct"), result.target(name)
    if direct is None or target is None:
        return None
    base, run = direct.run("blocking", 1), target.run("blocking", 1)
    if base is None or run is None or base.total is None or run.total is None:
        return None
    return (run.total.p50_ms - base.total.p50_ms, run.total.p99_ms - base.total.p99_ms)


def _streams_at(target: TargetResult | None, concurrency: int = 64) -> float | None:
    run = target.run("stream-fast", concurrency) if target else None
    return run.per_s if run and run.completed else None


def _errors(target: TargetResult) -> int:
    return sum(sum(r.errors.values()) + r.unfinished for r in target.runs)


def summary_rows(result: SuiteResult) -> list[list[str]]:
    top = max(result.suite.concurrencies)
    mid = 64 if 64 in result.suite.concurrencies else top
    rows = [
        [
            "target",
            "blocking p50 / p99 ms",
            "added p50 / p99 ms",
            f"streams/s @{mid}",
            f"events/s @{mid}",
            f"p50 / p99 ms @{top}",
            "paced TTFB p50 @1 ms",
            f"CPU % @{mid}",
            f"other CPU % @{mid}",
            "RSS idle MB",
            "KB / open stream",
            "close delay p99 ms",
            "errors",
        ]
    ]
    for t in result.targets:
        if not t.measured:
            continue
        fast_mid = t.run("stream-fast", mid)
        paced_one = t.run("stream-paced", 1)
        added = added_latency(result, t.name) if t.name != "direct" else None
        rows.append(
            [
                LABELS.get(t.name, t.name),
                _pair(t.run("blocking", 1), _p50_p99),
                f"{_fmt(added[0], 3)} / {_fmt(added[1], 3)}" if added else "–",
                _fmt(fast_mid.per_s if fast_mid else None),
                _fmt(fast_mid.events_per_s if fast_mid else None),
                _pair(t.run("stream-fast", top), _p50_p99),
                _fmt(paced_one.ttfb.p50_ms if paced_one and paced_one.ttfb else None),
                _fmt(fast_mid.cpu_percent if fast_mid else None, 0),
                _fmt(fast_mid.other_cpu_percent if fast_mid else None, 0),
                _fmt(t.rss_idle_kb / 1024 if t.rss_idle_kb else None, 1),
                _fmt(t.open_streams.kb_per_stream if t.open_streams else None, 1),
                _fmt(t.storm.close_delay.p99_ms if t.storm and t.storm.close_delay else None),
                str(_errors(t)),
            ]
        )
    return rows


def target_checks(result: SuiteResult, name: str = SUBJECT) -> list[tuple[str, str, str]]:
    """(target from issue 8, measured, verdict) for ``name``; verdict: met, missed or n/a."""
    t = result.target(name)
    checks: list[tuple[str, str, str]] = []

    def check(label: str, value: float | None, ok: Callable[[float], bool], unit: str = "") -> None:
        if value is None:
            checks.append((label, "not measured", "n/a"))
        else:
            checks.append((label, f"{_fmt(value)}{unit}", "met" if ok(value) else "missed"))

    added = added_latency(result, name)
    check("added latency p50 ≤ 0.5 ms", added[0] if added else None, lambda v: v <= 0.5, " ms")
    check("added latency p99 ≤ 2 ms", added[1] if added else None, lambda v: v <= 2.0, " ms")
    mine = _streams_at(t)
    check(
        "streams/s @64 ≥ 0.8× the ASGI pass-through floor",
        _ratio(mine, _streams_at(result.target("asgi"))),
        lambda v: v >= 0.8,
        "×",
    )
    splice = _ratio(mine, _streams_at(result.target("splice")))
    shown = f"{_fmt(splice)}×" if splice is not None else "not measured"
    checks.append(("streams/s @64 vs the trio splice floor (no target)", shown, "–"))
    check(
        "streams/s @64 ≥ 40× LiteLLM",
        _ratio(mine, _streams_at(result.target("litellm"))),
        lambda v: v >= 40,
        "×",
    )
    top = t.run("stream-fast", max(result.suite.concurrencies)) if t else None
    tail = _ratio(top.total.p99_ms, top.total.p50_ms) if top and top.total else None
    check(f"p99 ≤ 3× p50 at {top.concurrency if top else 256} streams", tail, lambda v: v <= 3, "×")
    held = t.open_streams if t else None
    check(
        f"RSS per open stream ≤ 40 KB ({held.opened if held else 0} held)",
        held.kb_per_stream if held else None,
        lambda v: v <= 40,
        " KB",
    )
    idle = t.rss_idle_kb / 1024 if t and t.rss_idle_kb else None
    check("idle worker RSS ≤ 80 MB", idle, lambda v: v <= 80, " MB")
    storm = t.storm if t else None
    delay = storm.close_delay.p99_ms if storm and storm.close_delay else None
    check("upstream closed ≤ 10 ms p99 after a disconnect", delay, lambda v: v <= 10, " ms")
    direct = result.target("direct")
    if direct and direct.storm and direct.storm.close_delay:
        # The in-process mock notices a close on the generator's event loop:
        # this is the delay the harness itself adds to every close.
        base = direct.storm.close_delay.p99_ms
        checks.append(
            ("… of which the harness's own close delay (direct, p99)", f"{_fmt(base)} ms", "–")
        )
    return checks


def ratio_rows(result: SuiteResult, name: str = SUBJECT) -> list[list[str]]:
    """``name`` against every other measured target, on the same run's figures."""
    me = result.target(name)
    if me is None:
        return []
    top = max(result.suite.concurrencies)
    rows = [
        [
            f"{name} vs",
            "streams/s @64 (×)",
            "blocking p50 (×)",
            f"p99 @{top} (×)",
            "paced TTFB p50 @1 (×)",
        ]
    ]

    def p50(t: TargetResult, phase: str, c: int, ttfb: bool = False) -> float | None:
        run = t.run(phase, c)
        figure = run.ttfb if ttfb and run else run.total if run else None
        return figure.p50_ms if figure else None

    def p99(t: TargetResult) -> float | None:
        run = t.run("stream-fast", top)
        return run.total.p99_ms if run and run.total else None

    for other in result.targets:
        if other.name == name or not other.measured:
            continue
        rows.append(
            [
                LABELS.get(other.name, other.name),
                _fmt(_ratio(_streams_at(me), _streams_at(other))),
                _fmt(_ratio(p50(me, "blocking", 1), p50(other, "blocking", 1))),
                _fmt(_ratio(p99(me), p99(other))),
                _fmt(_ratio(p50(me, "stream-paced", 1, True), p50(other, "stream-paced", 1, True))),
            ]
        )
    return rows


def _table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return out


def _sweep_rows(result: SuiteResult, phase: str) -> list[list[str]]:
    levels = result.suite.concurrencies
    rows = [["target", *(f"@{c}: streams/s · p50 / p99 ms" for c in levels)]]
    for t in result.targets:
        if not t.measured:
            continue
        cells = []
        for c in levels:
            run = t.run(phase, c)
            cells.append(f"{_fmt(run.per_s)} · {_pair(run, _p50_p99)}" if run else "–")
        rows.append([LABELS.get(t.name, t.name), *cells])
    return rows


def markdown(result: SuiteResult, plots: list[str], plot_note: str | None) -> str:
    m = result.machine
    p = result.pinning
    pinning = (
        f"applied: targets on CPU {p['target_cpu']}, generator and mock on CPU {p['generator_cpu']}"
        if p.get("applied")
        else f"not applied ({p.get('note', 'unknown reason')})"
    )
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    lines = [
        f"# Load benchmark: {result.suite.name} suite, {result.started_at}",
        "",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or 'unknown model'}), "
        f"Python {m.get('python')}, kernel {m.get('kernel')}; {packages}.",
        f"Pinning: {pinning}. Duration: {result.duration_s:.0f} s.",
        "",
        "Stream: 31 chat.completion.chunk events, 13.4 KB (LiteLLM's benchmark shape); "
        "fast = all events in one upstream write, paced = 10 ms to the first, 1 ms gaps. "
        "Latencies are whole-response times; TTFB is to the first body byte. "
        "CPU % is the target's; other CPU % is every other process on the machine "
        "(PostgreSQL included): where it is high, the figures are pessimistic.",
        "",
        *_table(summary_rows(result)),
        "",
    ]
    for t in result.targets:
        if not t.measured:
            lines.append(f"- **{LABELS.get(t.name, t.name)}: not measured**: {t.reason}")
    if len(ratios := ratio_rows(result)) > 1:
        lines += ["", f"## Ratios: {SUBJECT} / other (same run)", "", *_table(ratios)]
    if result.target(SUBJECT) is not None:
        lines += ["", f"## Targets of issue 8 ({SUBJECT}, this run)", ""]
        lines += _table([["target", "measured", "verdict"], *map(list, target_checks(result))])
    for phase, title in (
        ("stream-fast", "Streams as fast as possible"),
        ("stream-paced", "Paced streams"),
    ):
        lines += ["", f"## {title}: concurrency sweep", "", *_table(_sweep_rows(result, phase))]
    lines += ["", "## Anthropic streams, open streams, disconnect storm", ""]
    rows = [
        [
            "target",
            "anthropic streams/s · p50 / p99 ms",
            "open streams held",
            "RSS held MB",
            "storm: left / reached upstream / closed",
            "close delay p50 / p99 ms",
            "by phase p99 ms",
        ]
    ]
    for t in result.targets:
        if not t.measured:
            continue
        anthropic = next((r for r in t.runs if r.phase == "anthropic"), None)
        held, storm = t.open_streams, t.storm
        by_phase = (
            ", ".join(f"{k} {_fmt(v.p99_ms)}" for k, v in storm.close_delay_by_phase.items())
            if storm
            else "–"
        )
        rows.append(
            [
                LABELS.get(t.name, t.name),
                f"{_fmt(anthropic.per_s)} · {_pair(anthropic, _p50_p99)}" if anthropic else "–",
                f"{held.opened}/{held.requested}" if held else "–",
                _fmt(held.rss_held_kb / 1024, 1) if held else "–",
                f"{storm.left} / {storm.reached_upstream} / {storm.upstream_closed}"
                if storm
                else "–",
                f"{_fmt(storm.close_delay.p50_ms)} / {_fmt(storm.close_delay.p99_ms)}"
                if storm and storm.close_delay
                else "–",
                by_phase or "–",
            ]
        )
    lines += _table(rows)
    if plots:
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    if plot_note:
        lines += ["", plot_note]
    return "\n".join(lines) + "\n"


def plot(result: SuiteResult, out_dir: Path) -> tuple[list[str], str | None]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (pip install matplotlib)."
    levels = list(result.suite.concurrencies)
    measured = [t for t in result.targets if t.measured]
    paths = []
    for name, metric, ylabel, log in (
        ("throughput", "per_s", "streams/s", False),
        ("latency", "total", "whole-stream latency, ms (p50 solid, p99 dashed)", True),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        for ax, phase in zip(axes, ("stream-fast", "stream-paced"), strict=True):
            for t in measured:
                runs = [t.run(phase, c) for c in levels]
                xs = [c for c, r in zip(levels, runs, strict=True) if r and r.completed]
                valid = [r for r in runs if r and r.completed]
                label = LABELS.get(t.name, t.name)
                if metric == "per_s":
                    ax.plot(xs, [r.per_s for r in valid], marker="o", label=label)
                else:
                    line = ax.plot(xs, [r.total.p50_ms for r in valid if r.total], marker="o")
                    ax.plot(
                        xs,
                        [r.total.p99_ms for r in valid if r.total],
                        linestyle="--",
                        color=line[0].get_color(),
                    )
                    line[0].set_label(label)
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel(ylabel)
            ax.set_title(phase)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths, None


def write_report(result: SuiteResult, out_dir: Path) -> dict[str, str]:
    """Write results.json, results.md and the plots into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    plots, note = plot(result, out_dir)
    md_path = out_dir / "results.md"
    md_path.write_text(markdown(result, plots, note))
    return {"json": str(json_path), "markdown": str(md_path), **{Path(p).stem: p for p in plots}}
