"""Command line: ``reuseport serve|probe|bench|status``.

Rules: ``main(argv)`` returns an exit code and never lets a ``ReuseportError``
out as a traceback.  For ``serve``, every option also comes from the TOML file
(``--config``) and from ``REUSEPORT_<NAME>`` environment variables; the
command line wins over the environment, which wins over the file.  Flags use
``argparse.SUPPRESS`` as default so only what the user typed overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .config import Config, Interface, Lifespan, LoopKind, Mode, ProcessManager, SteeringKind
from .errors import ConfigError, ExitCode, ReuseportError

__all__ = ["main"]

log = logging.getLogger("reuseport")

_LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(message)s"


def _choices(kind: type[Any]) -> list[str]:
    return [member.value for member in kind]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"cannot parse {text!r} as a boolean: use true or false")


# How to turn an environment string into a field value, by Config annotation.
_FROM_TEXT: dict[str, Callable[[str], object]] = {
    "int": int,
    "int | None": int,
    "float": float,
    "bool": _bool,
}


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument(
        "app",
        nargs="?",
        default=S,
        metavar="APP",
        help="application as MODULE:ATTRIBUTE (default: the built-in demo app)",
    )
    g = p.add_argument_group("listening")
    g.add_argument(
        "-b",
        "--bind",
        dest="binds",
        action="append",
        default=S,
        metavar="HOST:PORT",
        help="address to listen on, repeatable; [::1]:8000 for IPv6; port 0 picks a "
        "free port (default 127.0.0.1:8000)",
    )
    g.add_argument(
        "--mode",
        default=S,
        choices=_choices(Mode),
        help="reuseport: a SO_REUSEPORT socket per worker; shared: one socket bound "
        "by the master; auto (default): reuseport if the kernel balances it",
    )
    g.add_argument("--backlog", type=int, default=S, help="listen backlog (default 2048)")
    g.add_argument(
        "--steering",
        default=S,
        choices=_choices(SteeringKind),
        help="reuseport mode: hash (default) leaves new connections to the kernel's "
        "hash; load steers them away from workers whose accept queue backs up "
        "or that are not ready (a cBPF program, no privilege needed)",
    )
    g = p.add_argument_group("application")
    g.add_argument(
        "--interface",
        default=S,
        choices=_choices(Interface),
        help="how to call APP (default: detect)",
    )
    g.add_argument("--app-dir", default=S, help="put this folder first on sys.path (default .)")
    g.add_argument(
        "--loop",
        default=S,
        choices=_choices(LoopKind),
        help="event loop (default auto: uvloop if installed)",
    )
    g.add_argument(
        "--lifespan",
        default=S,
        choices=_choices(Lifespan),
        help="ASGI lifespan events (default auto)",
    )
    g.add_argument("--root-path", default=S, help="ASGI root_path (when mounted under a prefix)")
    g = p.add_argument_group("process manager")
    g.add_argument(
        "-w",
        "--workers",
        type=int,
        default=S,
        help="workers for --pm static (default: usable CPUs)",
    )
    g.add_argument(
        "--pm",
        default=S,
        choices=_choices(ProcessManager),
        help="pool kind, as php-fpm (default static)",
    )
    g.add_argument("--max-workers", type=int, default=S, help="pool upper bound (pm.max_children)")
    g.add_argument("--start-workers", type=int, default=S, help="dynamic: workers at start")
    g.add_argument("--min-spare", type=int, default=S, help="dynamic: fewest idle workers")
    g.add_argument("--max-spare", type=int, default=S, help="dynamic: most idle workers")
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=S,
        help="ondemand: seconds a worker may idle before it exits (default 10)",
    )
    g.add_argument(
        "--max-spawn-rate",
        type=int,
        default=S,
        help="dynamic: most workers started per second (default 32)",
    )
    g.add_argument(
        "--max-requests",
        type=int,
        default=S,
        help="recycle a worker after this many requests (default 0 = never)",
    )
    g.add_argument(
        "--max-requests-jitter",
        type=int,
        default=S,
        help="randomise --max-requests by up to this much per worker",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=S,
        help="kill a worker whose event loop is stuck this long (default 30; 0 = off)",
    )
    g.add_argument(
        "--graceful-timeout",
        type=float,
        default=S,
        help="seconds in-flight requests get on stop or reload (default 30)",
    )
    g = p.add_argument_group("HTTP")
    g.add_argument(
        "--limit-concurrency",
        type=int,
        default=S,
        help="answer 503 above this many in-flight requests per worker",
    )
    g.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=S,
        help="close idle keep-alive connections after this long (default 5)",
    )
    g.add_argument(
        "--header-read-timeout",
        type=float,
        default=S,
        help="close connections that do not send complete headers in time (default 10)",
    )
    g.add_argument(
        "--body-read-timeout",
        type=float,
        default=S,
        help="answer 408 (or close) when a request body the app waits for stalls this long "
        "(default 30, 0 = off)",
    )
    g.add_argument(
        "--forwarded-allow-ips",
        default=S,
        help="comma list of proxies whose X-Forwarded-* headers are trusted",
    )
    g.add_argument(
        "--server-header",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="send a Server header (default on)",
    )
    g.add_argument(
        "--date-header",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="send a Date header (default on)",
    )
    g.add_argument("--limit-request-line", type=int, default=S, help="default 8190 bytes")
    g.add_argument("--limit-request-fields", type=int, default=S, help="default 100 headers")
    g.add_argument("--limit-request-field-size", type=int, default=S, help="default 8190 bytes")
    g = p.add_argument_group("operation")
    g.add_argument(
        "--config",
        dest="config_file",
        default=S,
        metavar="FILE.toml",
        help="read options from a TOML file (keys as the long flags)",
    )
    g.add_argument("--pid", dest="pid_file", default=S, metavar="FILE", help="write the master pid")
    g.add_argument("--control", default=S, metavar="PATH", help="control socket for `status`")
    g.add_argument("--user", default=S, help="run workers as this user")
    g.add_argument("--group", default=S, help="run workers as this group")
    g.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="log every request (default off)",
    )
    g.add_argument(
        "--log-level",
        default=S,
        choices=["critical", "error", "warning", "info", "debug"],
        help="default info",
    )
    g.add_argument("--name", dest="proc_name", default=S, help="name shown in process titles")


def _from_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    table = data.get("serve", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path!r}: [serve] must be a table")
    names = set(Config.field_names())
    values: dict[str, object] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        name = {"bind": "binds", "pid": "pid_file", "name": "proc_name"}.get(name, name)
        if name not in names:
            raise ConfigError(f"config file {path!r}: unknown option {key!r}")
        if name == "binds" and isinstance(value, str):
            value = [value]
        values[name] = tuple(value) if isinstance(value, list) else value
    return values


def _from_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, object]:
    annotations = {f: str(t) for f, t in Config.__annotations__.items()}
    values: dict[str, object] = {}
    aliases = {"bind": "binds", "pid": "pid_file", "name": "proc_name"}
    for key, text in environ.items():
        if not key.startswith("REUSEPORT_") or key in {"REUSEPORT_CONFIG"}:
            continue
        raw = key[len("REUSEPORT_") :].lower()
        name = aliases.get(raw, raw)
        if name not in annotations:
            continue
        kind = annotations[name]
        try:
            if name == "binds":
                values[name] = tuple(part.strip() for part in text.split(",") if part.strip())
            elif kind in _FROM_TEXT:
                values[name] = _FROM_TEXT[kind](text)
            else:
                values[name] = text
        except ValueError:
            raise ConfigError(f"cannot parse {key}={text!r}: expected {kind}") from None
    return values


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Merge file < environment < command line into a validated Config."""
    env = os.environ if environ is None else environ
    given = dict(vars(args))
    for key in ("command", "func"):
        given.pop(key, None)
    config_file = given.pop("config_file", None) or env.get("REUSEPORT_CONFIG")
    values: dict[str, object] = {}
    if config_file:
        values.update(_from_toml(config_file))
    values.update(_from_env(env))
    if "binds" in given:
        given["binds"] = tuple(given["binds"])
    values.update(given)
    try:
        return Config(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"bad configuration: {exc}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=_LOG_FORMAT, stream=sys.stderr)


def _cmd_serve(args: argparse.Namespace) -> int:
    config = build_config(args)
    _setup_logging(config.log_level)
    from .arbiter import Arbiter
    from .probe import quick_recommendation

    if config.mode is Mode.AUTO:
        mode, reason = quick_recommendation()
        reason = f"chosen by --mode auto: {reason}"
    else:
        mode, reason = config.mode, "chosen by --mode"
        if mode is Mode.REUSEPORT and not sys.platform.startswith("linux"):
            log.warning(
                "SO_REUSEPORT on %s does not balance connections across workers; "
                "--mode shared is the better choice here",
                sys.platform,
            )
    return Arbiter(config, mode, reason).run()


def _cmd_probe(args: argparse.Namespace) -> int:
    from .probe import run

    return run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from .control import run_status

    return run_status(args)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reuseport",
        description="A prefork server for asyncio apps on Linux, with per-worker SO_REUSEPORT "
        "sockets.",
    )
    parser.add_argument("--version", action="version", version=f"reuseport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run a server (default app: the built-in demo)")
    _add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)
    probe = sub.add_parser("probe", help="report kernel features and the recommended mode")
    from .probe import add_arguments as add_probe_arguments

    add_probe_arguments(probe)
    probe.set_defaults(func=_cmd_probe)
    bench = sub.add_parser("bench", help="compare the listen modes under identical load")
    from .bench.cli import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    status = sub.add_parser("status", help="show the live workers of a running server")
    from .control import add_status_arguments

    add_status_arguments(status)
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ReuseportError as exc:
        print(f"reuseport: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
