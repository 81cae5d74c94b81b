"""Configuration: frozen records, parsing and validation.

Rules: no I/O here (no sockets, no files, no environment; reading our own
CPU affinity for the default worker count is the one read of process state).
Every value a user can type is parsed by a function in this module that
raises ``ConfigError`` naming the value and the fix.  Durations are float seconds named
``*_timeout`` / ``*_interval``.  The CLI (``cli.py``) gathers values from the
command line, the TOML file and ``REUSEPORT_*`` variables and hands them to
``Config`` as keyword arguments.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
from dataclasses import dataclass, field, fields
from typing import TypeVar

from .errors import ConfigError

__all__ = [
    "DEFAULT_BIND",
    "SECONDS",
    "BindAddress",
    "Config",
    "Interface",
    "Lifespan",
    "LoopKind",
    "Mode",
    "ProcessManager",
    "SteeringKind",
    "parse_bind",
    "usable_cpus",
]

SECONDS = 1.0
_E = TypeVar("_E", bound=enum.Enum)
DEFAULT_BIND = "127.0.0.1:8000"


class Mode(enum.Enum):
    """How workers get their listening sockets."""

    AUTO = "auto"
    REUSEPORT = "reuseport"
    SHARED = "shared"


class Interface(enum.Enum):
    """What kind of callable the application is."""

    AUTO = "auto"
    ASGI = "asgi"
    STREAM = "stream"
    PROTOCOL = "protocol"
    SOCKET = "socket"


class LoopKind(enum.Enum):
    AUTO = "auto"
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class ProcessManager(enum.Enum):
    """php-fpm's ``pm`` setting."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    ONDEMAND = "ondemand"


class SteeringKind(enum.Enum):
    """How a reuseport group's new connections are spread (see steering.py)."""

    HASH = "hash"  # the kernel's hash; only a draining slot is steered away from
    LOAD = "load"  # also skip workers that fall behind or are not ready


class Lifespan(enum.Enum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, kw_only=True, slots=True)
class BindAddress:
    """One ``HOST:PORT`` to listen on.  ``port`` 0 means "pick one"."""

    host: str
    port: int
    family: socket.AddressFamily

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def with_port(self, port: int) -> BindAddress:
        return BindAddress(host=self.host, port=port, family=self.family)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)


def parse_bind(text: str) -> BindAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 interfaces).

    Host names are not resolved (that would be I/O); ``localhost`` is accepted
    as a spelling of 127.0.0.1.
    """
    raw = text.strip()
    hint = "expected HOST:PORT, e.g. 127.0.0.1:8000, 0.0.0.0:8000 or [::1]:8000"
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"cannot parse bind {text!r}: {hint}")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise ConfigError(f"cannot parse bind {text!r}: {hint}")
        if ":" in host:
            raise ConfigError(
                f"cannot parse bind {text!r}: put IPv6 addresses in brackets, e.g. [::1]:8000"
            )
        if host == "":
            host = "0.0.0.0"
        elif host == "localhost":
            host = "127.0.0.1"
    # int() alone would also take "8_000", " 80", "+80" and non-ASCII digits.
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"cannot parse bind {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"cannot parse bind {text!r}: port {port} is outside 0-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"cannot parse bind {text!r}: {host!r} is not an IP address "
            "(use a numeric address such as 127.0.0.1, 0.0.0.0, [::1] or [::])"
        ) from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return BindAddress(host=str(ip), port=port, family=family)


def _enum_value(kind: type[_E], value: object, name: str) -> _E:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"invalid {name} {value!r}: choose one of {choices}") from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1.

    The default worker count, and what the probe and the benchmark report.
    ``os.sched_getaffinity`` reads process state, not the outside world, so
    it is allowed here; off Linux it falls back to the online CPU count.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Everything ``reuseport serve`` needs, validated."""

    app: str | None = None
    app_dir: str = "."
    binds: tuple[BindAddress, ...] = (parse_bind(DEFAULT_BIND),)
    workers: int = field(default_factory=usable_cpus)
    mode: Mode = Mode.AUTO
    interface: Interface = Interface.AUTO
    loop: LoopKind = LoopKind.AUTO
    backlog: int = 2048
    steering: SteeringKind = SteeringKind.HASH

    # Process manager (php-fpm names in comments).
    pm: ProcessManager = ProcessManager.STATIC
    max_workers: int | None = None  # pm.max_children
    start_workers: int | None = None  # pm.start_servers
    min_spare: int | None = None  # pm.min_spare_servers
    max_spare: int | None = None  # pm.max_spare_servers
    idle_timeout: float = 10 * SECONDS  # pm.process_idle_timeout
    max_spawn_rate: int = 32  # pm.max_spawn_rate
    max_requests: int = 0  # pm.max_requests; 0 = never recycle
    max_requests_jitter: int = 0
    timeout: float = 30 * SECONDS  # heartbeat; 0 = off
    graceful_timeout: float = 30 * SECONDS

    # Operation.
    pid_file: str | None = None
    control: str | None = None
    user: str | None = None
    group: str | None = None
    access_log: bool = False
    log_level: str = "info"
    proc_name: str | None = None

    # HTTP / ASGI.
    root_path: str = ""
    lifespan: Lifespan = Lifespan.AUTO
    limit_concurrency: int | None = None
    timeout_keep_alive: float = 5 * SECONDS
    header_read_timeout: float = 10 * SECONDS
    body_read_timeout: float = 30 * SECONDS  # 0 = off
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    server_header: bool = True
    date_header: bool = True
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place
        set_(self, "mode", _enum_value(Mode, self.mode, "mode"))
        set_(self, "interface", _enum_value(Interface, self.interface, "interface"))
        set_(self, "loop", _enum_value(LoopKind, self.loop, "loop"))
        set_(self, "pm", _enum_value(ProcessManager, self.pm, "pm"))
        set_(self, "lifespan", _enum_value(Lifespan, self.lifespan, "lifespan"))
        set_(self, "steering", _enum_value(SteeringKind, self.steering, "steering"))
        binds = tuple(b if isinstance(b, BindAddress) else parse_bind(str(b)) for b in self.binds)
        if not binds:
            raise ConfigError("no --bind given: pass at least one HOST:PORT")
        if len({(b.host, b.port) for b in binds if b.port}) != len([b for b in binds if b.port]):
            raise ConfigError("the same --bind address is given twice: remove the duplicate")
        set_(self, "binds", binds)
        if isinstance(self.forwarded_allow_ips, str):
            ips = tuple(p.strip() for p in self.forwarded_allow_ips.split(",") if p.strip())
            set_(self, "forwarded_allow_ips", ips)
        if self.app is not None and self.app.count(":") != 1:
            raise ConfigError(
                f"cannot parse app {self.app!r}: expected MODULE:ATTRIBUTE, e.g. myproject.web:app"
            )
        self._check_positive("workers", self.workers, minimum=1)
        self._check_positive("backlog", self.backlog, minimum=1)
        self._check_positive("max_spawn_rate", self.max_spawn_rate, minimum=1)
        self._check_positive("max_requests", self.max_requests, minimum=0)
        self._check_positive("max_requests_jitter", self.max_requests_jitter, minimum=0)
        for name in (
            "idle_timeout",
            "timeout",
            "graceful_timeout",
            "timeout_keep_alive",
            "header_read_timeout",
            "body_read_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"invalid {_flag(name)} {value!r}: expected seconds >= 0")
        if self.limit_concurrency is not None:
            self._check_positive("limit_concurrency", self.limit_concurrency, minimum=1)
        for name in ("limit_request_line", "limit_request_fields", "limit_request_field_size"):
            self._check_positive(name, getattr(self, name), minimum=1)
        if self.log_level.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise ConfigError(
                f"invalid --log-level {self.log_level!r}: "
                "choose critical, error, warning, info or debug"
            )
        set_(self, "log_level", self.log_level.lower())
        self._validate_pool()

    @staticmethod
    def _check_positive(name: str, value: object, *, minimum: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"invalid {_flag(name)} {value!r}: expected a whole number >= {minimum}"
            )

    def _validate_pool(self) -> None:
        for name in ("max_workers", "start_workers", "min_spare", "max_spare"):
            value = getattr(self, name)
            if value is not None:
                self._check_positive(name, value, minimum=0 if name != "max_workers" else 1)
        if self.pm is ProcessManager.STATIC:
            if self.max_workers is not None and self.max_workers < self.workers:
                raise ConfigError(
                    f"--max-workers ({self.max_workers}) must not be below --workers "
                    f"({self.workers})"
                )
            return
        if self.max_workers is None:
            raise ConfigError(f"--pm {self.pm.value} needs --max-workers (the pool's upper bound)")
        if self.pm is ProcessManager.DYNAMIC:
            lo, hi = self.effective_min_spare, self.effective_max_spare
            start = self.effective_start_workers
            if lo > hi:
                raise ConfigError(f"--min-spare ({lo}) must not exceed --max-spare ({hi})")
            if hi > self.max_workers:
                raise ConfigError(
                    f"--max-spare ({hi}) must not exceed --max-workers ({self.max_workers})"
                )
            if not lo <= start <= self.max_workers:
                raise ConfigError(
                    f"--start-workers ({start}) must be between --min-spare ({lo}) "
                    f"and --max-workers ({self.max_workers})"
                )

    # Derived pool figures, with php-fpm's defaults.
    @property
    def effective_min_spare(self) -> int:
        return self.min_spare if self.min_spare is not None else 1

    @property
    def effective_max_spare(self) -> int:
        if self.max_spare is not None:
            return self.max_spare
        return max(self.effective_min_spare, min(self.max_workers or self.workers, 3))

    @property
    def effective_start_workers(self) -> int:
        if self.start_workers is not None:
            return self.start_workers
        lo, hi = self.effective_min_spare, self.effective_max_spare
        return lo + (hi - lo) // 2

    @property
    def pool_limit(self) -> int:
        """Most workers (slots) this configuration may ever run at once.

        A static pool may grow by SIGTTIN up to ``--max-workers``, which
        defaults to twice ``--workers``.
        """
        if self.max_workers is not None:
            return self.max_workers
        return 2 * self.workers

    @property
    def initial_workers(self) -> int:
        if self.pm is ProcessManager.STATIC:
            return self.workers
        if self.pm is ProcessManager.ONDEMAND:
            return 0
        return self.effective_start_workers

    @property
    def app_label(self) -> str:
        return self.app or "demo"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
