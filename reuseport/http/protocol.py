"""The HTTP/1.1 server protocol that hosts an ASGI 3 application.

Rules of this module:

* Parsing is httptools' job; this module only reacts to its callbacks.  All
  requests parsed from one read are queued; the app sees them strictly one at
  a time and responses go out in request order.  While a request is being
  answered and more are queued, reading is paused, so a pipelining client can
  make us hold at most one read's worth of requests.
* An app never runs inside a parser callback: requests start after
  ``feed_data`` returns, so a small body is already complete when the app
  first calls ``receive()``.  The first step of the app runs inline (see
  ``_eager``); a Task is made only if it suspends.
* The app's ``send()`` awaits while the transport is paused for writing, and
  reading pauses while more than ``HIGH_WATER`` body bytes wait for the app:
  a slow peer or a slow app never makes us buffer without bound.
* Timeouts are deadlines checked by the server's tick (one timer per worker,
  not one per request): header_read_timeout from the first byte of a request
  (or from accept) until its headers are complete, timeout_keep_alive while
  idle between requests.
* Graceful shutdown closes at once only connections idle between requests
  (they served one); a fresh connection's first request is on the way, so it
  is answered with ``Connection: close`` (or ended by the timeouts above).
* Nothing raised by the app or by a peer escapes into the event loop: app
  errors are logged on ``reuseport.http`` and answered with 500 (before the
  response started) or by closing the connection (after).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

from ..apps.base import Connections, ManagedConnection, WorkerStats
from ..config import Config
from ._eager import start_eager
from ._wire import DateCache, error_response, status_line

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "HttpProtocol",
    "HttpServer",
]

logger = logging.getLogger("reuseport.http")
access_logger = logging.getLogger("reuseport.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HIGH_WATER = 64 * 1024  # request body bytes buffered for the app before we pause reading
_MAX_TICK = 1.0  # the Date header must change every second
_MIN_TICK = 0.02

_IDLE, _HEADERS, _BODY = 0, 1, 2  # parser state of the message being received

_METHODS = {
    m.encode("ascii"): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_NO_BODY_STATUS = frozenset({204, 304, *range(100, 200)})
_REQUEST_SPECIAL = frozenset({b"expect", b"x-forwarded-for", b"x-forwarded-proto"})
_RESPONSE_SPECIAL = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"server", b"date"}
)
_LINGER = 2.0  # seconds we keep reading after an error response before closing
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT: Message = {"type": "http.disconnect"}
_LAST_CHUNK = b"0\r\n\r\n"


class ClientDisconnected(OSError):
    """``send()`` was called after the client went away (ASGI spec 2.4)."""


class _LimitExceeded(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Trust:
    """Which peers may set X-Forwarded-For / X-Forwarded-Proto."""

    __slots__ = ("all", "hosts", "networks")

    def __init__(self, entries: Iterable[str]) -> None:
        self.all = False
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == "*":
                self.all = True
            elif "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    logger.warning("ignoring forwarded_allow_ips entry %r: not a network", entry)
            else:
                self.hosts.add(entry)

    def __contains__(self, host: object) -> bool:
        if self.all or host in self.hosts:
            return True
        if not self.networks or not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


class HttpServer:
    """What every connection of one app in one worker shares.

    Owns the tick (Date header, deadlines), the live-connection set used for
    graceful drain, the Tasks of suspended requests, and the pre-encoded
    header prefix.  ``start()`` before serving, ``stop()`` after draining.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        stats: WorkerStats,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
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
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("utf-8")
        self.trust = _Trust(config.forwarded_allow_ips)
        self.access_log = config.access_log
        self.limit_request_line = config.limit_request_line
        self.limit_request_fields = config.limit_request_fields
        self.limit_request_field_size = config.limit_request_field_size
        self.max_header_bytes = config.limit_request_line + config.limit_request_fields * (
            config.limit_request_field_size + 4
        )
        self._date = DateCache()
        self.server_header = b"server: reuseport\r\n" if config.server_header else b""
        self.prefix = b""  # server + date header lines, refreshed by the tick
        self.date_header = b""
        positive = [t for t in (self.keep_alive_timeout, self.header_timeout) if t > 0]
        self._tick_interval = max(_MIN_TICK, min([_MAX_TICK, *(t / 4 for t in positive)]))
        self._tick_handle: asyncio.TimerHandle | None = None
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

    def error_response(self, status: int) -> bytes:
        return error_response(status, self.prefix)

    def _refresh(self) -> None:
        if self.config.date_header:
            self._date.refresh(time.time())
            self.date_header = self._date.header
        self.prefix = self.server_header + self.date_header

    def _tick(self) -> None:
        self._refresh()
        now = self.loop.time()
        for conn in list(self.live):
            deadline = conn.deadline
            if deadline is not None and deadline <= now:
                conn.on_deadline()
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)


class RequestCycle:
    """One request and its response; the ASGI ``receive``/``send`` pair."""

    __slots__ = (
        "app_close",
        "auto_length",
        "body",
        "body_size",
        "bytes_sent",
        "chunked",
        "complete",
        "disconnected",
        "expect_100",
        "head",
        "keep_alive",
        "length_left",
        "message_done",
        "pending_head",
        "proto",
        "request_delivered",
        "scope",
        "started",
        "status",
        "task",
        "waiter",
    )

    def __init__(self, proto: HttpProtocol, scope: Scope, keep_alive: bool, head: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.keep_alive = keep_alive
        self.head = head
        self.expect_100 = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.message_done = False
        self.request_delivered = False
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        self.complete = False
        self.pending_head: bytes | None = None
        self.status = 0
        self.chunked = False
        self.auto_length = False
        self.app_close = False
        self.length_left: int | None = None
        self.bytes_sent = 0
        self.task: asyncio.Task[None] | None = None

    # --- ASGI receive -------------------------------------------------------

    async def receive(self) -> Message:
        if self.expect_100:
            self.expect_100 = False
            if not self.started and not self.proto.closed:
                self.proto.transport.write(_CONTINUE)
        while True:
            if self.disconnected or self.complete:
                return _DISCONNECT
            if not self.request_delivered and (self.body or self.message_done):
                chunks = self.body
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.body = []
                size, self.body_size = self.body_size, 0
                more = not self.message_done
                if not more:
                    self.request_delivered = True
                if size > HIGH_WATER // 2:
                    self.proto.update_reading()
                return {"type": "http.request", "body": body, "more_body": more}
            waiter = self.proto.loop.create_future()
            self.waiter = waiter
            self.proto.update_reading()
            try:
                await waiter
            finally:
                self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- ASGI send ----------------------------------------------------------

    async def send(self, message: Message) -> None:
        proto = self.proto
        if proto.write_paused and not self.disconnected:
            await proto.drain()
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError(
                    "the ASGI app sent 'http.response.body' before 'http.response.start'"
                )
            if self.complete:
                raise RuntimeError(
                    "the ASGI app sent 'http.response.body' after the response was complete"
                )
            self._send_body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("the ASGI app sent 'http.response.start' twice")
            self._prepare_head(message["status"], message.get("headers", ()))
            self.status = message["status"]
            self.started = True
        elif kind == "http.response.trailers":
            # We do not offer the http.response.trailers extension, so an app
            # sending them is confused; the body (if complete) stands, but the
            # connection cannot be trusted for another request.
            logger.warning(
                "the ASGI app sent 'http.response.trailers', which reuseport does not "
                "support (the extension is not offered in the scope); closing the connection"
            )
            self.keep_alive = False
            if self.complete:
                proto.close()
        else:
            raise RuntimeError(f"the ASGI app sent an unexpected message type {kind!r}")

    def _prepare_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Encode the status line and the app's headers; framing comes later.

        The head is held back until the first body message (or until the app
        suspends) so that a small response leaves in one write, and so that a
        single final body can get a Content-Length instead of chunks.
        """
        proto = self.proto
        server = proto.server
        parts: list[bytes] = []
        has_server = has_date = app_close = False
        length: int | None = None
        chunked = False
        count = 0
        for name, value in headers:
            count += 1
            lname = name.lower()
            if lname in _RESPONSE_SPECIAL:
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lname == b"connection":
                    app_close = b"close" in value.lower()
                elif lname == b"server":
                    has_server = True
                else:
                    has_date = True
            parts += (name, b": ", value, b"\r\n")
        block = b"".join(parts)
        if block.count(b"\n") != count or block.count(b"\r") != count:
            raise RuntimeError(
                "the ASGI app sent a response header containing CR or LF; refusing to send it"
            )
        if app_close or proto.shutting_down or (self.expect_100 and not self.message_done):
            # (A client still waiting for "100 Continue" may or may not send
            # its body now: the connection is in an unknown state.)
            self.keep_alive = False
        self.app_close = app_close
        no_body = status in _NO_BODY_STATUS
        if no_body or length is not None:
            pass
        elif chunked:
            self.chunked = not self.head  # the app declared it; we frame the chunks
        else:
            self.auto_length = True
        self.length_left = None if no_body else length
        prefix = server.prefix
        if has_server or has_date:
            prefix = (b"" if has_server else server.server_header) + (
                b"" if has_date else server.date_header
            )
        self.pending_head = b"".join((status_line(status), prefix, block))

    def _end_head(self, head: bytes, length: int | None) -> bytes:
        """Add framing and connection headers; ``length`` is the whole body's if known."""
        http10 = self.scope["http_version"] == "1.0"
        if self.auto_length and self.head:
            # Answering HEAD: a non-empty body the app computed says how long
            # the GET answer would be; an empty one tells nothing.
            if length:
                head += b"content-length: %d\r\n" % length
        elif self.auto_length:
            if length is not None:
                head += b"content-length: %d\r\n" % length
            elif not http10:
                self.chunked = True
                head += b"transfer-encoding: chunked\r\n"
            else:
                self.keep_alive = False  # HTTP/1.0 stream: the close ends the body
        if not self.keep_alive:
            if not self.app_close:
                head += b"connection: close\r\n"
        elif http10:
            head += b"connection: keep-alive\r\n"
        return head + b"\r\n"

    def _send_body(self, body: bytes, more: bool) -> None:
        proto = self.proto
        head = self.pending_head
        status = self.status
        if head is not None:
            self.pending_head = None
            head = self._end_head(head, None if more else len(body))
        if self.head or status in _NO_BODY_STATUS:
            data = b""
        elif self.chunked:
            if body:
                data = b"%x\r\n%b\r\n" % (len(body), body)
                if not more:
                    data += _LAST_CHUNK
            else:
                data = b"" if more else _LAST_CHUNK
        else:
            data = body
            if self.length_left is not None:
                self.length_left -= len(body)
                if self.length_left < 0:
                    raise RuntimeError(
                        "the ASGI app sent more body bytes than its Content-Length header says"
                    )
        self.bytes_sent += len(body)
        if head is not None:
            proto.transport.write(head + data if data else head)
        elif data:
            proto.transport.write(data)
        if not more:
            if self.length_left and not self.head:
                logger.error(
                    "the ASGI app sent %d body bytes fewer than its Content-Length header "
                    "says; closing the connection",
                    self.length_left,
                )
                self.keep_alive = False
            self.complete = True
            proto.response_complete(self)

    def flush_head(self) -> None:
        """Send a head held back for joining once the app waits for something."""
        head = self.pending_head
        if head is None or self.disconnected:
            return
        self.pending_head = None
        self.proto.transport.write(self._end_head(head, None))

    # --- app lifecycle -------------------------------------------------------

    def app_done(self, exc: BaseException | None) -> None:
        proto = self.proto
        server = proto.server
        server.active -= 1
        task = self.task
        if task is not None:
            server.tasks.discard(task)
            self.task = None
        try:
            self._app_done(exc)
        except Exception:  # pragma: no cover - a bug here must not kill the loop
            logger.exception("reuseport bug while finishing a request")
            proto.abort()

    def _app_done(self, exc: BaseException | None) -> None:
        proto = self.proto
        if exc is None:
            if self.complete or self.disconnected:
                return
            if not self.started:
                logger.error("the ASGI app returned without sending a response")
                self._fail_before_start()
            else:
                logger.error("the ASGI app returned without completing its response")
                proto.close()
            return
        if self.disconnected or proto.closed:
            logger.debug("ASGI app ended with %r after the client went away", exc)
            return
        if isinstance(exc, asyncio.CancelledError):
            logger.debug("ASGI app was cancelled")
        else:
            logger.error("Exception in ASGI application", exc_info=exc)
        if self.complete:
            return  # the response was sent; the error came later (e.g. a background task)
        if not self.started:
            self._fail_before_start()
        else:
            proto.close()

    def _fail_before_start(self) -> None:
        self.started = True
        self.status = 500
        self.keep_alive = False
        self.proto.transport.write(self.proto.server.error_response(500))
        self.complete = True
        self.proto.response_complete(self)

    def client_gone(self) -> None:
        self.disconnected = True
        self.wake()


class HttpProtocol(asyncio.Protocol, ManagedConnection):
    """One client connection (see the module docstring for the rules)."""

    transport: asyncio.Transport

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.stats = server.stats
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self.trusted = False
        self.served = 0  # responses completed on this connection
        self.cycle: RequestCycle | None = None  # the request the app is answering
        self.queue: deque[RequestCycle] = deque()  # parsed, waiting their turn
        self.receiving: RequestCycle | None = None  # where parsed body bytes go
        self.closed = False
        self.shutting_down = False
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.deadline: float | None = None
        self._parse_state = _IDLE
        self._header_bytes = 0
        self._parser_dead = False
        self._pending_error = 0
        self._starting = False
        self._start_scheduled = False
        # Per-message parse state, reset by on_message_begin.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._xff: bytes | None = None
        self._xfp: bytes | None = None
        self._limit_status = 0

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.live.add(self)
        server.connections.add(self)
        stats = self.stats
        stats.connections += 1
        stats.accepted += 1
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
            self.trusted = self.client[0] in server.trust
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.sockname = (str(sock[0]), int(sock[1]))
        if server.header_timeout > 0:
            self.deadline = self.loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        server.live.discard(self)
        server.connections.discard(self)
        stats = self.stats
        stats.connections -= 1
        cycle = self.cycle
        if cycle is not None:
            if not cycle.complete:
                stats.in_flight -= 1
            cycle.client_gone()
        stats.in_flight -= len(self.queue)
        self.queue.clear()
        self.cycle = None
        self.receiving = None
        self.deadline = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._parser_dead or self.closed:
            return
        self._starting = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We speak no other protocol: the upgrade request was answered as
            # plain HTTP (a websocket-only route gives 404) and whatever follows
            # its headers is not HTTP, so the connection ends after the answer.
            self._parser_dead = True
            last = self.queue[-1] if self.queue else self.cycle
            if last is not None:
                last.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            status = self._limit_status or 400
            if not isinstance(exc.__context__, _LimitExceeded):
                logger.error("reuseport bug in a parser callback", exc_info=exc.__context__)
                status = 500
            self._fail(status)
        except httptools.HttpParserError as exc:
            logger.debug("malformed request from %s: %s", self.client, exc)
            self._fail(400)
        else:
            if self._parse_state == _HEADERS:
                self._header_bytes += len(data)
                if self._header_bytes > self.server.max_header_bytes:
                    self._fail(431)
        finally:
            self._starting = False
        self._start_queued()

    def eof_received(self) -> bool | None:
        # Treat a half-close as the client going away (as uvicorn does): that
        # is how long-polling and streaming apps learn of a disconnect early.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self.loop.create_future()
        await asyncio.shield(waiter)

    # --- ManagedConnection ---------------------------------------------------

    def shutdown(self) -> None:
        self.shutting_down = True
        # Only a connection idle *between* requests may be closed now (clients
        # retry a keep-alive connection closed under them).  One that has not
        # finished sending its first request was accepted moments ago and its
        # request is on the way: a connection-per-request client would see an
        # empty reply.  It gets its answer (with Connection: close), or the
        # header-read timeout / the graceful deadline ends it.
        if self.cycle is None and not self.queue and self.served > 0 and self._parse_state == _IDLE:
            self.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline = None
            self.transport.close()

    # --- timeouts ------------------------------------------------------------

    def on_deadline(self) -> None:
        self.deadline = None
        if self.closed:
            return
        logger.debug("closing idle or too slow connection from %s", self.client)
        self.close()

    # --- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._parse_state = _HEADERS
        self._header_bytes = 0
        self._url = b""
        self._headers = []
        self._expect = False
        self._xff = self._xfp = None
        timeout = self.server.header_timeout
        self.deadline = self.loop.time() + timeout if timeout > 0 else None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.limit_request_line:
            self._limit_status = 414
            raise _LimitExceeded(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parse_state != _HEADERS:
            return  # trailers of a chunked request body: not passed on
        server = self.server
        headers = self._headers
        if (
            len(headers) >= server.limit_request_fields
            or len(name) + len(value) > server.limit_request_field_size
        ):
            self._limit_status = 431
            raise _LimitExceeded(431)
        name = name.lower()
        headers.append((name, value))
        if name in _REQUEST_SPECIAL:
            if name == b"expect":
                self._expect = value.lower() == b"100-continue"
            elif name == b"x-forwarded-for":
                self._xff = value if self._xff is None else self._xff + b"," + value
            else:
                self._xfp = value

    def on_headers_complete(self) -> None:
        self._parse_state = _BODY
        self.deadline = None
        server = self.server
        parser = self.parser
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        if b"%" in raw_path:
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        else:
            path = raw_path.decode("utf-8", "replace")
        method_b = parser.get_method()
        method = _METHODS.get(method_b) or method_b.decode("ascii", "replace")
        version = parser.get_http_version()
        client = self.client
        scheme = "http"
        if self.trusted:
            if self._xfp is not None:
                proto = self._xfp.decode("latin-1").split(",")[-1].strip().lower()
                if proto in ("http", "https"):
                    scheme = proto
            if self._xff is not None:
                client = _forwarded_client(self._xff, server.trust, client)
        if server.root_path:
            path = server.root_path + path
            raw_path = server.root_path_bytes + raw_path
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": version,
            "server": self.sockname,
            "client": client,
            "scheme": scheme,
            "method": method,
            "root_path": server.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": server.state.copy(),
        }
        keep_alive = parser.should_keep_alive() and not self.shutting_down
        cycle = RequestCycle(self, scope, keep_alive, method == "HEAD")
        if self._expect and version == "1.1":
            cycle.expect_100 = True
        self.stats.in_flight += 1
        self.queue.append(cycle)
        self.receiving = cycle

    def on_body(self, body: bytes) -> None:
        cycle = self.receiving
        if cycle is None or cycle.complete or cycle.disconnected:
            return  # answered already: the rest of the body is read and dropped
        cycle.body.append(body)
        cycle.body_size += len(body)
        if cycle.waiter is not None:
            cycle.wake()

    def on_message_complete(self) -> None:
        self._parse_state = _IDLE
        cycle = self.receiving
        if cycle is None:
            return
        self.receiving = None
        cycle.message_done = True
        if cycle.complete:
            if cycle is self.cycle:
                self._finish(cycle)
        elif cycle.waiter is not None:
            cycle.wake()

    # --- request flow --------------------------------------------------------

    def _start_queued(self) -> None:
        """Run queued requests, one at a time, while each finishes inline."""
        self._start_scheduled = False
        if self._starting:
            return
        self._starting = True
        try:
            while self.cycle is None and self.queue and not self.closed:
                cycle = self.cycle = self.queue.popleft()
                self._run(cycle)
        finally:
            self._starting = False
        if self.cycle is None and not self.queue and self._pending_error and not self.closed:
            self._send_error(self._pending_error)
            return
        self.update_reading()

    def _run(self, cycle: RequestCycle) -> None:
        server = self.server
        limit = server.limit_concurrency
        if limit is not None and server.active >= limit:
            cycle.started = cycle.complete = True
            cycle.status = 503
            cycle.keep_alive = False
            self.transport.write(server.error_response(503))
            self.response_complete(cycle)
            return
        server.active += 1
        try:
            coro: Any = server.app(cycle.scope, cycle.receive, cycle.send)
            if not hasattr(coro, "send"):
                coro = coro.__await__()  # an awaitable object, not a coroutine
        except BaseException as exc:
            cycle.app_done(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return
        task = start_eager(self.loop, coro, cycle.app_done, cycle.flush_head)
        if task is not None:
            # Still running: asyncio keeps only weak references to tasks.
            cycle.task = task
            server.tasks.add(task)

    def response_complete(self, cycle: RequestCycle) -> None:
        """The last byte of ``cycle``'s response was handed to the transport."""
        stats = self.stats
        stats.in_flight -= 1
        stats.requests += 1
        self.served += 1
        if self.server.access_log:
            self._log_access(cycle)
        cycle.wake()
        if not cycle.keep_alive or self.shutting_down:
            if cycle.message_done or self._parser_dead:
                self.close()
            else:
                self._linger()  # unread request body: avoid a RST eating the answer
            return
        if cycle.message_done:
            self._finish(cycle)  # (it updates reading itself)
            return
        # Keep reading and dropping the rest of the body, bounded by the
        # keep-alive deadline; on_message_complete then finishes the cycle.
        if self.server.keep_alive_timeout > 0:
            self.deadline = self.loop.time() + self.server.keep_alive_timeout
        self.update_reading()

    def _finish(self, cycle: RequestCycle) -> None:
        self.cycle = None
        if self.closed:
            return
        if self.shutting_down:
            self.close()
            return
        if self.queue:
            if not self._starting and not self._start_scheduled:
                self._start_scheduled = True
                self.loop.call_soon(self._start_queued)
            return
        if self._pending_error:
            self._send_error(self._pending_error)
            return
        if self._parser_dead:  # after an upgrade request: nothing more is HTTP
            self.close()
            return
        if self._parse_state == _IDLE:
            timeout = self.server.keep_alive_timeout
            if timeout > 0:
                self.deadline = self.loop.time() + timeout
            else:
                self.close()
                return
        self.update_reading()

    def update_reading(self) -> None:
        """Pause reading while requests queue up or body bytes pile up unread."""
        if self.closed:
            return
        cycle = self.receiving
        pause = bool(self.queue) or (
            cycle is not None and not cycle.complete and cycle.body_size > HIGH_WATER
        )
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _fail(self, status: int) -> None:
        """The peer sent something we cannot parse: answer in turn, then close."""
        self._parser_dead = True
        self.deadline = None
        receiving, self.receiving = self.receiving, None
        if receiving is not None and receiving is self.cycle:
            # The app is reading a body that turned out malformed: it sees a
            # disconnect, the client gets the error if nothing was sent yet.
            receiving.client_gone()
            if receiving.started:
                self.close()
            else:
                self._send_error(status)
            return
        if receiving is not None and receiving in self.queue:
            self.queue.remove(receiving)  # incomplete: never run it
            self.stats.in_flight -= 1
        self._pending_error = status
        if self.cycle is None and not self.queue:
            self._send_error(status)
        elif not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _send_error(self, status: int) -> None:
        self._pending_error = 0
        if self.closed:
            return
        if self.server.access_log:
            access_logger.info('%s - "-" %d -', _format_client(self.client), status)
        self.transport.write(self.server.error_response(status))
        self._linger()

    def _linger(self) -> None:
        """Half-close, then read and drop what the peer still sends, briefly.

        Closing a socket with unread input makes the kernel send RST, and the
        peer may then lose the error response we just wrote (nginx's
        "lingering close").  The peer's own close, or a short deadline, ends it.
        """
        self._parser_dead = True
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.close()
            return
        self.deadline = self.loop.time() + _LINGER
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def _log_access(self, cycle: RequestCycle) -> None:
        scope = cycle.scope
        query = scope["query_string"]
        path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d %d',
            _format_client(scope["client"]),
            scope["method"],
            path,
            scope["http_version"],
            cycle.status,
            cycle.bytes_sent,
        )


def _format_client(client: tuple[str, int] | None) -> str:
    if client is None:
        return "-"
    return f"{client[0]}:{client[1]}"


def _forwarded_client(
    header: bytes, trust: _Trust, direct: tuple[str, int] | None
) -> tuple[str, int] | None:
    """The client a chain of trusted proxies vouches for.

    Walk X-Forwarded-For from the right (the hop nearest to us) and take the
    first address that is not itself a trusted proxy; if all are trusted, the
    leftmost one.
    """
    hosts = [h.strip() for h in header.decode("latin-1").split(",") if h.strip()]
    if not hosts:
        return direct
    for host in reversed(hosts):
        if host not in trust:
            return (host, 0)
    return (hosts[0], 0)
