#!/usr/bin/env python3
"""Soak: rolling reloads, scale-up/down and recycling under sustained load, per mode.

Issue 4's acceptance run.  For each listen mode it starts ``reuseport serve
-w 2 --max-requests 5000 --max-requests-jitter 500 --control SOCK`` on
127.0.0.1:0, runs ``wrk -t1 -c32 -d60s -H "Connection: close" --latency``
against it, and while wrk runs sends the master HUP, TTIN, TTOU in turn, one
every second, and captures ``reuseport status`` every ten seconds.  Then it
stops the server with SIGTERM and reports, per mode: what wrk counted
(requests, req/s, socket errors, non-2xx/3xx responses), the signals sent,
the pool events the master counted (reloads, max-requests recycles, drained
slots, crashes: its status snapshot's ``events``, read over the control
socket before and after the load, never its log text), the warning and error
lines it logged, and one status table.

Rules: every process this script starts stops by itself (wrk after
``--duration``, the server on SIGTERM) and is killed in a ``finally`` as a
last resort, also on ^C; every wait has a bound; signals go only to the
master this script started.  The exit code is 1 if any client saw an error
(a socket error or a non-2xx/3xx response), a worker crashed, the master's
status had no event counters (so crashes could not be ruled out) or the
server did not exit cleanly; 2 for a usage or set-up error; 0 otherwise.

    .venv/bin/python scripts/soak.py                      # 60 s per mode
    .venv/bin/python scripts/soak.py --duration 10 --markdown /tmp/soak.md
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reuseport.bench.errors import BenchError
from reuseport.bench.events import EVENT_WORDS
from reuseport.bench.report import machine_info, machine_line
from reuseport.bench.server import ServerProcess
from reuseport.bench.wrk import SOCKET_ERRORS, parse_wrk, wrk_command, wrk_seconds

MODES = ("reuseport", "shared")
# The pool changes, in this order, one per --interval.
ACTIONS: tuple[tuple[str, signal.Signals], ...] = (
    ("HUP", signal.SIGHUP),
    ("TTIN", signal.SIGTTIN),
    ("TTOU", signal.SIGTTOU),
)
# No signal this close to the end of the load: its effect (a reload, a drain)
# must finish while wrk still counts.
_ACTION_TAIL = 1.5
# Slack on top of --duration for wrk to connect, finish and print.
_WRK_GRACE = 15.0
_STATUS_TIMEOUT = 5.0
_STOP_TIMEOUT = 20.0
# After the load, how long to wait for the pool to settle before reading the
# master's counters (the last scale-down's drain completes after wrk stops).
_SETTLE_TIMEOUT = 15.0


@dataclass(slots=True)
class ModeResult:
    mode: str
    command: list[str]
    wrk_text: str = ""
    requests: int = 0  # every response wrk completed, whatever its status
    seconds: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    events: dict[str, int] | None = None  # what the master counted; None: no counters
    workers: tuple[int | None, int | None] = (None, None)  # live workers before, after
    log_problems: dict[str, int] = field(default_factory=dict)  # warning/error lines
    problems: list[str] = field(default_factory=list)
    statuses: list[tuple[float, str]] = field(default_factory=list)  # (t, table)
    status_failures: int = 0
    server_exit: int | None = None
    failure: str = ""  # why the run itself could not complete

    @property
    def client_errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    @property
    def ok(self) -> bool:
        return (
            not self.failure
            and self.requests > 0
            and self.client_errors == 0
            and self.events is not None
            and not self.events.get("exits.crash")
            and self.server_exit == 0
        )


def parse_wrk_text(text: str, result: ModeResult) -> None:
    report = parse_wrk(text)  # no Lua script here: wrk's text report is parsed
    result.requests = report.requests
    result.seconds = report.elapsed
    result.rps = report.rps
    result.socket_errors = dict(report.socket_errors)
    result.non_2xx = report.non_2xx
    result.latency_ms = dict(report.latency_ms)


def capture_status(python: str, control: Path) -> str | None:
    try:
        done = subprocess.run(
            [python, "-m", "reuseport", "status", "--control", str(control)],
            capture_output=True,
            text=True,
            timeout=_STATUS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None


def _say(line: str) -> None:
    print(line, flush=True)


def soak_one(args: argparse.Namespace, mode: str, wrk: str, workdir: Path) -> ModeResult:
    control = workdir / f"{mode}.sock"
    server = ServerProcess(
        mode=mode,
        workers=args.workers,
        app=None,
        command=(args.python, "-m", "reuseport"),
        extra_args=(
            "--max-requests",
            str(args.max_requests),
            "--max-requests-jitter",
            str(args.max_requests_jitter),
        ),
        log_path=args.log_dir / f"soak-{mode}.log" if args.log_dir else workdir / f"{mode}.log",
        control=control,
    )
    result = ModeResult(mode=mode, command=[])
    load: subprocess.Popen[bytes] | None = None
    out_path = workdir / f"wrk-{mode}.out"
    try:
        server.start()
        before = server.pool_state()
        result.command = wrk_command(
            wrk,
            port=server.port,
            duration=args.duration,
            threads=args.threads,
            connections=args.connections,
            keepalive=False,
        )
        _say(f"== {mode}: server pid {server.pid}, port {server.port}")
        _say(f"== {shlex.join(result.command)}")
        with out_path.open("wb") as out:
            load = subprocess.Popen(
                result.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        started = time.monotonic()
        hard_stop = started + args.duration + _WRK_GRACE
        next_action = started + args.interval
        next_status = started + args.status_interval
        while load.poll() is None and time.monotonic() < hard_stop:
            now = time.monotonic()
            if not server.running():
                result.failure = "the server exited during the load:\n" + server.log_tail()
                break
            if now >= next_action and now - started < args.duration - _ACTION_TAIL:
                name, sig = ACTIONS[sum(result.sent.values()) % len(ACTIONS)]
                server.send(sig)
                result.sent[name] += 1
                next_action += args.interval
            if now >= next_status and now - started < args.duration:
                table = capture_status(args.python, control)
                t = now - started
                if table is None:
                    result.status_failures += 1
                    _say(f"-- {mode} t={t:.0f}s: reuseport status failed")
                else:
                    result.statuses.append((t, table))
                    _say(f"-- {mode} t={t:.0f}s: reuseport status")
                    _say(table)
                next_status += args.status_interval
            time.sleep(0.05)
        if load.poll() is None:
            if not result.failure:
                result.failure = f"wrk did not finish within {args.duration + _WRK_GRACE:g} s"
        else:
            text = out_path.read_text(errors="replace")
            result.wrk_text = text
            if load.returncode != 0:
                result.failure = result.failure or f"wrk exited with {load.returncode}: {text}"
            else:
                try:
                    parse_wrk_text(text, result)
                except BenchError as exc:
                    result.failure = str(exc)
        if server.running():
            try:
                after = server.pool_state(settle=_SETTLE_TIMEOUT)
            except BenchError as exc:
                result.failure = result.failure or str(exc)
            else:
                result.events = after.events_since(before)
                result.workers = (before.workers, after.workers)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(timeout=5)
        result.server_exit = server.stop(timeout=_STOP_TIMEOUT)
        result.log_problems = server.log_problems
        result.problems = server.problems
    return result


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


HEADER = (
    "mode", "requests", "req/s", "p50 ms", "p99 ms", "max ms",
    "socket errors c/r/w/t", "non-2xx", "HUP/TTIN/TTOU sent",
    *(words for _, words in EVENT_WORDS), "workers before/after", "warnings", "server exit",
)  # fmt: skip


def _count(events: dict[str, int] | None, key: str) -> str:
    return "-" if events is None else str(events.get(key, 0))


def table_rows(results: Sequence[ModeResult]) -> list[list[str]]:
    rows = []
    for r in results:
        rows.append(
            [
                r.mode,
                f"{r.requests:,}",
                f"{r.rps:,.0f}",
                _ms(r.latency_ms.get("p50")),
                _ms(r.latency_ms.get("p99")),
                _ms(r.latency_ms.get("max")),
                "/".join(str(r.socket_errors.get(k, 0)) for k in SOCKET_ERRORS),
                str(r.non_2xx),
                "/".join(str(r.sent[name]) for name, _ in ACTIONS),
                *(_count(r.events, key) for key, _ in EVENT_WORDS),
                "/".join("-" if n is None else str(n) for n in r.workers),
                str(sum(r.log_problems.values())),
                "-" if r.server_exit is None else str(r.server_exit),
            ]
        )
    return rows


def text_table(results: Sequence[ModeResult]) -> str:
    rows = [list(HEADER), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(results: Sequence[ModeResult]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def verdict(results: Sequence[ModeResult]) -> str:
    parts = []
    for r in results:
        if r.failure:
            parts.append(f"{r.mode}: FAILED ({r.failure.splitlines()[0]})")
        elif r.ok:
            parts.append(f"{r.mode}: 0 client errors in {r.requests:,} requests")
        else:
            why = []
            if r.client_errors:
                why.append(f"{r.client_errors} client errors")
            if r.events is None:
                why.append("the master's status has no event counters")
            elif r.events.get("exits.crash"):
                why.append(f"{r.events['exits.crash']} worker crashes")
            if r.server_exit != 0:
                why.append(f"server exit {r.server_exit}")
            parts.append(f"{r.mode}: FAILED ({', '.join(why) or 'no requests'})")
    return "; ".join(parts)


def soak_line(args: argparse.Namespace) -> str:
    return (
        f"soak: {args.workers} workers, --max-requests {args.max_requests} "
        f"--max-requests-jitter {args.max_requests_jitter}; wrk -t{args.threads} "
        f"-c{args.connections} -d{wrk_seconds(args.duration)}s, Connection: close; "
        f"HUP, TTIN, TTOU in turn every {args.interval:g} s (none in the last "
        f"{_ACTION_TAIL:g} s); status every {args.status_interval:g} s"
    )


def _last_status(r: ModeResult) -> tuple[float, str] | None:
    return r.statuses[-1] if r.statuses else None


def render_markdown(
    args: argparse.Namespace, argv: Sequence[str], machine: str, results: Sequence[ModeResult]
) -> str:
    out = [
        "# Soak: pool changes under connection-per-request load",
        "",
        "`scripts/soak.py` (issue 4's acceptance run): per mode, `reuseport serve` with "
        f"{args.workers} workers and max-requests recycling under `wrk` with a new connection "
        "per request, while the master gets HUP (rolling reload), TTIN (one worker more) and "
        "TTOU (one worker less, drained first) in turn; `reuseport status` every "
        f"{args.status_interval:g} s. Client errors would be requests lost to a pool change.",
        "",
        "```",
        f"$ {shlex.join(argv)}",
        machine,
        soak_line(args),
        "```",
        "",
        markdown_table(results),
        "",
        f"Result: {verdict(results)}.",
        "",
        "Columns: socket errors as wrk counts them (connect/read/write/timeout); non-2xx "
        'is wrk\'s "Non-2xx or 3xx responses"; reloads, recycles, drains, crashes and '
        "failed reloads are the master's own event counters (the `events` of its status "
        "snapshot, read over the control socket before and after the load), and so are "
        "the workers before and after; warnings counts the WARNING/ERROR lines it logged. "
        "Drains happen in reuseport mode only: in shared mode every worker accepts from one "
        "queue, so a retiring worker simply stops accepting.",
    ]
    for r in results:
        if r.problems:
            out += ["", f"Warnings and errors in the {r.mode} server's log:", "", "```"]
            out += [*r.problems, "```"]
        last = _last_status(r)
        if last is not None:
            out += [
                "",
                f"`reuseport status` of the {r.mode} server at t = {last[0]:.0f} s, under load:",
                "",
                "```",
                last[1],
                "```",
            ]
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds of load per mode (default: %(default)g)",
    )
    parser.add_argument("-w", "--workers", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--max-requests-jitter", type=int, default=500, help="default: %(default)s")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between signals (default: %(default)g)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between status captures (default: %(default)g)",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write the report as Markdown"
    )
    parser.add_argument(
        "--log-dir", type=Path, metavar="DIR", help="keep each server's full log here"
    )
    parser.add_argument(
        "--install-wrk",
        action="store_true",
        help="apt-get install -y wrk if it is missing (needs root)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs the server (default: this one)",
    )
    args = parser.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.mode_list if m not in MODES]
    if bad or not args.mode_list:
        parser.error(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
    if args.duration < 2 * args.interval + _ACTION_TAIL:
        parser.error(
            f"--duration {args.duration:g} is too short for a signal every {args.interval:g} s"
        )
    for name in ("workers", "connections", "threads", "max_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def find_or_install_wrk(install: bool) -> str | None:
    if (wrk := shutil.which("wrk")) is not None or not install:
        return wrk
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, timeout=300)
    return shutil.which("wrk")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    wrk = find_or_install_wrk(args.install_wrk)
    if wrk is None:
        print(
            "soak: wrk is not installed: apt-get install -y wrk (or pass --install-wrk)",
            file=sys.stderr,
        )
        return 2
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_line(machine_info())
    _say(machine)
    _say(soak_line(args))
    results: list[ModeResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="reuseport-soak-") as tmp:
            for mode in args.mode_list:
                try:
                    results.append(soak_one(args, mode, wrk, Path(tmp)))
                except BenchError as exc:  # the server did not start
                    results.append(ModeResult(mode=mode, command=[], failure=str(exc)))
    except KeyboardInterrupt:
        print("soak: interrupted; the servers and wrk were stopped", file=sys.stderr)
        return 130
    _say("")
    _say(machine)
    _say(text_table(results))
    for r in results:
        if r.problems:
            _say(f"\nwarnings and errors in the {r.mode} server's log:")
            _say("\n".join(r.problems))
        if r.failure:
            _say(f"\n{r.mode}: {r.failure}")
        if (last := _last_status(r)) is not None:
            _say(f"\nlast status of the {r.mode} server (t = {last[0]:.0f} s):\n{last[1]}")
    _say(f"\nresult: {verdict(results)}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        shown = ["scripts/soak.py", *argv]
        args.markdown.write_text(render_markdown(args, shown, machine, results))
        _say(f"wrote {args.markdown}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
