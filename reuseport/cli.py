"""Command line: ``reuseport serve|probe|bench|status``.

Rules: ``main(argv)`` returns an exit code and never lets a ``ReuseportError``
out as a traceback.  For ``serve``, every option also comes from the TOML file
(``--config``) and from ``REUSEPORT_<NAME>`` environment variables; the
command line wins over the environment, which wins over the file.  Flags use
``argparse.SUPPRESS`` as default so only what the user typed overrides.

uvicorn's and gunicorn's spellings are accepted where they mean the same
(``--host``/``--port``, ``--uds``, ``--fd``, ``--keep-alive``, ``--log-file``,
``--access-logformat``, ...): ``_ALIASES`` maps a file or variable key to its
field, and ``_bind_aliases`` turns host/port/uds/fd into binds, per source,
so a higher source's binds replace a lower one's as a whole.

Start-up checks that need I/O (the TLS files load, the log files open, the
env file exists, the reload and metrics extras are installed) run in
``_cmd_serve`` before the master binds anything: a mistake there is exit 2
with a message, never a worker boot loop.  The default ``--workers`` is
lowered to the cgroup CPU limit here (``cgroups.py``; ``config.py`` does no
I/O), and the master started by a SIGUSR2 upgrade takes its sockets, binds
and mode from the hand-over (``upgrade.take``) instead of binding.

``--check-config`` runs every check a start runs and imports the app, binds
nothing, and exits 0, 2 (configuration) or 4 (the app); ``--print-config``
prints the effective settings as TOML (usable as a ``--config`` file) with
where each came from: ``build_config_with_sources`` merges the sources
layer by layer and remembers the last layer that set each field.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import enum
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any, cast

from . import __version__, cgroups, logs, signals, upgrade
from .activation import systemd_binds
from .config import (
    DEFAULT_BIND,
    LOG_LEVELS,
    BindAddress,
    Config,
    FdBind,
    Interface,
    Lifespan,
    LoopKind,
    Mode,
    ProcessManager,
    SteeringKind,
    WebSocketKind,
    parse_tcp_bind,
    usable_cpus,
)
from .errors import ConfigError, ExitCode, ReuseportError
from .peerflags import first_peer_flag, peer_flag_message, without_no_ops

__all__ = ["main"]

log = logging.getLogger("reuseport")

# File keys and REUSEPORT_* names that are spelled differently from their field.
_ALIASES = {
    "bind": "binds",
    "pid": "pid_file",
    "name": "proc_name",
    "header": "headers",
    "reload_dir": "reload_dirs",
    "reload_include": "reload_includes",
    "reload_exclude": "reload_excludes",
    "keep_alive": "timeout_keep_alive",
    "log_file": "error_logfile",
    "access_logformat": "access_log_format",
    "limit_max_requests": "max_requests",
    "timeout_graceful_shutdown": "graceful_timeout",
    "certfile": "ssl_certfile",
    "keyfile": "ssl_keyfile",
    "ca_certs": "ssl_ca_certs",
    "cert_reqs": "ssl_cert_reqs",
    "ciphers": "ssl_ciphers",
}
# Keys that are not fields but spell a bind (uvicorn's --host/--port, --uds, --fd).
_BIND_KEYS = ("host", "port", "uds", "fd")


def _choices(kind: type[Any]) -> list[str]:
    return [member.value for member in kind]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"cannot parse {text!r} as a boolean: use true or false")


def _bool_arg(text: str) -> bool:
    try:
        return _bool(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        metavar="ADDRESS",
        help="address to listen on, repeatable: HOST:PORT ([::1]:8000 for IPv6; port 0 "
        "picks a free port), udp://HOST:PORT (served by a datagram app), unix:/path or "
        "fd://N (default 127.0.0.1:8000)",
    )
    g.add_argument("--host", default=S, help="uvicorn's spelling: bind HOST (with --port)")
    g.add_argument("--port", type=int, default=S, help="uvicorn's spelling: bind --host:PORT")
    g.add_argument("--uds", default=S, metavar="PATH", help="bind a Unix socket (unix:PATH)")
    g.add_argument(
        "--uds-mode",
        default=S,
        metavar="OCTAL",
        help="permissions of the Unix socket file (default 666, as uvicorn)",
    )
    g.add_argument(
        "--fd",
        type=int,
        default=S,
        metavar="N",
        help="serve an inherited listening socket (fd://N); systemd socket activation "
        "(LISTEN_FDS) is used by itself",
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
        help="reuseport mode, how new connections are spread: p2c (eBPF, needs "
        "CAP_BPF) gives each one to the less loaded of two workers; load (cBPF, no "
        "privilege) keeps them from workers whose queue backs up; hash leaves them to "
        "the kernel's hash; auto (default): p2c if the kernel allows, else load",
    )
    g.add_argument(
        "--rescue",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="reuseport mode: a worker serves the connections queued for a sibling "
        "that stopped accepting (default on)",
    )
    g = p.add_argument_group("TLS (uvicorn's flags)")
    g.add_argument(
        "--ssl-certfile", "--certfile", default=S, metavar="FILE", help="serve HTTPS with this cert"
    )
    g.add_argument("--ssl-keyfile", "--keyfile", default=S, metavar="FILE", help="its private key")
    g.add_argument("--ssl-keyfile-password", default=S, help="password of the private key")
    g.add_argument(
        "--ssl-ca-certs",
        "--ca-certs",
        default=S,
        metavar="FILE",
        help="CA file for client certificates",
    )
    g.add_argument(
        "--ssl-cert-reqs",
        "--cert-reqs",
        default=S,
        help="client certificates: 0 none (default), 1 optional, 2 required",
    )
    g.add_argument(
        "--ssl-ciphers",
        "--ciphers",
        default=S,
        help="OpenSSL cipher string (default: Python's defaults)",
    )
    g = p.add_argument_group("application")
    g.add_argument(
        "--interface",
        default=S,
        choices=_choices(Interface),
        help="how to call APP (default: detect)",
    )
    g.add_argument(
        "--datagram-app",
        default=S,
        metavar="MODULE:ATTR",
        help="the app for the udp:// binds (an asyncio.DatagramProtocol subclass or factory) "
        "when APP serves the TCP ones; with udp:// binds only, APP itself is the datagram app",
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
    g.add_argument(
        "--factory",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="APP is a callable that returns the app (called once per worker)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=S,
        help="WSGI apps: app threads per worker (default 8); ASGI and the other "
        "interfaces run on the event loop and ignore it",
    )
    g.add_argument(
        "--chdir",
        default=S,
        metavar="DIR",
        help="change to DIR before anything else (so the app, --app-dir's default '.' and "
        "other relative paths are found there), as gunicorn's --chdir",
    )
    g.add_argument(
        "--pythonpath",
        action="append",
        default=S,
        metavar="DIRS",
        help="comma-separated folders put first on the import path (gunicorn's), repeatable",
    )
    g.add_argument(
        "-e",
        "--env",
        dest="env",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="set this variable for the server and every worker, over the environment and "
        "--env-file (gunicorn's -e), repeatable",
    )
    g.add_argument(
        "--env-file",
        default=S,
        metavar="PATH",
        help="KEY=VALUE lines put into the environment of each worker before the import "
        "(variables already set win)",
    )
    g = p.add_argument_group("process manager")
    g.add_argument(
        "-w",
        "--workers",
        type=int,
        default=S,
        help="workers for --pm static (default: usable CPUs)",
    )
    g.add_argument(
        "--cpu-affinity",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="pin each worker to one CPU: slot i to the i-th CPU the server may use, "
        "round-robin (nginx's worker_cpu_affinity auto; default off)",
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
        "--limit-max-requests",
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
        "-t",
        "--timeout",
        type=float,
        default=S,
        help="kill a worker whose event loop is stuck this long (default 30; 0 = off)",
    )
    g.add_argument(
        "--graceful-timeout",
        "--timeout-graceful-shutdown",
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
        "--keep-alive",
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
        "--proxy-protocol",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="every connection starts with a HAProxy PROXY header (v1 or v2) from a peer in "
        "--forwarded-allow-ips, naming the real client; with --ssl-certfile the TLS "
        "handshake follows the header (default off)",
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
    g.add_argument(
        "--limit-request-field-size",
        "--limit-request-field_size",  # (gunicorn's spelling)
        type=int,
        default=S,
        help="default 8190 bytes",
    )
    g.add_argument(
        "--header",
        dest="headers",
        action="append",
        default=S,
        metavar="NAME:VALUE",
        help="add this header to every HTTP response, repeatable",
    )
    g = p.add_argument_group("WebSocket (ASGI apps; needs the websockets package)")
    g.add_argument(
        "--ws",
        default=S,
        choices=_choices(WebSocketKind),
        help="auto (default): serve WebSocket upgrades with the websockets package if "
        "installed; none: hand upgrade requests to the app as plain HTTP",
    )
    g.add_argument(
        "--ws-max-size",
        type=int,
        default=S,
        help="largest incoming message in bytes; a larger one closes with 1009 (default 16777216)",
    )
    g.add_argument(
        "--ws-max-queue",
        type=int,
        default=S,
        help="incoming messages buffered for the app before reading pauses (default 32)",
    )
    g.add_argument(
        "--ws-ping-interval",
        type=float,
        default=S,
        help="seconds between pings to each client (default 20; 0 = off)",
    )
    g.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=S,
        help="close a connection whose pong does not come within this long (default 20)",
    )
    g.add_argument(
        "--ws-per-message-deflate",
        nargs="?",
        const=True,
        type=_bool_arg,
        default=S,
        metavar="BOOL",
        help="offer the permessage-deflate compression extension (default true)",
    )
    g.add_argument(
        "--no-ws-per-message-deflate",
        dest="ws_per_message_deflate",
        action="store_false",
        default=S,
        help="same as --ws-per-message-deflate false",
    )
    g = p.add_argument_group("operation")
    g.add_argument(
        "--config",
        dest="config_file",
        default=S,
        metavar="FILE.toml",
        help="read options from a TOML file (keys as the long flags)",
    )
    g.add_argument(
        "-p", "--pid", dest="pid_file", default=S, metavar="FILE", help="write the master pid"
    )
    g.add_argument("--control", default=S, metavar="PATH", help="control socket for `status`")
    g.add_argument(
        "--metrics",
        default=S,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, from the master "
        "(needs reuseport[metrics]); also /status, /healthz, /readyz",
    )
    g.add_argument(
        "--upgrade-timeout",
        type=float,
        default=S,
        help="SIGUSR2: seconds the new master gets to be ready before it is stopped and the "
        "running one keeps serving (default 60)",
    )
    g.add_argument(
        "--check-config",
        action="store_true",
        default=S,
        help="check the settings and import the app, bind nothing, then exit (0 ok, 2 bad "
        "settings, 4 the app does not load)",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        default=S,
        help="print the effective settings as TOML, with where each came from (flag, "
        "environment, file, default), then exit",
    )
    g.add_argument("-u", "--user", default=S, help="run workers as this user")
    g.add_argument("-g", "--group", default=S, help="run workers as this group")
    g.add_argument("-n", "--name", dest="proc_name", default=S, help="name shown in process titles")
    g = p.add_argument_group("logging")
    g.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="log every request (default off; on when --access-logfile is given)",
    )
    g.add_argument(
        "--access-logfile",
        default=S,
        metavar="PATH",
        help="write the access log to PATH ('-': stderr); turns the access log on",
    )
    g.add_argument(
        "--access-log-format",
        "--access-logformat",
        default=S,
        metavar="FORMAT",
        help="gunicorn's atoms, e.g. '%%(h)s %%(l)s %%(u)s %%(t)s \"%%(r)s\" %%(s)s %%(b)s' "
        "(see the README for the list)",
    )
    g.add_argument(
        "--error-logfile",
        "--log-file",
        default=S,
        metavar="PATH",
        help="write the server's log to PATH instead of stderr ('-': stderr)",
    )
    g.add_argument(
        "--capture-output",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="send stdout and stderr of the master and every worker (the app's print(), "
        "tracebacks, C libraries) into --error-logfile (default off)",
    )
    g.add_argument(
        "--log-config",
        default=S,
        metavar="FILE",
        help="logging configuration: dictConfig as .json or .toml, else an INI fileConfig",
    )
    g.add_argument(
        "--log-level",
        default=S,
        choices=list(LOG_LEVELS),
        help="default info; trace is below debug",
    )
    g = p.add_argument_group("development")
    g.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="rolling reload when the app's files change (needs reuseport[reload])",
    )
    g.add_argument(
        "--reload-delay",
        type=float,
        default=S,
        metavar="SECONDS",
        help="changes within this window make one reload (default 0.4)",
    )
    g.add_argument(
        "--reload-dir",
        dest="reload_dirs",
        action="append",
        default=S,
        metavar="DIR",
        help="folder to watch, repeatable (default --app-dir)",
    )
    g.add_argument(
        "--reload-include",
        dest="reload_includes",
        action="append",
        default=S,
        metavar="GLOB",
        help="file names that count as changes, repeatable (*.py always does)",
    )
    g.add_argument(
        "--reload-exclude",
        dest="reload_excludes",
        action="append",
        default=S,
        metavar="GLOB",
        help="names to ignore, repeatable (hidden files, .py[cod], .sw.*, ~* always are; "
        "hidden and virtualenv folders too)",
    )


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
        name = _ALIASES.get(name, name)
        if name not in names and name not in _BIND_KEYS:
            near = _nearest(name, _option_keys())
            hint = f" (did you mean {near.replace('_', '-')!r}?)" if near else ""
            raise ConfigError(f"config file {path!r}: unknown option {key!r}{hint}")
        if name in _LIST_FIELDS and isinstance(value, str):
            value = [value]
        values[name] = tuple(value) if isinstance(value, list) else value
    return _bind_aliases(values)


def _option_keys() -> list[str]:
    """Every key a file or a variable may name, as a field or an alias (``snake_case``)."""
    return sorted({*Config.field_names(), *_ALIASES, *_BIND_KEYS})


def _nearest(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to a misspelled ``word`` (``difflib``), or None."""
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


# Fields that take several values: a list in TOML, comma-separated in a variable.
_LIST_FIELDS = frozenset({"binds", "headers", "reload_dirs", "reload_includes", "reload_excludes"})


def _bind_aliases(values: dict[str, object]) -> dict[str, object]:
    """Turn host/port (uvicorn), uds and fd keys of one source into that source's binds."""
    found = {key: values.pop(key) for key in _BIND_KEYS if key in values}
    if not found:
        return values
    binds = list(cast("tuple[object, ...]", values.get("binds", ())))
    if "host" in found or "port" in found:
        default = parse_tcp_bind(DEFAULT_BIND)
        host = str(found.get("host", default.host))
        port = found.get("port", default.port)
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        binds.append(f"{host}:{port}")
    if "uds" in found:
        binds.append(f"unix:{found['uds']}")
    if "fd" in found:
        binds.append(f"fd://{found['fd']}")
    values["binds"] = tuple(binds)
    return values


_ENV_PREFIX = "REUSEPORT_"
# REUSEPORT_* variables that are not options (never warned about as unknown).
_NOT_OPTIONS = frozenset({"REUSEPORT_CONFIG", upgrade.ENV})
# What a variable's text must look like, by Config annotation, for the error message.
_TEXT_KINDS = {"int": "an integer", "int | None": "an integer", "float": "a number"}


def _env_annotations() -> dict[str, str]:
    annotations = {f: str(t) for f, t in Config.__annotations__.items()}
    annotations.update({"host": "str", "port": "int", "uds": "str", "fd": "int"})
    return annotations


def _env_field(key: str) -> str:
    """The field (or bind key) a ``REUSEPORT_*`` variable names, known or not."""
    raw = key[len(_ENV_PREFIX) :].lower()
    return _ALIASES.get(raw, raw)


def _from_env(
    environ: dict[str, str] | os._Environ[str], names: dict[str, str] | None = None
) -> dict[str, object]:
    """The options the ``REUSEPORT_*`` variables set; ``names`` learns field -> variable(s).

    A value that does not parse is a ``ConfigError`` naming the variable.
    Unknown variables are skipped here (``env_warnings`` names them).
    """
    annotations = _env_annotations()
    values: dict[str, object] = {}
    for key, text in environ.items():
        if not key.startswith(_ENV_PREFIX) or key in _NOT_OPTIONS:
            continue
        name = _env_field(key)
        if name not in annotations:
            continue
        kind = annotations[name]
        try:
            if name in _LIST_FIELDS:
                values[name] = tuple(part.strip() for part in text.split(",") if part.strip())
            elif name == "uds_mode":
                values[name] = text  # octal: Config parses it
            elif kind in _FROM_TEXT:
                values[name] = _FROM_TEXT[kind](text)
            else:
                values[name] = text
        except ValueError:
            raise ConfigError(
                f"{key}: cannot parse {text!r} as {_TEXT_KINDS.get(kind, kind)}"
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if names is not None:
            field = "binds" if name in _BIND_KEYS else name
            names[field] = f"{names[field]}, {key}" if field in names else key
    return _bind_aliases(values)


def env_warnings(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """One warning per ``REUSEPORT_*`` variable that is no option (a typo, most likely).

    Such a variable is ignored, not refused: the environment is shared with
    other programs.  The warning names the nearest valid variable.
    """
    annotations = _env_annotations()
    # Compared without the prefix, which every candidate shares.
    valid = sorted({*_option_keys(), *(k[len(_ENV_PREFIX) :].lower() for k in _NOT_OPTIONS)})
    warnings = []
    for key in sorted(environ):
        if not key.startswith(_ENV_PREFIX) or key in _NOT_OPTIONS:
            continue
        if _env_field(key) in annotations:
            continue
        near = _nearest(key[len(_ENV_PREFIX) :].lower(), valid)
        hint = (
            f"did you mean {_ENV_PREFIX}{near.upper()}?"
            if near
            else "a variable is REUSEPORT_ and a long flag's name, e.g. REUSEPORT_WORKERS"
        )
        warnings.append(f"{key} is not a reuseport setting, ignored ({hint})")
    return warnings


# argparse destinations that are actions of ``serve``, not settings.
_ACTIONS = ("command", "func", "check_config", "print_config")


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Merge file < environment < command line into a validated Config."""
    return build_config_with_sources(args, environ)[0]


def build_config_with_sources(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> tuple[Config, dict[str, str]]:
    """The validated Config, and where each field that is not a default came from.

    Sources read ``flag``, ``environment (REUSEPORT_X)`` or ``file (PATH)``.  A
    value the Config refuses is named by where it came from (the variable,
    or the file and key) when it came from the environment or the file.
    """
    env = os.environ if environ is None else environ
    given = dict(vars(args))
    for key in _ACTIONS:
        given.pop(key, None)
    config_file = given.pop("config_file", None) or env.get("REUSEPORT_CONFIG")
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    origins: dict[str, str] = {}  # field: the variable or file key that set it
    if config_file:
        layer = _from_toml(config_file)
        values.update(layer)
        sources.update(dict.fromkeys(layer, f"file ({config_file})"))
        origins.update(
            {name: f"config file {config_file!r}, {name.replace('_', '-')}" for name in layer}
        )
    names: dict[str, str] = {}
    layer = _from_env(env, names)
    values.update(layer)
    sources.update({key: f"environment ({names.get(key, '?')})" for key in layer})
    origins.update(names)
    for name in _LIST_FIELDS:
        if name in given:
            given[name] = tuple(given[name])
    layer = _bind_aliases(given)
    values.update(layer)
    sources.update(dict.fromkeys(layer, "flag"))
    for name in layer:
        origins.pop(name, None)
    try:
        return Config(**values), sources  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"bad configuration: {exc}") from None
    except ConfigError as exc:
        origin = _culprit(exc, values, origins)
        if origin is None:
            raise
        raise ConfigError(f"{origin}: {exc}") from None


def _culprit(exc: ConfigError, values: dict[str, object], origins: dict[str, str]) -> str | None:
    """Which variable or file key alone gives the error ``exc`` (None: a flag, or several)."""
    for name, origin in origins.items():
        try:
            Config(**{name: values[name]})  # type: ignore[arg-type]
        except ConfigError as alone:
            if str(alone) == str(exc):
                return origin
        except TypeError:
            continue
    return None


def apply_cpu_limit(
    config: Config, sources: dict[str, str], *, limit: float | None = None, usable: int = 0
) -> tuple[Config, str | None]:
    """Lower the default ``--workers`` to the cgroup CPU limit; returns the log line.

    Only a default changes (a value from any source stays); ``limit`` and
    ``usable`` are read from the system when not given.  ``sources`` gets
    ``workers`` with the reason.
    """
    if "workers" in sources:
        return config, None
    count, why = cgroups.default_workers(
        usable or usable_cpus(), limit if limit is not None else cgroups.cpu_limit()
    )
    sources["workers"] = f"default: {why}"
    if count != config.workers:
        config = dataclasses.replace(config, workers=count)
    return config, f"{count} worker{'s' if count != 1 else ''}: {why}"


def _with_activation(config: Config) -> tuple[Config, tuple[FdBind, ...]]:
    """Add the sockets of systemd socket activation, when there are some for us.

    They replace the default bind; binds that were given are served too.
    """
    activated = systemd_binds(os.environ, os.getpid())
    if not activated:
        return config, ()
    default = Config.__dataclass_fields__["binds"].default
    given = () if config.binds == default else config.binds
    return dataclasses.replace(config, binds=(*given, *activated)), activated


def resolve_mode(config: Config) -> tuple[Mode, str]:
    """The effective mode and why; unix:/fd binds have one accept queue by nature."""
    shared_only = config.shared_only_binds
    if shared_only:
        names = ", ".join(str(b) for b in shared_only)
        has = "has" if len(shared_only) == 1 else "have"
        if config.mode is Mode.REUSEPORT and not config.ip_binds:
            raise ConfigError(
                f"--mode reuseport needs a TCP bind (or a udp:// one): {names} {has} one "
                "accept queue by nature, which every worker shares; use --mode shared (or auto)"
            )
        if config.mode is Mode.AUTO:
            return Mode.SHARED, (
                f"chosen by --mode auto: {names} {has} one accept queue by nature "
                "(--mode reuseport gives the TCP binds per-worker sockets beside it)"
            )
        if config.mode is Mode.REUSEPORT:
            return Mode.REUSEPORT, (
                f"chosen by --mode; {names} "
                f"{'is a shared socket' if len(shared_only) == 1 else 'are shared sockets'} "
                "every worker accepts from"
            )
    if config.mode is Mode.AUTO:
        from .probe import quick_recommendation

        mode, reason = quick_recommendation()
        return mode, f"chosen by --mode auto: {reason}"
    if config.mode is Mode.REUSEPORT and not sys.platform.startswith("linux"):
        log.warning(
            "SO_REUSEPORT on %s does not balance connections across workers; "
            "--mode shared is the better choice here",
            sys.platform,
        )
    return config.mode, "chosen by --mode"


def check_startup(config: Config) -> None:
    """What must hold before the master binds anything (raises ``ConfigError``)."""
    from . import envfile, reloader, tls
    from .http.access import compile_format

    if config.tls and config.interface is Interface.SOCKET:
        raise ConfigError(
            "--ssl-certfile cannot apply to --interface socket: a socket app serves the raw "
            "listening socket itself; give its server the certificate instead"
        )
    tls.check(config)
    if config.metrics is not None:
        from .metrics import check_available

        check_available()
    if config.env_file is not None:
        envfile.load(config.env_file)
    if config.access_log_format is not None:
        compile_format(config.access_log_format)
    reloader.check(config)


def _cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "print_config", False):
        return _print_config(args)
    # A master started by another one's SIGUSR2 gets its sockets from it.
    handover = upgrade.take(os.environ, os.getppid())
    config, sources = build_config_with_sources(args)
    config, workers_line = apply_cpu_limit(config, sources)
    # --env: set before anything reads the environment; workers inherit it.
    os.environ.update(config.environment)
    if config.chdir is not None:
        # As gunicorn: first, so the other relative paths (and --app-dir's
        # default ".") mean the same inside that folder.
        upgrade.change_dir(config.chdir)
    # --pythonpath: first on sys.path (after --chdir, as gunicorn); workers inherit it.
    sys.path[:0] = [os.path.abspath(folder) for folder in config.pythonpath]
    activated: tuple[FdBind, ...] = ()
    if handover is None:
        config, activated = _with_activation(config)
    logs.setup(config)
    if workers_line is not None:
        log.info("%s", workers_line)
    for warning in env_warnings(os.environ):
        log.warning("%s", warning)
    if activated:
        log.info(
            "systemd socket activation: %s",
            ", ".join(f"{b} [{b.name}]" if b.name else str(b) for b in activated),
        )
    if getattr(args, "check_config", False):
        return _check_config(config)
    check_startup(config)
    if handover is not None:
        config, mode, reason = _inherit(config, handover)
    else:
        mode, reason = resolve_mode(config)
    from .arbiter import Arbiter

    return Arbiter(config, mode, reason, handover=handover, signals=signals.take_early()).run()


def _inherit(config: Config, handover: upgrade.Handover) -> tuple[Config, Mode, str]:
    """The binds and the mode of the master this one replaces (SIGUSR2): it keeps its sockets.

    A change of either in the settings needs a restart; it is logged, not applied.
    """
    holdings = handover.holdings

    def named(binds: Sequence[object]) -> list[str]:
        # Inherited fds (systemd's) are not in the new master's settings.
        return sorted(str(b) for b in binds if not str(b).startswith("fd://"))

    if named(config.binds) != named(handover.configured):
        log.warning(
            "The binds changed since the running server started (%s, now %s); an upgrade "
            "keeps the running server's sockets: restart it to change them",
            ", ".join(named(handover.configured)),
            ", ".join(named(config.binds)),
        )
    if config.mode not in (Mode.AUTO, holdings.mode):
        log.warning(
            "--mode %s: an upgrade keeps the running server's %s mode; restart to change it",
            config.mode.value,
            holdings.mode.value,
        )
    config = dataclasses.replace(config, binds=holdings.binds)
    return config, holdings.mode, f"kept from the master this one replaces (pid {handover.master})"


def _check_config(config: Config) -> int:
    """``--check-config``: every start-up check, and the app import; nothing is bound."""
    from . import apps, envfile
    from .apps.base import WorkerContext
    from .worker import resolve_user

    check_startup(config)
    resolve_user(config.user, config.group)
    if config.mode is not Mode.AUTO or config.shared_only_binds:
        mode_text, _reason = resolve_mode(config)
        mode = mode_text.value
    else:
        mode = "auto (decided by a kernel probe at start)"
    envfile.apply(config.env_file)
    # What a worker would serve its sockets with, built the way a worker builds
    # it (nothing starts: adapters do their work in startup/serve).
    udp = [isinstance(b, BindAddress) and b.udp for b in config.binds]
    ctx = WorkerContext(
        pid=os.getpid(),
        slot=0,
        generation=0,
        mode=Mode.SHARED if config.mode is Mode.SHARED else Mode.REUSEPORT,
        config=config,
    )
    hosting = apps.host(config, ctx, streams=not all(udp), datagrams=any(udp))
    label = config.app_label
    if config.datagram_app is not None and any(udp):
        label += f" with --datagram-app {config.datagram_app}"
    print(
        f"reuseport: configuration OK: {label} is {hosting.interface} "
        f"({hosting.reason}); "
        f"{config.workers} workers ({config.pm.value} pool), mode {mode}; "
        f"binds {', '.join(str(b) for b in config.binds)} (nothing was bound)"
    )
    return ExitCode.OK


_HIDDEN = frozenset({"ssl_keyfile_password"})


def _toml_value(name: str, value: object) -> str:
    if name == "uds_mode" and isinstance(value, int):
        return json.dumps(f"{value:o}")
    if name == "headers" and isinstance(value, tuple):
        return json.dumps([f"{k}: {v}" for k, v in value])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.IntEnum):
        return str(int(value))
    if isinstance(value, enum.Enum):
        return json.dumps(value.value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value("", item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_settings(config: Config, sources: dict[str, str]) -> str:
    """The effective settings as a TOML ``[serve]`` table, each line saying where it came from."""
    lines = [
        f"# reuseport {__version__}: the effective settings of `reuseport serve`",
        "# after each value: where it came from (flag, environment, file or default)",
        "[serve]",
    ]
    for name in Config.field_names():
        value = getattr(config, name)
        source = sources.get(name, "default")
        if value is None:
            lines.append(f"# {name} is not set  # {source}")
        elif name in _HIDDEN:
            lines.append(f"# {name} = (hidden)  # {source}")
        else:
            lines.append(f"{name} = {_toml_value(name, value)}  # {source}")
    return "\n".join(lines)


def _print_config(args: argparse.Namespace) -> int:
    config, sources = build_config_with_sources(args)
    config, _line = apply_cpu_limit(config, sources)
    config, activated = _with_activation(config)
    if activated:
        sources["binds"] = f"{sources.get('binds', 'default')} + systemd socket activation"
    print(render_settings(config, sources))
    return ExitCode.OK


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
    # ``serve``: the master's signal handlers first (see signals.py); handed
    # over to the arbiter, or put back if the server never starts.
    words = list(sys.argv[1:] if argv is None else argv)
    serving = signals.serving(words)
    if serving:
        signals.install_early()
    try:
        if serving:
            # A uvicorn or gunicorn flag we have no equivalent for: say what
            # to do instead, not argparse's bare "unrecognized arguments".
            at = words.index("serve") + 1
            words[at:] = without_no_ops(words[at:])
            flag = first_peer_flag(words[at:])
            if flag is not None:
                print(f"reuseport: error: {peer_flag_message(flag)}", file=sys.stderr)
                return ExitCode.USAGE
        parser = make_parser()
        args = parser.parse_args(words)
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
        except BrokenPipeError:
            # The reader went away (`reuseport status | head`): nothing left to
            # say to it.  Point stdout at /dev/null so the interpreter's final
            # flush does not fail again on the closed pipe.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return ExitCode.OK
    finally:
        early = signals.take_early()
        if early is not None:
            early.restore()
