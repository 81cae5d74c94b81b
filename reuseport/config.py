"""Configuration: frozen records, parsing and validation.

Rules: no I/O here (no sockets, no files, no environment; reading our own
CPU affinity for the default worker count is the one read of process state).
Every value a user can type is parsed by a function in this module that
raises ``ConfigError`` naming the value and the fix.  Durations are float seconds named
``*_timeout`` / ``*_interval``.  The CLI (``cli.py``) gathers values from the
command line, the TOML file and ``REUSEPORT_*`` variables and hands them to
``Config`` as keyword arguments.

Binds come in four kinds (``BindKind``): a TCP or a UDP address
(``BindAddress``, whose ``transport`` says which: the only kinds a
SO_REUSEPORT group can form on), a Unix socket path (``UnixBind``,
``unix:/path``) and an inherited listening fd (``FdBind``, ``fd://N``, also
what systemd socket activation hands over).  The last two have one accept
queue by nature: the master holds them as shared sockets in either mode.
``parse_bind`` reads them all; ``Bind`` is their union.

A server whose binds include both stream sockets (TCP, unix, fd) and UDP
ones runs two apps: APP serves the stream binds and ``--datagram-app`` the
UDP ones (the built-in demo serves both).  With UDP binds only, APP (or
``--datagram-app``) is the datagram app.  ``Config`` refuses the
combinations that cannot work when it can tell without importing the app
(an explicit ``--interface``); the worker refuses the rest at boot.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TypeVar

from .errors import ConfigError

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_RELOAD_EXCLUDES",
    "DEFAULT_RELOAD_INCLUDES",
    "DEFAULT_THREADS",
    "LOG_LEVELS",
    "SECONDS",
    "Bind",
    "BindAddress",
    "BindKind",
    "CertReqs",
    "Config",
    "FdBind",
    "Interface",
    "Lifespan",
    "LoopKind",
    "Mode",
    "ProcessManager",
    "SteeringKind",
    "Transport",
    "UnixBind",
    "WebSocketKind",
    "cpu_for_slot",
    "parse_bind",
    "parse_header",
    "parse_octal_mode",
    "parse_tcp_bind",
    "usable_cpus",
]

SECONDS = 1.0
_E = TypeVar("_E", bound=enum.Enum)
DEFAULT_BIND = "127.0.0.1:8000"
# --threads: a WSGI worker's app threads.  They share one GIL, so threads buy
# concurrency for apps that wait (database, upstream HTTP), not CPU: workers
# (one per CPU) give that.  Eight lets eight requests per worker wait on I/O at
# once, the order of gunicorn's advice (2-4 x cores in all) and of mod_wsgi's
# 15 and waitress's 4, while a CPU-bound app does not thrash on the GIL.
DEFAULT_THREADS = 8
# The levels --log-level takes, lowest last; ``trace`` (5) sits below debug.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# uvicorn's defaults for --reload: what counts as a change of the app's code.
DEFAULT_RELOAD_INCLUDES = ("*.py",)
DEFAULT_RELOAD_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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
    WSGI = "wsgi"  # PEP 3333, on a thread pool per worker (--threads)
    DATAGRAM = "datagram"  # an asyncio.DatagramProtocol subclass or factory (udp:// binds)


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
    """How a reuseport group's new connections are spread (see steering.py, loadboard.py)."""

    AUTO = "auto"  # p2c where the kernel lets us load eBPF, else load
    P2C = "p2c"  # eBPF: per connection, the less loaded of two hashed workers
    LOAD = "load"  # cBPF: the master samples the queues and skips workers that fall behind
    HASH = "hash"  # the kernel's hash; only a draining slot is steered away from


class WebSocketKind(enum.Enum):
    """``--ws``: which library speaks WebSocket for ASGI apps (uvicorn's flag)."""

    AUTO = "auto"  # websockets if installed, else none (and say so once per worker)
    NONE = "none"  # upgrade requests are plain HTTP requests to the app
    WEBSOCKETS = "websockets"  # the sans-IO protocol of the websockets package


class Lifespan(enum.Enum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class BindKind(enum.Enum):
    TCP = "tcp"  # HOST:PORT: per-worker SO_REUSEPORT sockets or one shared socket
    UDP = "udp"  # udp://HOST:PORT: the same, with datagram sockets
    UNIX = "unix"  # unix:/path: always one shared socket
    FD = "fd"  # fd://N: an inherited listening socket, always shared


class Transport(enum.Enum):
    """What an IP bind carries: a SO_REUSEPORT group forms on either."""

    TCP = "tcp"  # stream sockets; a group forms at listen()
    UDP = "udp"  # datagram sockets; a group forms at bind()


class CertReqs(enum.IntEnum):
    """``--ssl-cert-reqs``: the ``ssl.CERT_*`` values uvicorn takes (0, 1, 2)."""

    NONE = 0  # no client certificate asked for
    OPTIONAL = 1  # asked for, checked against --ssl-ca-certs if sent
    REQUIRED = 2  # the handshake fails without a valid client certificate


@dataclass(frozen=True, kw_only=True, slots=True)
class BindAddress:
    """One ``HOST:PORT`` to listen on (TCP) or receive on (UDP).  ``port`` 0 means "pick one"."""

    host: str
    port: int
    family: socket.AddressFamily
    transport: Transport = Transport.TCP

    shared_only = False  # may have a SO_REUSEPORT socket per worker

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            where = f"[{self.host}]:{self.port}"
        else:
            where = f"{self.host}:{self.port}"
        return f"udp://{where}" if self.udp else where

    @property
    def kind(self) -> BindKind:
        return BindKind.UDP if self.udp else BindKind.TCP

    @property
    def udp(self) -> bool:
        return self.transport is Transport.UDP

    @property
    def socktype(self) -> socket.SocketKind:
        return socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM

    def with_port(self, port: int) -> BindAddress:
        return BindAddress(host=self.host, port=port, family=self.family, transport=self.transport)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, kw_only=True, slots=True)
class UnixBind:
    """A Unix stream socket at ``path`` (``-b unix:/path`` or ``--uds PATH``)."""

    path: str

    kind = BindKind.UNIX
    shared_only = True  # one accept queue by nature

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, kw_only=True, slots=True)
class FdBind:
    """An inherited listening socket (``-b fd://N``, ``--fd N``, systemd activation).

    ``name`` is systemd's ``LISTEN_FDNAMES`` entry for it, when there is one.
    """

    fd: int
    name: str | None = None

    kind = BindKind.FD
    shared_only = True  # one accept queue by nature

    def __str__(self) -> str:
        return f"fd://{self.fd}"


Bind = BindAddress | UnixBind | FdBind


def parse_bind(text: str) -> Bind:
    """Parse one ``--bind``: ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``udp://HOST:PORT``,
    ``unix:PATH`` or ``fd://N``."""
    raw = text.strip()
    if raw.lower().startswith("udp://"):
        address = raw[len("udp://") :]
        if not address:
            raise ConfigError(
                f"cannot parse bind {text!r}: expected udp://HOST:PORT, e.g. udp://127.0.0.1:9000"
            )
        tcp = parse_tcp_bind(address, scheme="udp://")
        return BindAddress(host=tcp.host, port=tcp.port, family=tcp.family, transport=Transport.UDP)
    if raw.startswith("unix:"):
        path = raw[len("unix:") :]
        if not path:
            raise ConfigError(f"cannot parse bind {text!r}: expected unix:/path/to/socket")
        if "\0" in path:
            raise ConfigError(f"cannot parse bind {text!r}: a socket path cannot contain NUL")
        # sun_path holds 108 bytes with the terminating NUL.
        if len(os.fsencode(path)) > 107:
            raise ConfigError(
                f"cannot parse bind {text!r}: a Unix socket path is at most 107 bytes; "
                "choose a shorter path"
            )
        return UnixBind(path=path)
    if raw.startswith("fd://"):
        digits = raw[len("fd://") :]
        if not (digits.isascii() and digits.isdigit()):
            raise ConfigError(f"cannot parse bind {text!r}: expected fd://N with N a number")
        return FdBind(fd=int(digits))
    return parse_tcp_bind(text)


def parse_tcp_bind(text: str, *, scheme: str = "") -> BindAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 interfaces).

    Host names are not resolved (that would be I/O); ``localhost`` is accepted
    as a spelling of 127.0.0.1.  ``scheme`` is what the user typed before the
    address (``udp://``), for the messages.
    """
    raw = text.strip()
    if scheme:
        hint = (
            f"expected {scheme}HOST:PORT, e.g. {scheme}127.0.0.1:9000, {scheme}0.0.0.0:9000 "
            f"or {scheme}[::1]:9000"
        )
        text = scheme + text
    else:
        hint = (
            "expected HOST:PORT, e.g. 127.0.0.1:8000, 0.0.0.0:8000 or [::1]:8000 "
            "(or udp://HOST:PORT, unix:/path, fd://N)"
        )
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
                f"cannot parse bind {text!r}: put IPv6 addresses in brackets, "
                f"e.g. {scheme}[::1]:8000"
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


def parse_octal_mode(value: object, name: str = "--uds-mode") -> int:
    """A file mode given as octal text (``660``, ``0o660``, ``0660``) or as an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not text or not all(c in "01234567" for c in text):
            raise ConfigError(f"invalid {name} {value!r}: expected an octal mode such as 660")
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"invalid {name} {value!r}: expected an octal mode between 0 and 777")
    return mode


def parse_header(value: object) -> tuple[str, str]:
    """``--header NAME:VALUE`` as (name, value); the value may be empty."""
    if isinstance(value, tuple | list) and len(value) == 2:
        name, text = str(value[0]), str(value[1])
    else:
        name, sep, text = str(value).partition(":")
        if not sep:
            raise ConfigError(f"invalid --header {value!r}: expected NAME:VALUE, e.g. X-Frame:DENY")
    name, text = name.strip(), text.strip()
    if not _HEADER_NAME.match(name):
        raise ConfigError(
            f"invalid --header {value!r}: {name!r} is not a header name (letters, digits "
            "and !#$%&'*+.^_`|~- only)"
        )
    if any(c in text for c in "\r\n\0") or not text.isascii():
        raise ConfigError(
            f"invalid --header {value!r}: the value must be ASCII without CR, LF or NUL"
        )
    return name, text


def _cert_reqs(value: object) -> CertReqs:
    if isinstance(value, CertReqs):
        return value
    text = str(value).strip().lower().removeprefix("cert_")
    names = {"none": 0, "optional": 1, "required": 2}
    number = names.get(text, text)
    try:
        return CertReqs(int(number))
    except ValueError:
        raise ConfigError(
            f"invalid --ssl-cert-reqs {value!r}: choose 0 (none), 1 (optional) or 2 (required)"
        ) from None


def _enum_value(kind: type[_E], value: object, name: str) -> _E:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"invalid {name} {value!r}: choose one of {choices}") from None


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def cpu_for_slot(slot: int, cpus: Iterable[int]) -> int:
    """``--cpu-affinity``: the CPU worker slot ``slot`` runs on, of the CPUs ``cpus``.

    Round-robin over the sorted CPUs, so slot i gets the i-th one (nginx's
    ``worker_cpu_affinity auto``), and slots beyond the CPU count share.
    """
    ordered = sorted(cpus)
    if not ordered:
        raise ValueError("no CPU to run on")
    return ordered[slot % len(ordered)]


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
    binds: tuple[Bind, ...] = (parse_tcp_bind(DEFAULT_BIND),)
    workers: int = field(default_factory=usable_cpus)
    mode: Mode = Mode.AUTO
    interface: Interface = Interface.AUTO
    loop: LoopKind = LoopKind.AUTO
    backlog: int = 2048
    steering: SteeringKind = SteeringKind.AUTO
    rescue: bool = True  # reuseport mode: siblings serve a stalled worker's queue
    uds_mode: int = 0o666  # permissions of a unix: socket file (uvicorn's)

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
    cpu_affinity: bool = False  # worker slot i runs on the i-th CPU of the master's mask
    timeout: float = 30 * SECONDS  # heartbeat; 0 = off
    graceful_timeout: float = 30 * SECONDS

    # Operation.
    pid_file: str | None = None
    control: str | None = None
    metrics: BindAddress | None = None  # --metrics HOST:PORT: the master serves /metrics there
    upgrade_timeout: float = 60 * SECONDS  # SIGUSR2: the new master must be ready within this
    user: str | None = None
    group: str | None = None
    access_log: bool = False
    access_logfile: str | None = None  # "-" is stderr; a path turns the access log on
    access_log_format: str | None = None  # gunicorn's atoms; None: the built-in line
    error_logfile: str | None = None  # "-" is stderr (the default)
    log_config: str | None = None  # logging config: .json/.toml dictConfig, else INI
    log_level: str = "info"
    capture_output: bool = False  # stdout and stderr (fds 1, 2) go to --error-logfile too
    proc_name: str | None = None

    # Development.
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()  # empty: --app-dir
    reload_includes: tuple[str, ...] = ()  # added to DEFAULT_RELOAD_INCLUDES
    reload_excludes: tuple[str, ...] = ()  # added to DEFAULT_RELOAD_EXCLUDES
    reload_delay: float = 0.4 * SECONDS  # changes within this window make one reload

    # Application loading.
    factory: bool = False  # APP is a callable that returns the app
    threads: int = DEFAULT_THREADS  # WSGI apps: app threads per worker
    datagram_app: str | None = None  # serves the udp:// binds when APP serves the others
    env_file: str | None = None  # dotenv file loaded in each worker before the import
    env: tuple[str, ...] = ()  # KEY=VALUE put into the master's environment at start (-e)
    chdir: str | None = None  # the master changes to this folder first (gunicorn's --chdir)
    pythonpath: tuple[str, ...] = ()  # folders put first on sys.path (gunicorn's --pythonpath)

    # TLS (uvicorn's names).
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: CertReqs = CertReqs.NONE
    ssl_ciphers: str | None = None  # None: Python's secure defaults

    # HTTP / ASGI.
    root_path: str = ""
    lifespan: Lifespan = Lifespan.AUTO
    limit_concurrency: int | None = None
    timeout_keep_alive: float = 5 * SECONDS
    header_read_timeout: float = 10 * SECONDS
    body_read_timeout: float = 30 * SECONDS  # 0 = off
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    proxy_protocol: bool = False  # connections start with a PROXY header (v1/v2)
    server_header: bool = True
    date_header: bool = True
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    headers: tuple[tuple[str, str], ...] = ()  # --header: added to every response

    # WebSocket (uvicorn's names and defaults).
    ws: WebSocketKind = WebSocketKind.AUTO
    ws_max_size: int = 16 * 1024 * 1024  # bytes in one incoming message
    ws_max_queue: int = 32  # incoming messages buffered for the app before reading pauses
    ws_ping_interval: float = 20 * SECONDS  # 0 = no pings
    ws_ping_timeout: float = 20 * SECONDS  # no pong within this long: the peer is gone
    ws_per_message_deflate: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place
        set_(self, "mode", _enum_value(Mode, self.mode, "mode"))
        set_(self, "interface", _enum_value(Interface, self.interface, "interface"))
        set_(self, "loop", _enum_value(LoopKind, self.loop, "loop"))
        set_(self, "pm", _enum_value(ProcessManager, self.pm, "pm"))
        set_(self, "lifespan", _enum_value(Lifespan, self.lifespan, "lifespan"))
        set_(self, "steering", _enum_value(SteeringKind, self.steering, "steering"))
        set_(self, "ws", _enum_value(WebSocketKind, self.ws, "ws"))
        binds = tuple(
            b if isinstance(b, BindAddress | UnixBind | FdBind) else parse_bind(str(b))
            for b in self.binds
        )
        if not binds:
            raise ConfigError("no --bind given: pass at least one HOST:PORT")
        keys = [_bind_key(b) for b in binds if not (isinstance(b, BindAddress) and b.port == 0)]
        if len(set(keys)) != len(keys):
            raise ConfigError("the same --bind address is given twice: remove the duplicate")
        set_(self, "binds", binds)
        if self.metrics is not None and not isinstance(self.metrics, BindAddress):
            set_(self, "metrics", _metrics_bind(self.metrics))
        set_(self, "uds_mode", parse_octal_mode(self.uds_mode))
        set_(self, "ssl_cert_reqs", _cert_reqs(self.ssl_cert_reqs))
        set_(self, "headers", tuple(parse_header(h) for h in self.headers))
        paths = self.pythonpath
        if isinstance(paths, str):  # gunicorn's spelling: one comma-separated list
            paths = (paths,)
        set_(
            self,
            "pythonpath",
            tuple(p.strip() for t in paths for p in str(t).split(",") if p.strip()),
        )
        env = (self.env,) if isinstance(self.env, str) else tuple(map(str, self.env))
        for item in env:
            key, sep, _value = item.partition("=")
            if not sep or not _ENV_KEY.fullmatch(key):
                raise ConfigError(
                    f"invalid --env {item!r}: expected KEY=VALUE, KEY made of letters, "
                    "digits and _ (not starting with a digit)"
                )
        set_(self, "env", env)
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            value = getattr(self, name)
            set_(self, name, (value,) if isinstance(value, str) else tuple(map(str, value)))
        self._validate_tls()
        self._validate_proxy_protocol()
        if self.access_logfile is not None:
            set_(self, "access_log", True)  # giving the file turns it on, as with gunicorn
        if self.capture_output and self.error_logfile in (None, "-"):
            raise ConfigError(
                "--capture-output sends stdout and stderr (the app's print(), tracebacks, "
                "C libraries) into the --error-logfile file: give --error-logfile PATH too "
                "(without a file they stay on stderr and stdout)"
            )
        if self.access_log_format is not None and not self.access_log_format.strip():
            raise ConfigError("--access-log-format is empty: give a format or leave it out")
        if isinstance(self.forwarded_allow_ips, str):
            ips = tuple(p.strip() for p in self.forwarded_allow_ips.split(",") if p.strip())
            set_(self, "forwarded_allow_ips", ips)
        if self.app is not None and self.app.count(":") != 1:
            raise ConfigError(
                f"cannot parse app {self.app!r}: expected MODULE:ATTRIBUTE, e.g. myproject.web:app"
            )
        self._validate_datagram_app()
        self._check_positive("workers", self.workers, minimum=1)
        self._check_positive("backlog", self.backlog, minimum=1)
        self._check_positive("max_spawn_rate", self.max_spawn_rate, minimum=1)
        self._check_positive("threads", self.threads, minimum=1)
        self._check_positive("max_requests", self.max_requests, minimum=0)
        self._check_positive("max_requests_jitter", self.max_requests_jitter, minimum=0)
        for name in (
            "idle_timeout",
            "timeout",
            "graceful_timeout",
            "timeout_keep_alive",
            "header_read_timeout",
            "ws_ping_interval",
            "ws_ping_timeout",
            "body_read_timeout",
            "upgrade_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"invalid {_flag(name)} {value!r}: expected seconds >= 0")
        delay = self.reload_delay
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0.05 <= delay <= 60:
            raise ConfigError(
                f"invalid --reload-delay {delay!r}: expected seconds from 0.05 to 60 "
                "(the file watcher's resolution is 50 ms)"
            )
        if self.limit_concurrency is not None:
            self._check_positive("limit_concurrency", self.limit_concurrency, minimum=1)
        for name in (
            "limit_request_line",
            "limit_request_fields",
            "limit_request_field_size",
            "ws_max_size",
            "ws_max_queue",
        ):
            self._check_positive(name, getattr(self, name), minimum=1)
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"invalid --log-level {self.log_level!r}: choose {', '.join(LOG_LEVELS)}"
            )
        set_(self, "log_level", self.log_level.lower())
        self._validate_pool()

    def _validate_datagram_app(self) -> None:
        """Which app serves which binds (see the module docstring); refuse what cannot work."""
        app = self.datagram_app
        if app is not None and app.count(":") != 1:
            raise ConfigError(
                f"cannot parse --datagram-app {app!r}: expected MODULE:ATTRIBUTE, e.g. dns:Resolver"
            )
        udp, stream = bool(self.udp_binds), bool(self.stream_binds)
        if app is not None:
            if not udp:
                raise ConfigError(
                    "--datagram-app serves udp:// binds and none is given: add one "
                    "(-b udp://HOST:PORT) or leave --datagram-app out"
                )
            if not stream and self.app is not None:
                raise ConfigError(
                    "with udp:// binds only, APP would serve nothing beside --datagram-app: "
                    "give just one of them"
                )
            if self.interface is Interface.DATAGRAM:
                raise ConfigError(
                    "--interface datagram says APP is a datagram app, and --datagram-app "
                    "names another: --interface describes APP only; leave one out"
                )
            return
        if self.interface is Interface.DATAGRAM:
            if not udp:
                raise ConfigError(
                    "--interface datagram needs a udp:// bind (-b udp://HOST:PORT): "
                    "a datagram app receives on UDP sockets only"
                )
            if stream:
                names = ", ".join(str(b) for b in self.stream_binds)
                raise ConfigError(
                    f"--interface datagram: APP serves udp:// binds only, and {names} "
                    f"{'is a stream bind' if len(self.stream_binds) == 1 else 'are stream binds'}"
                    ". Serve it with another APP and pass this one as --datagram-app, "
                    "or bind udp:// addresses only"
                )
            return
        if udp and self.app is not None and stream and self.interface is not Interface.SOCKET:
            raise ConfigError(
                "a server with stream binds and udp:// binds runs two apps: APP for the stream "
                "binds and --datagram-app MODULE:ATTR (an asyncio.DatagramProtocol subclass "
                "or factory) for the UDP ones"
            )
        if udp and self.interface in (Interface.ASGI, Interface.STREAM, Interface.PROTOCOL):
            raise ConfigError(
                f"--interface {self.interface.value} cannot serve udp:// binds: pass "
                "--datagram-app MODULE:ATTR for them, or --interface datagram if APP is an "
                "asyncio.DatagramProtocol"
            )

    def _validate_tls(self) -> None:
        others = {
            "--ssl-keyfile": self.ssl_keyfile,
            "--ssl-keyfile-password": self.ssl_keyfile_password,
            "--ssl-ca-certs": self.ssl_ca_certs,
            "--ssl-ciphers": self.ssl_ciphers,
        }
        if self.ssl_certfile is None:
            given = [flag for flag, value in others.items() if value is not None]
            if self.ssl_cert_reqs is not CertReqs.NONE:
                given.append("--ssl-cert-reqs")
            if given:
                raise ConfigError(
                    f"{', '.join(given)} given without --ssl-certfile: TLS needs a certificate"
                )
        if self.ssl_cert_reqs is not CertReqs.NONE and self.ssl_ca_certs is None:
            raise ConfigError(
                "--ssl-cert-reqs asks for client certificates: give --ssl-ca-certs "
                "(the CA file they are checked against)"
            )

    def _validate_proxy_protocol(self) -> None:
        """What ``--proxy-protocol`` cannot be combined with (apps detected later: ``apps``)."""
        if not self.proxy_protocol:
            return
        if self.interface in (Interface.STREAM, Interface.PROTOCOL, Interface.SOCKET):
            raise ConfigError(
                f"--proxy-protocol cannot apply to an --interface {self.interface.value} app: "
                "it reads its connections itself, so the PROXY header would reach it as data; "
                "serve an ASGI or WSGI app, or leave --proxy-protocol out"
            )

    @property
    def environment(self) -> dict[str, str]:
        """``--env``: the variables to set, the last of a repeated KEY winning."""
        return dict(item.partition("=")[::2] for item in self.env)

    @property
    def tls(self) -> bool:
        """Serve TLS (HTTPS) on every bind."""
        return self.ssl_certfile is not None

    @property
    def effective_reload_includes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.reload_includes, *DEFAULT_RELOAD_INCLUDES)))

    @property
    def effective_reload_excludes(self) -> tuple[str, ...]:
        # A pattern the user includes is not excluded by a default (as uvicorn).
        defaults = [p for p in DEFAULT_RELOAD_EXCLUDES if p not in self.reload_includes]
        return tuple(dict.fromkeys((*self.reload_excludes, *defaults)))

    @property
    def tcp_binds(self) -> tuple[BindAddress, ...]:
        return tuple(b for b in self.binds if isinstance(b, BindAddress) and not b.udp)

    @property
    def udp_binds(self) -> tuple[BindAddress, ...]:
        return tuple(b for b in self.binds if isinstance(b, BindAddress) and b.udp)

    @property
    def ip_binds(self) -> tuple[BindAddress, ...]:
        """TCP and UDP binds: those a SO_REUSEPORT group can form on."""
        return tuple(b for b in self.binds if isinstance(b, BindAddress))

    @property
    def stream_binds(self) -> tuple[Bind, ...]:
        """Binds served with connections (TCP, unix, fd): what APP serves beside UDP."""
        return tuple(b for b in self.binds if not (isinstance(b, BindAddress) and b.udp))

    @property
    def shared_only_binds(self) -> tuple[UnixBind | FdBind, ...]:
        """Binds with one accept queue by nature (unix sockets, inherited fds)."""
        return tuple(b for b in self.binds if not isinstance(b, BindAddress))

    @staticmethod
    def _check_positive(name: str, value: object, *, minimum: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"invalid {_flag(name)} {value!r}: expected a whole number >= {minimum}"
            )

    def _validate_pool(self) -> None:
        if self.cpu_affinity and not hasattr(os, "sched_setaffinity"):
            raise ConfigError(
                "--cpu-affinity needs sched_setaffinity, which this platform lacks (Linux "
                "has it): leave the flag out here"
            )
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


def _metrics_bind(value: object) -> BindAddress:
    """``--metrics HOST:PORT`` (a TCP address: Prometheus scrapes over HTTP)."""
    text = str(value)
    if text.startswith(("unix:", "fd://")):
        raise ConfigError(
            f"invalid --metrics {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9100 "
            "(Prometheus scrapes over TCP)"
        )
    try:
        return parse_tcp_bind(text)
    except ConfigError as exc:
        raise ConfigError(f"invalid --metrics: {exc}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bind_key(bind: Bind) -> tuple[object, ...]:
    if isinstance(bind, BindAddress):
        return (bind.transport.value, bind.host, bind.port)
    if isinstance(bind, UnixBind):
        return ("unix", bind.path)
    return ("fd", bind.fd)
