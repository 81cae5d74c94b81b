"""Records of what a run measured, and the medians over repeated runs.

Rules: plain frozen records plus the arithmetic that derives figures from
them (shares, fairness, medians); no I/O, no clocks.  Every record has a
``to_dict()`` that the JSON report writes as is.

"Worker" in the figures means a worker *slot*: under churn a slot's pid
changes (kill, reload) but the slot is the unit the kernel/queue spreads
connections over.  Per-pid counts are kept alongside for the JSON.  Slots
that served nothing still count (as 0) up to the configured worker count,
so a starved worker lowers the fairness index instead of vanishing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .loadgen import LoadResult, WorkerKey
from .stats import PERCENTILES, Histogram, Shares, median, shares

__all__ = ["LATENCY_LABELS", "Measurement", "RunResult", "Summary", "summarize"]

LATENCY_LABELS: tuple[str, ...] = (*(f"p{q:g}" for q in PERCENTILES), "max")


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    """What one load generator run reported, whichever generator it was."""

    generator: str  # "builtin" or "wrk"
    requests: int  # successful responses
    elapsed: float  # seconds
    latency_ms: Mapping[str, float]  # LATENCY_LABELS and "mean"
    workers: Mapping[WorkerKey, int]  # successful responses per (pid, slot)
    errors: Mapping[str, int]  # error kind -> count
    statuses: Mapping[int, int] = field(default_factory=dict)
    modes_seen: tuple[str, ...] = ()
    connections: int | None = None  # connections opened, when known
    histogram: Histogram | None = None
    note: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @classmethod
    def from_load(cls, result: LoadResult) -> Measurement:
        hist = result.histogram
        latency = {f"p{q:g}": hist.percentile(q) / 1e6 for q in PERCENTILES}
        latency["max"] = hist.max / 1e6
        latency["mean"] = hist.mean / 1e6
        return cls(
            generator="builtin",
            requests=result.requests,
            elapsed=result.elapsed,
            latency_ms=latency,
            workers=result.workers,
            errors=result.errors,
            statuses=result.statuses,
            modes_seen=result.modes_seen,
            connections=result.connections,
            histogram=hist,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "requests": self.requests,
            "elapsed_s": round(self.elapsed, 4),
            "requests_per_s": round(self.rps, 1),
            "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
            "errors": dict(self.errors),
            "error_total": sum(self.errors.values()),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "modes_seen": list(self.modes_seen),
            "connections": self.connections,
            "requests_per_pid": [
                {"pid": pid, "slot": slot, "requests": n}
                for (pid, slot), n in sorted(self.workers.items(), key=lambda kv: kv[0][::-1])
            ],
            "histogram": self.histogram.to_dict() if self.histogram is not None else None,
            "note": self.note,
        }


def _per_slot(workers: Mapping[WorkerKey, int], expected: int) -> dict[int, int]:
    slots: Counter[int] = Counter({slot: 0 for slot in range(expected)})
    for (_, slot), n in workers.items():
        slots[slot] += n
    return dict(sorted(slots.items()))


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    """One server start, one load run, in one mode."""

    scenario: str
    mode: str  # as asked for (reuseport, shared, auto)
    repeat: int  # 1-based
    workers_expected: int
    measurement: Measurement
    server_pid: int
    worker_pids: tuple[int, ...] = ()  # every worker pid seen (server and responses)
    churn_actions: tuple[Mapping[str, Any], ...] = ()
    server_exit_code: int | None = None
    server_argv: tuple[str, ...] = ()  # `serve …` as started
    # What the master counted during the run (events.flatten_events keys);
    # None when its status snapshot has no event counters.
    server_events: Mapping[str, int] | None = None
    server_workers: tuple[int | None, int | None] = (None, None)  # live workers before, after
    server_log: Mapping[str, int] = field(default_factory=dict)  # warning/error lines logged

    @property
    def effective_mode(self) -> str:
        """The mode the workers reported (``auto``'s choice), with this run's options.

        The demo app reports only the listen mode, so ``reuseport+hash`` seen
        as ``reuseport`` is ``reuseport+hash``.
        """
        seen = self.measurement.modes_seen
        if len(seen) != 1:
            return self.mode
        return self.mode if seen[0] == self.mode.partition("+")[0] else seen[0]

    @property
    def per_slot(self) -> dict[int, int]:
        return _per_slot(self.measurement.workers, self.workers_expected)

    @property
    def shares(self) -> Shares | None:
        per_slot = self.per_slot
        if not self.measurement.workers:
            return None  # no per-worker data (e.g. an app without the demo's body)
        return shares(list(per_slot.values()))

    def to_dict(self) -> dict[str, Any]:
        s = self.shares
        per_slot = self.per_slot if self.measurement.workers else {}
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "mode": self.mode,
            "effective_mode": self.effective_mode,
            "repeat": self.repeat,
            "workers_expected": self.workers_expected,
            "server_pid": self.server_pid,
            "worker_pids": list(self.worker_pids),
            "server_exit_code": self.server_exit_code,
            "requests_per_worker": {str(k): v for k, v in per_slot.items()},
            "busiest_share": s.busiest if s else None,
            "idlest_share": s.idlest if s else None,
            "fairness": s.fairness if s else None,
            "churn_actions": [dict(a) for a in self.churn_actions],
            "server_argv": list(self.server_argv),
            "server_events": None if self.server_events is None else dict(self.server_events),
            "server_workers": dict(zip(("before", "after"), self.server_workers, strict=True)),
            "server_log": dict(self.server_log),
            **self.measurement.to_dict(),
        }
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Medians over the repeated runs of one scenario in one mode."""

    scenario: str
    mode: str
    effective_mode: str
    runs: int
    rps: float
    latency_ms: Mapping[str, float]
    errors: Mapping[str, float]  # median count per kind
    error_total: float
    per_slot: Mapping[int, float]  # median requests per worker slot
    busiest: float | None
    idlest: float | None
    fairness: float | None
    counts_accepts: bool  # requests per worker = accepts per worker

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "mode": self.mode,
            "effective_mode": self.effective_mode,
            "runs": self.runs,
            "requests_per_s": round(self.rps, 1),
            "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
            "errors": dict(self.errors),
            "error_total": self.error_total,
            "requests_per_worker": {str(k): v for k, v in self.per_slot.items()},
            "busiest_share": self.busiest,
            "idlest_share": self.idlest,
            "fairness": self.fairness,
        }
        if self.counts_accepts:
            out["accepts_per_worker"] = dict(out["requests_per_worker"])
        return out


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def summarize(runs: Sequence[RunResult], *, counts_accepts: bool) -> Summary:
    """Median of every figure over ``runs`` (same scenario and mode)."""
    if not runs:
        raise ValueError("summarize() needs at least one run")
    first = runs[0]
    labels = {k for r in runs for k in r.measurement.latency_ms}
    kinds = {k for r in runs for k in r.measurement.errors}
    slots = (
        {k for r in runs for k in r.per_slot} if any(r.measurement.workers for r in runs) else set()
    )
    all_shares = [r.shares for r in runs]
    return Summary(
        scenario=first.scenario,
        mode=first.mode,
        effective_mode=first.effective_mode,
        runs=len(runs),
        rps=median(r.measurement.rps for r in runs),
        latency_ms={
            k: median(r.measurement.latency_ms.get(k, 0.0) for r in runs) for k in sorted(labels)
        },
        errors={k: median(r.measurement.errors.get(k, 0) for r in runs) for k in sorted(kinds)},
        error_total=median(sum(r.measurement.errors.values()) for r in runs),
        per_slot={s: median(r.per_slot.get(s, 0) for r in runs) for s in sorted(slots)},
        busiest=_median_or_none([s.busiest if s else None for s in all_shares]),
        idlest=_median_or_none([s.idlest if s else None for s in all_shares]),
        fairness=_median_or_none([s.fairness if s else None for s in all_shares]),
        counts_accepts=counts_accepts,
    )
