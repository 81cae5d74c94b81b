"""Errors a user can cause, and the exit codes they map to.

Rules: every error raised on purpose derives from ``ReuseportError`` and says
whose fault it is through its class (configuration, bind, application,
platform).  Its message says what failed *and* what to do about it; the CLI
prints ``str(error)`` and exits with ``error.exit_code``, never a traceback.
Anything else escaping is a bug in reuseport.
"""

from __future__ import annotations

import enum
import errno

__all__ = [
    "AppLoadError",
    "BindError",
    "BootError",
    "ConfigError",
    "ControlError",
    "ExitCode",
    "PlatformError",
    "PortGuardError",
    "ReuseportError",
    "errno_name",
]


class ExitCode(enum.IntEnum):
    """Process exit codes of the master and of workers.

    Workers exit with ``BOOT_ERROR`` or ``APP_LOAD_ERROR`` when they cannot
    start; the master treats those as fatal (it halts with the same code
    instead of respawning forever).
    """

    OK = 0
    ERROR = 1
    USAGE = 2
    BIND_ERROR = 3
    APP_LOAD_ERROR = 4
    BOOT_ERROR = 5
    PLATFORM_ERROR = 6
    INTERRUPTED = 130


class ReuseportError(Exception):
    """Base of every error reuseport raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(ReuseportError):
    """A flag, config file entry or environment variable is wrong."""

    exit_code = ExitCode.USAGE


class BindError(ReuseportError):
    """A listening socket could not be created (address in use, bad address, ...)."""

    exit_code = ExitCode.BIND_ERROR


class PortGuardError(BindError):
    """Another process already listens on the address we were asked to join."""


class AppLoadError(ReuseportError):
    """The application named as ``module:attribute`` could not be loaded."""

    exit_code = ExitCode.APP_LOAD_ERROR


class BootError(ReuseportError):
    """A worker could not start serving (e.g. the app's lifespan startup failed)."""

    exit_code = ExitCode.BOOT_ERROR


class ControlError(ReuseportError):
    """The control socket could not be reached, or its answer made no sense."""


class PlatformError(ReuseportError):
    """The operating system lacks something the requested mode needs."""

    exit_code = ExitCode.PLATFORM_ERROR


def errno_name(exc: OSError) -> str:
    """The symbolic name of ``exc``'s errno (``EADDRINUSE``), for messages and logs.

    An errno this platform has no name for shows as ``errno 123``; an OSError
    without one (``TimeoutError`` from a socket timeout) as its class name.
    """
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
