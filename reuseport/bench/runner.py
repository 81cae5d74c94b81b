"""Run the scenarios in each mode, A B A B …, and take medians.

Rules: every run starts a fresh server (so one run's churn or leftovers
cannot leak into the next) and stops it before the next starts; the modes of
one scenario alternate run by run, so slow drift of a shared machine hits
both modes alike.  Every wait is bounded and every process this module
starts is stopped in a ``finally``, also on ^C.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .errors import BenchError, MissingToolError
from .loadgen import ClientProcesses, LoadSpec
from .results import Measurement, RunResult, Summary, summarize
from .scenarios import SCENARIOS, ChurnAction, Scenario
from .server import ServerProcess, fetch_worker
from .wrk import INSTALL_HINT, WRK_LUA, WrkProcess, find_wrk, wrk_command

__all__ = ["BenchConfig", "BenchResult", "Generator", "run_bench"]

# Slack on top of --duration for a load generator to start and write its result.
_LOAD_GRACE = 15.0
# wrk counts a response slower than this as a timeout error (its default is 2 s).
_WRK_TIMEOUT = 5.0
# How long a run waits after its load for the pool to settle before it reads
# the master's counters (a drain needs about a second of quiet).
_SETTLE_TIMEOUT = 15.0
# No churn action this close to the end: its effect would not be measured.
_CHURN_TAIL = 0.3
# A datagram with no answer within this long counts as lost (UDP scenarios).
_UDP_TIMEOUT = 1.0


class Generator:
    BUILTIN = "builtin"
    WRK = "wrk"
    AUTO = "auto"
    CHOICES = (AUTO, BUILTIN, WRK)


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchConfig:
    modes: tuple[str, ...] = ("reuseport", "shared")
    workers: int = 2
    app: str | None = None  # None: the built-in demo app
    duration: float = 10.0
    connections: int = 64
    scenarios: tuple[Scenario, ...] = SCENARIOS
    repeat: int = 1
    load_generator: str = Generator.AUTO
    clients: int = 1
    server_command: tuple[str, ...] = (sys.executable, "-m", "reuseport")
    start_timeout: float = 20.0

    def __post_init__(self) -> None:
        if not self.modes:
            raise ConfigError("--modes is empty: give e.g. reuseport,shared")
        for name, value in (
            ("workers", self.workers),
            ("connections", self.connections),
            ("repeat", self.repeat),
            ("clients", self.clients),
        ):
            if value < 1:
                raise ConfigError(f"invalid --{name} {value}: expected a whole number >= 1")
        if self.duration <= 0:
            raise ConfigError(f"invalid --duration {self.duration:g}: expected seconds > 0")
        if self.load_generator not in Generator.CHOICES:
            raise ConfigError(f"invalid --load-generator {self.load_generator!r}")

    def generator_for(self, scenario: Scenario, wrk: str | None) -> str:
        if scenario.datagram:
            return Generator.BUILTIN  # wrk speaks HTTP only
        if self.load_generator == Generator.AUTO:
            # wrk is the stronger client for raw keep-alive throughput; the
            # built-in one checks every body, which the other scenarios need.
            if wrk is not None and scenario.keepalive and not scenario.churn:
                return Generator.WRK
            return Generator.BUILTIN
        return self.load_generator

    def to_dict(self) -> dict[str, Any]:
        return {
            "modes": list(self.modes),
            "workers": self.workers,
            "app": self.app or "demo",
            "duration_s": self.duration,
            "connections": self.connections,
            "scenarios": [s.name for s in self.scenarios],
            "repeat": self.repeat,
            "load_generator": self.load_generator,
            "clients": self.clients,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchResult:
    config: BenchConfig
    runs: tuple[RunResult, ...]
    summaries: tuple[Summary, ...]
    generators: Mapping[str, str] = field(default_factory=dict)  # scenario -> generator

    def summary(self, scenario: str, mode: str) -> Summary | None:
        for s in self.summaries:
            if s.scenario == scenario and s.mode == mode:
                return s
        return None


class _LoadRun(Protocol):
    def start(self) -> None: ...
    def running(self) -> bool: ...
    def kill(self) -> None: ...


class _BuiltinRun:
    def __init__(self, spec: LoadSpec, clients: int, workdir: Path) -> None:
        self._procs = ClientProcesses(spec, clients, workdir)

    def start(self) -> None:
        self._procs.start()

    def running(self) -> bool:
        return self._procs.running()

    def kill(self) -> None:
        self._procs.kill()

    def wait(self, timeout: float) -> Measurement:
        return Measurement.from_load(self._procs.wait(timeout))


def _churn_step(server: ServerProcess, action: ChurnAction, t: float) -> dict[str, Any]:
    record: dict[str, Any] = {"t": round(t, 3), "action": action.value}
    if action is ChurnAction.KILL:
        # Kill a worker the clients are actually talking to; fall back to any
        # child of the master if the probe request itself fails.
        seen = fetch_worker(server.port)
        candidates = [seen[0]] if seen else []
        candidates += server.worker_pids()
        for pid in candidates:
            if server.kill_worker(pid):
                record.update(pid=pid, ok=True)
                break
        else:
            record.update(ok=False)
        return record
    sig = {
        ChurnAction.HUP: signal.SIGHUP,
        ChurnAction.TTIN: signal.SIGTTIN,
        ChurnAction.TTOU: signal.SIGTTOU,
    }[action]
    server.send(sig)
    record.update(ok=server.running())
    return record


def _drive(
    load: _LoadRun, server: ServerProcess, scenario: Scenario, duration: float
) -> list[dict[str, Any]]:
    """Wait for ``load`` to finish, disturbing ``server`` on the churn schedule."""
    started = time.monotonic()
    hard_stop = started + duration + _LOAD_GRACE
    actions: list[dict[str, Any]] = []
    interval = min(scenario.churn_interval, duration / 4)
    next_at = started + interval
    while load.running() and time.monotonic() < hard_stop:
        now = time.monotonic()
        if scenario.churn and now >= next_at and now - started < duration - _CHURN_TAIL:
            action = scenario.churn[len(actions) % len(scenario.churn)]
            actions.append(_churn_step(server, action, now - started))
            next_at += interval
            server.worker_pids()  # remember the new workers too
        time.sleep(0.02)
    return actions


def run_one(
    config: BenchConfig,
    scenario: Scenario,
    mode: str,
    repeat: int,
    generator: str,
    wrk: str | None,
    workdir: Path,
) -> RunResult:
    server = ServerProcess(
        mode=mode,
        workers=config.workers,
        app=config.app,
        command=config.server_command,
        start_timeout=config.start_timeout,
        extra_args=scenario.server_args,
    )
    load: _BuiltinRun | WrkProcess | None = None
    exit_code: int | None = None
    try:
        server.start()
        before = server.pool_state()
        if generator == Generator.WRK:
            if wrk is None:
                raise MissingToolError(INSTALL_HINT)
            script = workdir / "count_workers.lua"
            script.write_text(WRK_LUA)
            load = WrkProcess(
                wrk_command(
                    wrk,
                    port=server.port,
                    path=scenario.path,
                    keepalive=scenario.keepalive,
                    connections=config.connections,
                    duration=config.duration,
                    threads=config.clients,
                    script=script,
                    timeout=_WRK_TIMEOUT,
                ),
                workdir,
            )
        else:
            if scenario.datagram and not server.udp_port:
                raise BenchError(
                    f"the server under test for {scenario.name} said no 'Listening at udp://' "
                    "line; its last log lines:\n" + (server.log_tail() or "(none)")
                )
            spec = LoadSpec(
                host="127.0.0.1",
                port=server.udp_port if scenario.datagram else server.port,
                connections=config.connections,
                duration=config.duration,
                path=scenario.path,
                keepalive=scenario.keepalive,
                check_body=config.app is None,
                datagram=scenario.datagram,
                **({"request_timeout": _UDP_TIMEOUT} if scenario.datagram else {}),
            )
            load = _BuiltinRun(spec, config.clients, workdir)
        load.start()
        actions = _drive(load, server, scenario, config.duration)
        measurement = load.wait(timeout=config.duration + _LOAD_GRACE)
        # A scale-down or reload sent near the end completes after the load:
        # count it (events.py).
        after = server.pool_state(settle=_SETTLE_TIMEOUT)
    finally:
        if load is not None:
            load.kill()
        exit_code = server.stop()
    pids = set(server.known_workers) | {pid for pid, _ in measurement.workers}
    return RunResult(
        scenario=scenario.name,
        mode=mode,
        repeat=repeat,
        workers_expected=config.workers,
        measurement=measurement,
        server_pid=server.pid,
        worker_pids=tuple(sorted(pids)),
        churn_actions=tuple(actions),
        server_exit_code=exit_code,
        server_argv=tuple(server.argv[server.argv.index("serve") :]),
        server_events=after.events_since(before),
        server_workers=(before.workers, after.workers),
        server_log=server.log_problems,
    )


def run_bench(
    config: BenchConfig, progress: Callable[[str], None] = lambda _line: None
) -> BenchResult:
    """Every scenario x repeat x mode, in that nesting; returns runs and medians."""
    wrk = find_wrk()
    if config.load_generator == Generator.WRK and wrk is None:
        raise MissingToolError(INSTALL_HINT)
    plan = [
        (scenario, repeat, mode)
        for scenario in config.scenarios
        for repeat in range(1, config.repeat + 1)
        for mode in config.modes
    ]
    generators = {s.name: config.generator_for(s, wrk) for s in config.scenarios}
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="reuseport-bench-") as tmp:
        for n, (scenario, repeat, mode) in enumerate(plan, 1):
            progress(
                f"[{n}/{len(plan)}] {scenario.name} {mode} run {repeat}/{config.repeat} "
                f"({generators[scenario.name]}, {config.duration:g} s) …"
            )
            workdir = Path(tmp) / f"run-{n}"
            workdir.mkdir()
            runs.append(
                run_one(config, scenario, mode, repeat, generators[scenario.name], wrk, workdir)
            )
    summaries = tuple(
        summarize(
            [r for r in runs if r.scenario == scenario.name and r.mode == mode],
            counts_accepts=scenario.counts_accepts,
        )
        for scenario in config.scenarios
        for mode in config.modes
    )
    return BenchResult(config=config, runs=tuple(runs), summaries=summaries, generators=generators)


STEERED_MODE = "reuseport+load"  # reuseport mode with --steering load
# reuseport+hash: the kernel's hash alone (no steering, no rescue), the
# behaviour every reuseport server had before load-aware steering.
MODES = ("reuseport", "shared", "auto", "reuseport+hash", STEERED_MODE, "reuseport+p2c")
_OPTIONS = ("hash", "load", "p2c", "norescue")  # what may follow "reuseport+"


def _valid_mode(mode: str) -> bool:
    base, *options = mode.split("+")
    if not options:
        return base in ("reuseport", "shared", "auto")
    steerings = [o for o in options if o != "norescue"]
    return (
        base == "reuseport"
        and all(o in _OPTIONS for o in options)
        and len(steerings) <= 1
        and len(set(options)) == len(options)
    )


def modes_from_text(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    for mode in modes:
        if not _valid_mode(mode):
            raise ConfigError(
                f"invalid mode {mode!r} in --modes: choose from {', '.join(MODES)}, or "
                "reuseport+STEERING with STEERING one of hash, load, p2c, and +norescue"
            )
    if len(set(modes)) != len(modes):
        raise ConfigError(f"--modes {text!r} names a mode twice")
    if not modes:
        raise ConfigError("--modes is empty: give e.g. reuseport,shared")
    return modes
