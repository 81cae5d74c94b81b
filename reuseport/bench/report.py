"""What ``reuseport bench`` prints and writes: machine line, table, verdicts, JSON.

Rules: rendering only; the figures come from ``results.Summary`` records.  A
verdict states measured differences (ratios, milliseconds, fairness) and
never a recommendation the numbers did not show.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import usable_cpus
from .events import EVENT_WORDS
from .results import LATENCY_LABELS, Summary
from .runner import BenchResult

__all__ = ["document", "machine_info", "machine_line", "render", "verdicts", "write_json"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _recommendation() -> tuple[str | None, str]:
    try:
        from reuseport.probe import quick_recommendation
    except ImportError as exc:
        return None, f"probe unavailable ({exc})"
    try:
        mode, reason = quick_recommendation()
    except Exception as exc:  # advisory only: a probe bug must not sink the benchmark
        return None, f"probe failed: {type(exc).__name__}: {exc}"
    return mode.value, reason


def machine_info() -> dict[str, Any]:
    try:
        from importlib.metadata import PackageNotFoundError, version

        uvloop_version: str | None = version("uvloop")
    except PackageNotFoundError:
        uvloop_version = None
    mode, reason = _recommendation()
    return {
        "system": platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus_usable": usable_cpus(),
        "cpus_online": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "recommended_mode": mode,
        "recommendation_reason": reason,
    }


def machine_line(info: dict[str, Any]) -> str:
    rec = (
        f"probe recommends {info['recommended_mode']} ({info['recommendation_reason']})"
        if info["recommended_mode"]
        else info["recommendation_reason"]
    )
    return (
        f"machine: {info['system']} {info['kernel']} {info['arch']}, "
        f"{info['cpus_usable']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"uvloop {info['uvloop'] or 'absent'}; {rec}"
    )


def _ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mode_label(s: Summary) -> str:
    if s.mode.partition("+")[0] != s.effective_mode.partition("+")[0]:  # "auto": its choice
        return f"{s.mode}({s.effective_mode})"
    return s.mode


def _table(summaries: Sequence[Summary]) -> list[str]:
    header = ["scenario", "mode", "req/s", *(f"{k} ms" for k in LATENCY_LABELS)]
    header += ["errors", "fairness", "busiest", "idlest", "requests per worker (slot 0/1/…)"]
    rows = [header]
    for s in summaries:
        per_worker = " / ".join(_num(v) for v in s.per_slot.values()) or "-"
        rows.append(
            [
                s.scenario,
                _mode_label(s),
                _num(s.rps),
                *(_ms(s.latency_ms[k]) if k in s.latency_ms else "-" for k in LATENCY_LABELS),
                _num(s.error_total),
                _opt(s.fairness, ".3f"),
                _opt(None if s.busiest is None else s.busiest * 100, ".1f") + "%",
                _opt(None if s.idlest is None else s.idlest * 100, ".1f") + "%",
                per_worker,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {i for i in range(2, len(header) - 1)}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def verdicts(result: BenchResult) -> list[str]:
    """One line per scenario with the measured differences between the modes."""
    lines = []
    modes = result.config.modes
    for scenario in result.config.scenarios:
        found = [result.summary(scenario.name, m) for m in modes]
        summaries = [s for s in found if s is not None]
        if not summaries:
            continue
        base = summaries[0]
        errors = "lost with killed workers" if scenario.kills else "errors"
        if len(summaries) == 1:
            lines.append(
                f"{scenario.name}: {_mode_label(base)} {_num(base.rps)} req/s; "
                f"p99 {_ms(base.latency_ms.get('p99', 0.0))} ms; "
                f"fairness {_opt(base.fairness, '.2f')}; {errors} {_num(base.error_total)}"
            )
            continue
        parts = []
        for other in summaries[1:]:
            a, b = base, other
            parts.append(
                f"{_mode_label(a)} {_ratio(a.rps, b.rps)} {_mode_label(b)} req/s "
                f"({_num(a.rps)} vs {_num(b.rps)}); "
                f"p99 {_ms(a.latency_ms.get('p99', 0.0))} ms vs "
                f"{_ms(b.latency_ms.get('p99', 0.0))} ms; "
                f"max {_ms(a.latency_ms.get('max', 0.0))} ms vs "
                f"{_ms(b.latency_ms.get('max', 0.0))} ms; "
                f"fairness {_opt(a.fairness, '.2f')} vs {_opt(b.fairness, '.2f')}; "
                f"{errors} {_num(a.error_total)} vs {_num(b.error_total)}"
            )
        lines.append(f"{scenario.name}: " + " | ".join(parts))
    return lines


def _error_lines(summaries: Sequence[Summary]) -> list[str]:
    lines = []
    for s in summaries:
        kinds = {k: v for k, v in s.errors.items() if v}
        if kinds:
            detail = ", ".join(f"{k} {_num(v)}" for k, v in sorted(kinds.items()))
            lines.append(f"  {s.scenario} {_mode_label(s)}: {detail}")
    return lines


def _churn_lines(result: BenchResult) -> list[str]:
    """Per churn scenario and mode: what the runner did and what the master counted."""
    lines = []
    for scenario in result.config.scenarios:
        if not scenario.churn:
            continue
        for mode in result.config.modes:
            runs = [r for r in result.runs if r.scenario == scenario.name and r.mode == mode]
            if not runs:
                continue
            sent: dict[str, int] = {}
            for r in runs:
                for action in r.churn_actions:
                    sent[action["action"]] = sent.get(action["action"], 0) + 1
            did = ", ".join(f"{k} {v / len(runs):.1f}" for k, v in sent.items()) or "nothing"
            counted = [r.server_events for r in runs if r.server_events is not None]
            if counted:
                seen = ", ".join(
                    f"{sum(c.get(key, 0) for c in counted) / len(counted):.1f} {words}"
                    for key, words in EVENT_WORDS
                )
                lines.append(f"  {scenario.name} {mode}: sent {did}; master counted {seen}")
            else:
                lines.append(
                    f"  {scenario.name} {mode}: sent {did}; the master's status has no event "
                    "counters"
                )
    if lines:
        lines.insert(0, "churn per run (mean; each action is listed in the JSON):")
    return lines


def _rescue_lines(result: BenchResult) -> list[str]:
    """Per non-churn scenario: connections siblings served from another worker's queue.

    Only where some run of the scenario rescued anything: the stall and skewed
    scenarios mostly, which is where rescue (reuseport mode's work
    conservation for queued connections) shows.  Median per run, over runs
    whose master reported its counters.
    """
    lines = []
    for scenario in result.config.scenarios:
        if scenario.churn or scenario.datagram:
            continue
        parts = []
        for mode in result.config.modes:
            counted = [
                r.server_events
                for r in result.runs
                if r.scenario == scenario.name and r.mode == mode and r.server_events is not None
            ]
            if counted:
                rescued = statistics.median(c.get("rescued", 0) for c in counted)
                rescues = statistics.median(c.get("rescues", 0) for c in counted)
                parts.append((mode, rescued, rescues))
        if any(rescued for _, rescued, _ in parts):
            shown = ", ".join(
                f"{mode} {_num(rescued)} ({_num(rescues)} rescues)"
                for mode, rescued, rescues in parts
            )
            lines.append(f"  {scenario.name}: {shown}")
    if lines:
        lines.insert(
            0, "connections served by a sibling from a stalled worker's queue (median per run):"
        )
    return lines


def _killed_lines(result: BenchResult) -> list[str]:
    lines = []
    for scenario in result.config.scenarios:
        if not scenario.kills:
            continue
        found = [result.summary(scenario.name, m) for m in result.config.modes]
        lost = ", ".join(f"{_mode_label(s)} {_num(s.error_total)}" for s in found if s)
        lines.append(
            f"{scenario.name}: lost with killed workers (median per run): {lost}; requests a "
            "SIGKILLed worker had already accepted are lost by definition"
        )
    return lines


def render(result: BenchResult, info: dict[str, Any]) -> str:
    cfg = result.config
    by_gen: dict[str, list[str]] = {}
    for scenario, gen in result.generators.items():
        by_gen.setdefault(gen, []).append(scenario)
    gens = "; ".join(f"{gen} for {', '.join(names)}" for gen, names in by_gen.items())
    runs = (
        f"median of {cfg.repeat} runs per mode, modes alternating"
        if cfg.repeat > 1
        else "1 run per mode"
    )
    lines = [
        machine_line(info),
        f"bench: app {cfg.app or 'demo'}, {cfg.workers} workers, {cfg.connections} connections, "
        f"{cfg.duration:g} s per run, {runs}; {cfg.clients} client "
        f"process{'es' if cfg.clients > 1 else ''}: {gens}",
        "",
        *_table(result.summaries),
        "",
    ]
    accepts = [s.name for s in cfg.scenarios if s.counts_accepts]
    if accepts:
        lines.append(
            f"{', '.join(accepts)}: one connection per request, so requests per worker "
            "= accepts per worker."
        )
    datagrams = [s.name for s in cfg.scenarios if s.datagram]
    if datagrams:
        lines.append(
            f"{', '.join(datagrams)}: one request = one UDP datagram and its answer (req/s = "
            "datagrams answered per second); errors = datagrams lost (no answer within 1 s)."
        )
    kills = {s.name for s in cfg.scenarios if s.kills}
    errors = _error_lines([s for s in result.summaries if s.scenario not in kills])
    lines += ["errors by kind (median per run):", *errors] if errors else ["errors: none"]
    lines += _killed_lines(result)
    killed = _error_lines([s for s in result.summaries if s.scenario in kills])
    if killed:
        lines += ["lost with killed workers, by kind (median per run):", *killed]
    lines += _churn_lines(result)
    lines += _rescue_lines(result)
    notes = {r.measurement.note for r in result.runs if r.measurement.note}
    lines += [f"note: {n}" for n in sorted(notes)]
    lines += ["", *verdicts(result)]
    return "\n".join(lines)


def document(result: BenchResult, info: dict[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    return {
        "reuseport_bench": 1,
        "argv": list(argv),
        "machine": info,
        "config": result.config.to_dict(),
        "generators": dict(result.generators),
        "summaries": [s.to_dict() for s in result.summaries],
        "verdicts": verdicts(result),
        "runs": [r.to_dict() for r in result.runs],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
