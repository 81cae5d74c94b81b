"""What every HTTP connection of one app in one worker shares.

Rules: ``HttpServer`` is the protocol factory handed to
``loop.create_server``; it holds the app, the limits and settings read once
from ``Config``, the live connections (for the tick and the graceful drain),
the Tasks of suspended requests, and the server-wide response header lines.
One timer per worker, the tick, refreshes the Date header (it must change
every second) and checks every connection's deadline, so no request arms a
timer of its own.  ``start()`` before serving, ``stop()`` after draining.

The URL scheme of every scope comes from here, one place: ``scheme``
(``http``/``https``) and ``ws_scheme`` (``ws``/``wss``), by whether the
worker serves TLS (``secure``).  A trusted proxy's X-Forwarded-Proto may
still override it per request.  ``access_log`` is an ``AccessLog`` while the
access log is on, else None.

``draining`` is the drain signal apps can use: an ``asyncio.Event`` set when
the worker begins its graceful stop, offered in every HTTP and WebSocket
scope as ``scope["extensions"]["reuseport.drain"]["event"]``.  ``upgrades``
decides what becomes of an upgrade request (``websocket_upgrade.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..config import Config
from ..connections import Connections, WorkerStats
from ._wire import DateCache
from .access import AccessLog
from .cycle import ASGIApp, RequestCycle
from .framing import DefaultHeaders
from .protocol import HttpProtocol
from .proxy import TrustedProxies
from .websocket_upgrade import Upgrades

__all__ = ["HttpServer", "schemes"]

_MAX_TICK = 1.0  # the Date header must change every second
_MIN_TICK = 0.02


def schemes(secure: bool) -> tuple[str, str]:
    """The (HTTP, WebSocket) URL schemes of a connection, by whether it is TLS."""
    return ("https", "wss") if secure else ("http", "ws")


def extra_header_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    """``--header`` pairs as header lines (Config checked the names and values)."""
    return b"".join(f"{name.lower()}: {value}\r\n".encode("latin-1") for name, value in headers)


class HttpServer:
    """What every connection of one app in one worker shares (see the module docstring)."""

    # What one request is to the app: the ASGI cycle here, the WSGI one in
    # ``wsgi.WsgiServer`` (the connection builds it from the parsed parts).
    cycle_class: type[RequestCycle] = RequestCycle

    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        stats: WorkerStats,
        state: dict[str, Any] | None = None,
        *,
        secure: bool = False,
    ) -> None:
        self.app = app
        self.secure = secure
        self.scheme, self.ws_scheme = schemes(secure)
        self.config = config
        self.stats = stats
        self.state: dict[str, Any] = state if state is not None else {}
        self.loop = asyncio.get_running_loop()
        self.connections = Connections()
        self.live: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.active = 0  # app calls running, for limit_concurrency
        self.limit_concurrency = config.limit_concurrency
        self.keep_alive_timeout = config.timeout_keep_alive
        self.header_timeout = config.header_read_timeout
        self.body_timeout = config.body_read_timeout
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("utf-8")
        self.trust = TrustedProxies(config.forwarded_allow_ips)
        # Plain addresses only (the default): a set test, not a Python call.
        self.trusted_hosts = None if self.trust.all or self.trust.networks else self.trust.hosts
        self.trust_local = "127.0.0.1" in self.trust  # for Unix socket peers
        self.access_log = AccessLog(config.access_log_format) if config.access_log else None
        self.limit_request_line = config.limit_request_line
        self.limit_request_fields = config.limit_request_fields
        self.limit_request_field_size = config.limit_request_field_size
        self.max_header_bytes = config.limit_request_line + config.limit_request_fields * (
            config.limit_request_field_size + 4
        )
        # A read longer than this is parsed in pieces this long, so a line
        # inside one piece cannot break a line limit (see protocol.py).
        self.piece_size = min(config.limit_request_line, config.limit_request_field_size)
        self._date = DateCache()
        # A --header named server replaces ours, as with uvicorn.
        own_server = any(name.lower() == "server" for name, _ in config.headers)
        self.defaults = DefaultHeaders(
            b"server: reuseport\r\n" if config.server_header and not own_server else b"",
            extra=extra_header_lines(config.headers),
        )
        timeouts = (self.keep_alive_timeout, self.header_timeout, self.body_timeout)
        positive = [t for t in timeouts if t > 0]
        self._tick_interval = max(_MIN_TICK, min([_MAX_TICK, *(t / 4 for t in positive)]))
        self._tick_handle: asyncio.TimerHandle | None = None
        self.draining = asyncio.Event()
        self.drain_extension: dict[str, Any] = {"event": self.draining}
        self.http_extensions: dict[str, Any] = {"reuseport.drain": self.drain_extension}
        self.asgi_info: dict[str, str] = {"version": "3.0", "spec_version": "2.4"}
        self.upgrades = Upgrades(self, config)
        self._refresh()

    def start(self) -> None:
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)

    def stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def __call__(self) -> HttpProtocol:
        """Protocol factory for ``loop.create_server``."""
        return HttpProtocol(self)

    def _refresh(self) -> None:
        if self.config.date_header:
            self._date.refresh(time.time())
            self.defaults.set_date(self._date.header)

    def _tick(self) -> None:
        self._refresh()
        now = self.loop.time()
        for conn in list(self.live):
            deadline = conn.deadline
            if deadline is not None and deadline <= now:
                conn.on_deadline()
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)
