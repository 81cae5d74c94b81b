"""``reuseport bench``: argparse wiring.  ``reuseport.cli`` calls exactly
``add_arguments(parser)`` and ``run(args)``.

Rules: everything that can be refused is refused before the first server
starts (bad flags, wrk or matplotlib missing, a plot file with the wrong
suffix), so a user never waits minutes for an error.  Progress goes to
stderr, the report to stdout; errors are one line, with the fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, ExitCode, ReuseportError
from .plot import PLOT_SUFFIXES, check_matplotlib, write_plot
from .report import document, machine_info, render, write_json
from .runner import BenchConfig, Generator, modes_from_text, run_bench
from .scenarios import ALL_SCENARIOS, CHURN_KILL, SCENARIOS, scenario_by_name

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compare the listen modes side by side: start `reuseport serve` in each mode, "
        "drive identical load at it, and report throughput, latency, errors and how "
        "evenly the workers share the work."
    )
    parser.add_argument(
        "--modes",
        default="reuseport,shared,reuseport+hash",
        help=(
            "comma-separated modes to compare: reuseport (its defaults: load-aware "
            "steering and sibling rescue), shared, auto, reuseport+hash (the kernel's "
            "hash alone), reuseport+load, reuseport+p2c (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "-w", "--workers", type=int, default=2, help="workers per server (default: %(default)s)"
    )
    parser.add_argument(
        "--app",
        default=None,
        metavar="MODULE:ATTR",
        help="application to serve (default: the built-in demo app, which reports "
        "the worker pid and slot so per-worker figures are exact)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds of load per scenario per run (default: %(default)g)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        metavar="N",
        help="concurrent client connections (default: %(default)s)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in ALL_SCENARIOS],
        dest="scenarios",
        metavar="NAME",
        help="scenario to run, repeatable: "
        + "; ".join(f"{s.name} = {s.summary}" for s in ALL_SCENARIOS)
        + f" (default: {', '.join(s.name for s in SCENARIOS)})",
    )
    parser.add_argument(
        "--churn-kill",
        action="store_true",
        help=f"also run {CHURN_KILL.name}: SIGKILL a serving worker every ~1.5 s; its errors "
        "are reported apart, as requests lost with killed workers",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw a chart (.png or .svg; needs pip install 'reuseport[bench]')",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="runs per mode, alternating the modes (A B A B …); the report shows "
        "medians (default: %(default)s)",
    )
    parser.add_argument(
        "--load-generator",
        choices=Generator.CHOICES,
        default=Generator.AUTO,
        help="builtin (always available), wrk (apt-get install wrk), or auto: wrk for "
        "the keepalive scenario when it is on PATH, builtin otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="P",
        help="load generator processes (wrk: threads); the server under test needs the "
        "other cores (default: %(default)s)",
    )


def _config(args: argparse.Namespace) -> BenchConfig:
    names = args.scenarios or [s.name for s in SCENARIOS]
    if args.churn_kill:
        names.append(CHURN_KILL.name)
    scenarios = tuple(scenario_by_name(n) for n in dict.fromkeys(names))
    return BenchConfig(
        modes=modes_from_text(args.modes),
        workers=args.workers,
        app=args.app,
        duration=args.duration,
        connections=args.connections,
        scenarios=scenarios,
        repeat=args.repeat,
        load_generator=args.load_generator,
        clients=args.clients,
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; returns the exit code."""
    try:
        config = _config(args)
        if args.plot is not None:
            if args.plot.suffix.lower() not in PLOT_SUFFIXES:
                raise ConfigError(
                    f"cannot plot to {args.plot}: the file name must end in .png or .svg",
                )
            check_matplotlib()
        if config.app is not None and config.app.count(":") != 1:
            raise ConfigError(
                f"cannot parse --app {config.app!r}: expected MODULE:ATTRIBUTE, e.g. web:app"
            )
        info = machine_info()
        _progress(
            f"reuseport bench: {len(config.scenarios)} scenarios x {len(config.modes)} "
            f"modes x {config.repeat} runs of {config.duration:g} s"
        )
        result = run_bench(config, progress=_progress)
        print(render(result, info), flush=True)
        doc = document(result, info, sys.argv)
        if args.json is not None:
            write_json(args.json, doc)
            _progress(f"wrote {args.json}")
        if args.plot is not None:
            write_plot(doc, args.plot)
            _progress(f"wrote {args.plot}")
    except ReuseportError as exc:
        print(f"reuseport bench: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("reuseport bench: interrupted; servers and clients stopped", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.OK)
