"""Where the log goes: stderr or files, a logging config file, and reopening files.

Rules: ``setup(config)`` runs once, in the master, before anything forks;
workers inherit the handlers (and their open files) by fork, so a bad path
is a start-up error of the master (``ConfigError``, exit 2), never a worker
that cannot boot.  Nothing here runs in a signal handler: the arbiter and
the worker call ``reopen()`` from their loops when SIGUSR1 arrives.

Why SIGUSR1 reopens: logrotate (without ``copytruncate``) renames the file
and signals the server; every process then closes its descriptor of the old
file and opens the path again, so the next line lands in a new file.  The
master relays the signal to its workers, because each process holds its own
descriptor.  Every ``logging.FileHandler`` logging knows of is reopened,
ours and those a ``--log-config`` file made.

The loggers: ``reuseport`` and its children carry the server's own lines
(``--error-logfile``, default stderr); ``reuseport.access`` carries one line
per request when the access log is on, to ``--access-logfile`` if given (then
it stops propagating), else wherever the server's log goes.  ``TRACE`` (5)
sits below DEBUG for ``--log-level trace``.

``--capture-output`` points file descriptors 1 and 2 of the master at the
``--error-logfile`` file (appending) once its sockets are bound (the arbiter
calls ``capture_output`` then, so a start-up error still reaches the
terminal).  Whatever does not go through logging lands there too: the app's
``print()``, tracebacks printed by hand, faulthandler dumps, C libraries
writing to stderr.  Workers inherit the two descriptors by fork; on SIGUSR1
every process points them at the path again, like the handlers.  stdout is
made line-buffered so a ``print()`` reaches the file when it is made, not
when a block fills.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.config
import os
import sys
import tomllib
from typing import Any

from .config import Config
from .errors import ConfigError, errno_name

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMAT",
    "TRACE",
    "ReopenableFileHandler",
    "install_trace_level",
    "level_number",
    "reopen",
    "setup",
]

TRACE = 5
ACCESS_LOGGER = "reuseport.access"
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(message)s"

log = logging.getLogger("reuseport.logs")

# The file stdout and stderr are pointed at (--capture-output); None: left alone.
_captured: str | None = None


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file is opened at once (so a bad path fails at start)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=False)


def install_trace_level() -> None:
    logging.addLevelName(TRACE, "TRACE")


def level_number(name: str) -> int:
    """``--log-level`` as a logging level number (``trace`` is 5)."""
    if name.lower() == "trace":
        return TRACE
    return logging.getLevelNamesMapping()[name.upper()]


def _open_handler(path: str, flag: str) -> logging.Handler:
    if path == "-":
        return logging.StreamHandler(sys.stderr)
    try:
        return ReopenableFileHandler(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot open {flag} {path!r}: {exc.strerror} ({errno_name(exc)}); "
            "check that the folder exists and is writable"
        ) from None


def _load_config_file(path: str) -> None:
    """Apply ``--log-config``: dictConfig from .json/.toml, fileConfig (INI) otherwise."""
    lower = path.lower()
    try:
        if lower.endswith((".json", ".toml")):
            with open(path, "rb") as fh:
                data: Any = json.load(fh) if lower.endswith(".json") else tomllib.load(fh)
            if not isinstance(data, dict):
                raise ValueError("the file must hold one mapping (a dictConfig)")
            data.setdefault("version", 1)
            # Our loggers exist already; a config that does not name them must
            # not silence them.
            data.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(data)
        else:
            with open(path, encoding="utf-8") as fh:
                logging.config.fileConfig(fh, disable_existing_loggers=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot read --log-config {path!r}: {exc.strerror} ({errno_name(exc)})"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"--log-config {path!r} is not a usable logging configuration: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def setup(config: Config) -> None:
    """Configure logging for ``reuseport serve`` (once, in the master, before forking)."""
    install_trace_level()
    root = logging.getLogger()
    if config.log_config is not None:
        # The file decides levels, handlers and formats.
        _load_config_file(config.log_config)
    else:
        handler = _open_handler(config.error_logfile or "-", "--error-logfile")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level_number(config.log_level))
    access = logging.getLogger(ACCESS_LOGGER)
    if config.access_logfile is not None:
        handler = _open_handler(config.access_logfile, "--access-logfile")
        # A format of the user's own is the whole line, as with gunicorn; the
        # built-in line gets the time and pid in front, like the server's log.
        own = config.access_log_format is not None
        handler.setFormatter(logging.Formatter("%(message)s" if own else LOG_FORMAT))
        access.addHandler(handler)
        access.propagate = False
        access.setLevel(logging.INFO)


def _point_stdio_at(path: str) -> None:
    """Make file descriptors 1 and 2 append to ``path``; raises ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):  # (a closed or odd stream)
                    stream.flush()
        os.dup2(fd, 1)  # (dup2 makes them inheritable, as 1 and 2 should be)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def capture_output(path: str) -> None:
    """``--capture-output``: stdout and stderr append to ``path`` from now on."""
    global _captured
    try:
        _point_stdio_at(path)
    except OSError as exc:
        raise ConfigError(
            f"--capture-output cannot open {path!r}: {exc.strerror} ({errno_name(exc)}); "
            "check that the folder exists and is writable"
        ) from None
    _captured = path
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)


def _file_handlers() -> list[logging.FileHandler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            loggers.append(logger)
    seen: dict[int, logging.FileHandler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                seen[id(handler)] = handler
    return list(seen.values())


def reopen() -> int:
    """Reopen every log file (SIGUSR1); returns how many.  Never raises.

    A file that cannot be opened again keeps its old descriptor, and the
    error goes to the log (which may be that very file).  With
    ``--capture-output``, stdout and stderr are pointed at the path again
    too (not counted: it is the error log's file).
    """
    count = 0
    if _captured is not None:
        try:
            _point_stdio_at(_captured)
        except OSError as exc:
            log.error(
                "SIGUSR1: cannot reopen %s for stdout and stderr (%s); "
                "they still write to the old file",
                _captured,
                errno_name(exc),
            )
    for handler in _file_handlers():
        handler.acquire()
        try:
            old = handler.stream
            try:
                handler.stream = handler._open()
            except OSError as exc:
                failed: OSError | None = exc
            else:
                failed = None
                count += 1
                if old is not None:
                    old.close()
        finally:
            handler.release()
        if failed is not None:
            log.error(
                "SIGUSR1: cannot reopen log file %s (%s); still writing to the old file",
                handler.baseFilename,
                errno_name(failed),
            )
    return count
