"""One HTTP/1.1 client connection: parser callbacks, request queue, deadlines.

Rules of this module:

* Parsing is httptools' job; this module only reacts to its callbacks.  All
  requests parsed from one read are queued; the app sees them strictly one at
  a time and responses go out in request order.  While a request is being
  answered and more are queued, reading is paused (``flow.py``), so a
  pipelining client can make us hold at most one read's worth of requests.
* An app never runs inside a parser callback: requests start after
  ``feed_data`` returns, so a small body is already complete when the app
  first calls ``receive()``.  What a request looks like to the app, and the
  app call itself, is the cycle's business (``cycle.py``); how the response
  is framed is ``framing.py``'s; which peers may set X-Forwarded-* is
  ``proxy.py``'s.
* Timeouts are deadlines checked by the server's tick (one timer per worker,
  not one per request): header_read_timeout from the first byte of a request
  (or from accept) until its headers are complete, timeout_keep_alive while
  idle between requests.
* Graceful shutdown closes at once only connections idle between requests
  (they served one); a fresh connection's first request is on the way, so it
  is answered with ``Connection: close`` (or ended by the timeouts above).
* Nothing a peer sends escapes into the event loop: what cannot be parsed,
  or breaks a limit, is answered with 400/414/431 after the responses
  already due, and the connection ends with a lingering close.

Where the next features plug in:

* Limits per field while bytes arrive (issue 10): ``on_url`` and
  ``on_header`` see each piece as it is parsed and raise ``_LimitExceeded``
  with the status to answer; ``data_received`` bounds a header block that is
  still incomplete after a read.  A new limit is one more check there.
* The upgrade hand-off (WebSocket, issue 9): ``HttpParserUpgrade`` in
  ``data_received`` is the point where the request's bytes end and another
  protocol's begin.  ``_hand_over`` asks ``server.upgrades``
  (``websocket_upgrade.py``) whether the request becomes a WebSocket; if so
  the WebSocket (``websocket.py``) takes the transport, its ``FlowControl``
  and the bytes after the request head, and this object is done.  Otherwise
  the request is answered as plain HTTP and the connection closes.
* A second app interface (WSGI, issue 13) is another cycle class, built in
  ``on_headers_complete`` from the same parsed parts; the queue, deadlines
  and errors here do not change.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote_to_bytes

import httptools

from ..connections import ManagedConnection
from .cycle import GONE, RECEIVED, RECEIVING, RequestCycle
from .flow import FlowControl
from .framing import COMPLETE, WAITING, ResponseFramer
from .proxy import forwarded_client, forwarded_scheme

if TYPE_CHECKING:
    from .server import HttpServer

__all__ = ["HttpProtocol", "ParseState"]

logger = logging.getLogger("reuseport.http")

_METHODS = {
    m.encode("ascii"): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_REQUEST_SPECIAL = frozenset({b"expect", b"x-forwarded-for", b"x-forwarded-proto"})
_LINGER = 2.0  # seconds we keep reading after an error response before closing


class ParseState(IntEnum):
    """Where the parser is in the request being received."""

    IDLE = 0  # between requests
    HEADERS = 1  # request line and headers
    BODY = 2  # headers complete, body (possibly empty) until message complete


# Module-level aliases: a global lookup is cheaper than an enum class attribute.
_IDLE = ParseState.IDLE
_HEADERS = ParseState.HEADERS
_BODY = ParseState.BODY


class _LimitExceeded(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpProtocol(asyncio.Protocol, ManagedConnection):
    """One client connection (see the module docstring for the rules)."""

    transport: asyncio.Transport
    flow: FlowControl

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.stats = server.stats
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.sockname: tuple[str, int | None] | None = None
        self.trusted = False
        self.served = 0  # responses completed on this connection
        self.cycle: RequestCycle | None = None  # the request the app is answering
        self.queue: deque[RequestCycle] = deque()  # parsed, waiting their turn
        self.receiving: RequestCycle | None = None  # where parsed body bytes go
        self.closed = False
        self.shutting_down = False
        self.deadline: float | None = None
        self._parse_state = _IDLE
        self._header_bytes = 0
        self._parser_dead = False  # whatever the peer sends now is not HTTP: drop it
        self._pending_error = 0  # status to answer once the responses due are out
        self._starting = False  # inside feed_data or _start_queued: do not re-enter
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
        self.flow = FlowControl(self.transport, self.loop)
        server = self.server
        server.live.add(self)
        server.connections.add(self)
        stats = self.stats
        stats.opened()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
            self.trusted = self.client[0] in server.trust
        else:  # a Unix socket: the peer is local, trusted as loopback is
            self.trusted = server.trust_local
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.sockname = (str(sock[0]), int(sock[1]))
        elif isinstance(sock, str) and sock:
            self.sockname = (sock, None)  # ASGI: [path, None] for a Unix socket
        if server.header_timeout > 0:
            self.deadline = self.loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        server.live.discard(self)
        server.connections.discard(self)
        stats = self.stats
        stats.closed()
        cycle = self.cycle
        if cycle is not None:
            if cycle.response.state is not COMPLETE:
                stats.in_flight -= 1
            cycle.client_gone()
        stats.in_flight -= len(self.queue)
        self.queue.clear()
        self.cycle = None
        self.receiving = None
        self.deadline = None
        self.flow.release()

    def data_received(self, data: bytes) -> None:
        if self._parser_dead or self.closed:
            return
        self._starting = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._parser_dead = True
            if self._hand_over(data[exc.args[0] :]):
                return  # the connection is a WebSocket now
            # Not one we take: the upgrade request is answered as plain HTTP
            # (a websocket-only route gives 404) and whatever follows its
            # headers is not HTTP, so the connection ends after the answer.
            last = self.queue[-1] if self.queue else self.cycle
            if last is not None:
                last.response.keep_alive = False
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
            if self._parse_state is _HEADERS:
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
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def _hand_over(self, tail: bytes) -> bool:
        """Give the transport to a WebSocket if the upgrade request is one we take.

        The upgrade request is the last one parsed; it is taken only when
        nothing runs or waits before it (see ``websocket_upgrade.py``).
        ``tail`` is what the client sent after its head.
        """
        queue = self.queue
        if not queue:
            return False
        cycle = queue[-1]
        server = self.server
        if not server.upgrades.takes(self, cycle.scope):
            return False
        if len(queue) > 1 or self.cycle is not None or cycle.body:
            logger.debug("WebSocket handshake pipelined behind other requests: answered as HTTP")
            return False
        queue.pop()
        self.stats.in_flight -= 1  # the WebSocket counts itself
        self.receiving = None
        self.closed = True  # nothing of ours happens on this transport any more
        self.deadline = None
        server.live.discard(self)
        websockets = server.upgrades.websockets
        assert websockets is not None
        websockets.start(self, cycle.scope, tail)
        server.connections.discard(self)  # after the WebSocket joined: no false "drained"
        return True

    # --- ManagedConnection ---------------------------------------------------

    def shutdown(self) -> None:
        self.shutting_down = True
        # Only a connection idle *between* requests may be closed now (clients
        # retry a keep-alive connection closed under them).  One that has not
        # finished sending its first request was accepted moments ago and its
        # request is on the way: a connection-per-request client would see an
        # empty reply.  It gets its answer (with Connection: close), or the
        # header-read timeout / the graceful deadline ends it.
        if self.cycle is None and not self.queue and self.served > 0 and self._parse_state is _IDLE:
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
        if self._parse_state is not _HEADERS:
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
        scheme = server.scheme
        if self.trusted:
            if self._xfp is not None:
                scheme = forwarded_scheme(self._xfp, scheme)
            if self._xff is not None:
                client = forwarded_client(self._xff, server.trust, client)
        keep_alive = parser.should_keep_alive() and not self.shutting_down
        response = ResponseFramer(server.defaults, method == "HEAD", version == "1.0", keep_alive)
        cycle = RequestCycle(
            self, response, method, version, path, raw_path, query, client, scheme, self._headers
        )
        if self._expect and version == "1.1":
            cycle.expect_100 = True
        self.stats.in_flight += 1
        self.queue.append(cycle)
        self.receiving = cycle

    def on_body(self, body: bytes) -> None:
        cycle = self.receiving
        if cycle is None or cycle.request is GONE or cycle.response.state is COMPLETE:
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
        cycle.request = RECEIVED
        if cycle.response.state is COMPLETE:
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
                cycle.run()
        finally:
            self._starting = False
        if self.cycle is None and not self.queue and self._pending_error and not self.closed:
            self._send_error(self._pending_error)
            return
        self.update_reading()

    def response_complete(self, cycle: RequestCycle) -> None:
        """The last byte of ``cycle``'s response was handed to the transport."""
        stats = self.stats
        stats.in_flight -= 1
        stats.requests += 1
        self.served += 1
        if self.server.access_log:
            cycle.log_access()
        cycle.wake()
        if not cycle.response.keep_alive or self.shutting_down:
            if cycle.request is not RECEIVING or self._parser_dead:
                self.close()
            else:
                self._linger()  # unread request body: avoid a RST eating the answer
            return
        if cycle.request is not RECEIVING:
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
        if self._parse_state is _IDLE:
            timeout = self.server.keep_alive_timeout
            if timeout > 0:
                self.deadline = self.loop.time() + timeout
            else:
                self.close()
                return
        self.update_reading()

    def update_reading(self) -> None:
        """Let flow control pause or resume reading (see ``flow.py``)."""
        if self.closed:
            return
        cycle = self.receiving
        if cycle is None or cycle.response.state is COMPLETE:
            self.flow.update_reading(bool(self.queue), 0)
        else:
            self.flow.update_reading(bool(self.queue), cycle.body_size)

    def _fail(self, status: int) -> None:
        """The peer sent something we cannot parse: answer in turn, then close."""
        self._parser_dead = True
        self.deadline = None
        receiving, self.receiving = self.receiving, None
        if receiving is not None and receiving is self.cycle:
            # The app is reading a body that turned out malformed: it sees a
            # disconnect, the client gets the error if nothing was sent yet.
            receiving.client_gone()
            if receiving.response.state is not WAITING:
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
        else:
            self.flow.pause_reading()

    def _send_error(self, status: int) -> None:
        self._pending_error = 0
        if self.closed:
            return
        access_log = self.server.access_log
        if access_log is not None:
            access_log.error(self.client, status, self.loop.time())
        self.transport.write(self.server.defaults.error_response(status))
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
        self.flow.resume_reading()
