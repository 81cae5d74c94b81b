"""One HTTP/1.1 client connection: parser callbacks, request queue, deadlines.

Rules of this module:

* Parsing is httptools' job; this module only reacts to its callbacks.  All
  requests parsed from one read (or one piece of a large read, below) are
  queued; the app sees them strictly one at a time and responses go out in
  request order.  Once the request being answered has arrived whole, nothing
  more is parsed until it is answered: later bytes wait unparsed (at most one
  read) and reading pauses (``flow.py``).  So a pipelining client can make us
  hold one read of raw bytes plus the requests parsed from one piece, never a
  read's worth of parsed requests (about 1.2 KB each).
* An app never runs inside a parser callback: requests start after
  ``feed_data`` returns, so a small body is already complete when the app
  first calls ``receive()``.  What a request looks like to the app, and the
  app call itself, is the cycle's business (``cycle.py``); how the response
  is framed is ``framing.py``'s; which peers may set X-Forwarded-* is
  ``proxy.py``'s.
* Limits hold while bytes arrive, not only when httptools reports a whole
  field (it buffers an unfinished field itself, where we cannot see it).  A
  read longer than the smallest line limit is fed in pieces no longer than
  that, so a line that fits in one piece is within its limit (body data of
  a known length goes whole into one piece: see ``_piece_end``); after each
  piece the unfinished line at its end (request line, header field,
  chunk-size line with its extensions, trailer field) is measured from the
  last LF and carried over to the next piece.  Whole fields are also checked
  by ``on_header`` (name + value), the URL by ``on_url``; the field count
  and the header total after each piece (so at most a piece's worth of
  fields is held past the count) and at the end of the head.  The one place
  the measure is a lower bound: a head that begins in the middle of a
  piece, after another request that ended there, is measured from the next
  piece on (at most one piece late).  The trailer section of a chunked
  body obeys the same field size, field count and header-read timeout as
  the head.
* Framing the parser lets through but RFC 9112 forbids is refused here with
  400 (see ``docs/http.md``): HTTP/1.0 with Transfer-Encoding, a missing
  (HTTP/1.1), repeated or malformed Host, HTTP/0.9 (at once, not at the
  header timeout), a request line that is not HTTP's (RTSP/ICE), a fragment
  in the target, ``*`` outside OPTIONS; another major version gets 505.
* Timeouts are deadlines checked by the server's tick (one timer per worker,
  not one per request): header_read_timeout from the first byte of a request
  (or from accept) until its headers are complete (armed only when a read
  ends inside a head: one that arrives whole never needs it), and again for
  a chunked body's trailer section; body_read_timeout while the app waits for request
  body bytes that do not come (408 if nothing was answered yet, else close);
  timeout_keep_alive while idle between requests.
* Graceful shutdown closes at once only connections idle between requests
  (they served one); a fresh connection's first request is on the way, so it
  is answered with ``Connection: close`` (or ended by the timeouts above).
* Nothing a peer sends escapes into the event loop: what cannot be parsed,
  or breaks a limit, is answered with 400/408/414/431/505 after the responses
  already due, and the connection ends with a lingering close.
* httptools' parser holds our callbacks (bound methods, so this object) and
  we hold the parser: the cycle is cut when the connection fails or is lost
  (the parser is swapped for an inert one), so a closed connection and the
  header bytes it buffered are freed at once, without waiting for the cycle
  collector.

Where the next features plug in:

* The upgrade hand-off (WebSocket, issue 9): ``HttpParserUpgrade`` in
  ``_parse_error`` is the point where the request's bytes end and another
  protocol's begin; today we answer the request as plain HTTP and close.  A
  WebSocket cycle would take the transport, its ``FlowControl`` and the bytes
  after the request head from there: the rest of the piece just fed
  (``exc.args[0]`` is the offset in it) followed by the bytes held back
  (``_unfed`` from ``_unfed_pos``, dropped there today).
* A second app interface (WSGI, issue 13) is another cycle class
  (``server.cycle_class``: ``wsgi.WsgiCycle``), built in
  ``on_headers_complete`` from the same parsed parts; the queue, deadlines
  and errors here do not change.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote_to_bytes

import httptools

from ..connections import ManagedConnection
from .cycle import GONE, RECEIVED, RECEIVING, RequestCycle
from .flow import FlowControl
from .framing import COMPLETE, HEAD_HELD, WAITING, ResponseFramer
from .proxy import forwarded_client, forwarded_scheme

if TYPE_CHECKING:
    from .server import HttpServer

__all__ = ["ChunkState", "HttpProtocol", "ParseState"]

logger = logging.getLogger("reuseport.http")

_METHODS = {
    m.encode("ascii"): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_REQUEST_SPECIAL = frozenset(
    {
        b"host",
        b"expect",
        b"transfer-encoding",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        # llhttp reads both for keep-alive (see on_headers_complete).
        b"connection",
        b"proxy-connection",
    }
)
# What a Host value may hold (RFC 3986 reg-name, IP literal, port).
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]"
# The end of a complete HTTP/1.x request line, and the protocols llhttp also
# accepts there (RTSP/1.0 would otherwise pass for HTTP/1.0).
_REQUEST_LINE_END = re.compile(rb" (HTTP|RTSP|ICE)/\d\.\d\r\n\Z")
_NOT_HTTP_10 = re.compile(rb" (?:RTSP|ICE)/1\.0\r\n")
_EMPTY_LINES = re.compile(rb"[\r\n]*")
# Single bytes to look for as ints: `int in bytes` is one memchr, while
# `bytes in bytes` first tries the needle as an int and formats a TypeError
# it then drops, and `bytes.find` parses its arguments: ~2k and ~0.7k
# instructions on 3.11, on every request.
_HASH = ord("#")
_PERCENT = ord("%")
_QUESTION = ord("?")
_NONZERO_SIZE = re.compile(rb"0*[1-9a-fA-F]")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]+")
# Separators and whitespace a raw line may carry beyond the name + value (or
# URL) its limit counts.
_LINE_SLACK = 64
_LINGER = 2.0  # seconds we keep reading after an error response before closing
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class ParseState(IntEnum):
    """Where the parser is in the request being received."""

    IDLE = 0  # between requests
    HEADERS = 1  # request line and headers
    BODY = 2  # headers complete, body (possibly empty) until message complete


class ChunkState(IntEnum):
    """Where the parser is in a chunked body, for the line limits."""

    SIZE = 0  # in a chunk-size line (extensions included)
    # A size line ended: chunk data follows (in it once body bytes came after
    # the line), or, after the last chunk, the trailer section.
    AFTER_SIZE = 1


# Module-level aliases: a global lookup is cheaper than an enum class attribute.
_IDLE = ParseState.IDLE
_HEADERS = ParseState.HEADERS
_BODY = ParseState.BODY
_SIZE = ChunkState.SIZE
_AFTER_SIZE = ChunkState.AFTER_SIZE


class _Reject(Exception):
    """Raised in a parser callback: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _NoCallbacks:
    pass


# Takes the place of a connection's parser once it failed or was lost: it
# holds no reference to the connection, and is never fed.
_INERT_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class HttpProtocol(asyncio.Protocol, ManagedConnection):
    """One client connection (see the module docstring for the rules)."""

    # Slots, not an instance dict: past 30 attributes CPython 3.11 stops
    # sharing the dict's keys and every attribute access on the hot path
    # takes the slow, unspecialised way (with these 43 in a dict: 3.6k more
    # instructions per request, scripts/profile_http.py --callgrind).
    # Whatever speaks on the connection after an upgrade may still add
    # attributes: the ABC base gives instances a __dict__.
    __slots__ = (
        "_body_due",
        "_body_seen",
        "_chunk",
        "_chunk_mark",
        "_chunk_size",
        "_connection",
        "_content_length",
        "_expect",
        "_header_bytes",
        "_headers",
        "_host",
        "_in_request_line",
        "_line",
        "_max_field",
        "_max_fields",
        "_parse_state",
        "_parser_dead",
        "_pending_error",
        "_piece",
        "_rare",
        "_request_line_tail",
        "_start_scheduled",
        "_starting",
        "_suspect",
        "_te",
        "_trailers",
        "_trailers_due",
        "_unfed",
        "_unfed_pos",
        "_url",
        "_whole",
        "_xff",
        "_xfp",
        "client",
        "closed",
        "cycle",
        "deadline",
        "flow",
        "loop",
        "parser",
        "queue",
        "receiving",
        "served",
        "server",
        "shutting_down",
        "sockname",
        "stats",
        "transport",
        "trusted",
    )

    transport: asyncio.Transport
    flow: FlowControl

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.stats = server.stats
        self.parser = httptools.HttpRequestParser(self)
        self._piece = server.piece_size  # reads longer than this are parsed in pieces
        # The longest read parsed whole: _piece, or -1 while bytes are held
        # back or a line is carried over (one test on the hot path).
        self._whole = self._piece
        self._max_fields = server.limit_request_fields
        self._max_field = server.limit_request_field_size
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
        self._parser_dead = False  # whatever the peer sends now is not HTTP: drop it
        self._pending_error = 0  # status to answer once the responses due are out
        self._starting = False  # inside feed_data or _advance: do not re-enter
        self._start_scheduled = False
        # Bytes read but not parsed yet (a large read, or a pipelining client
        # ahead of the app): _unfed[_unfed_pos:].
        self._unfed: bytes | None = None
        self._unfed_pos = 0
        self._suspect = False  # an HTTP/1.0 head was parsed: is its line RTSP/ICE?
        # The unfinished line at the end of what was parsed (see the module
        # docstring): its length so far, whether it is the request line, and
        # that line's last bytes (to tell HTTP/0.9 when it ends).
        self._line = 0
        self._in_request_line: bool | None = False  # None: not known
        self._request_line_tail = b""
        self._header_bytes = 0
        self._chunk = _SIZE
        self._chunk_mark = 0  # _body_seen when the last chunk-size line ended
        self._chunk_size = -1  # that chunk's size, once read from a piece (-1: not known)
        self._body_seen = 0  # body bytes of the current message parsed so far
        self._content_length = b""  # of the current message, if it has one
        self._trailers = 0  # trailer fields of the current chunked body
        self._trailers_due: float | None = None  # header-read deadline of the trailers
        self._body_due: float | None = None  # body-read deadline while the app waits
        # Per-message parse state, reset by on_message_begin.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._expect = False
        self._connection = False  # a Connection or Proxy-Connection field came
        self._te: bytes | None = None
        self._xff: bytes | None = None
        self._xfp: bytes | None = None
        self._rare = False  # one of the five above was set

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
            client = self.client = (str(peer[0]), int(peer[1]))
            hosts = server.trusted_hosts
            self.trusted = client[0] in (server.trust if hosts is None else hosts)
        else:  # a Unix socket: the peer is local, trusted as loopback is
            self.trusted = server.trust_local
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.sockname = (str(sock[0]), int(sock[1]))
        elif isinstance(sock, str) and sock:
            self.sockname = (sock, None)  # ASGI: [path, None] for a Unix socket
        if server.header_timeout > 0:
            self.deadline = self.loop.time() + server.header_timeout

    def proxied(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        """``--proxy-protocol``: the connection is on behalf of ``client`` (``proxystage.py``).

        Called once, right after ``connection_made`` and before any data:
        the header's addresses replace the peer's everywhere (scope, environ,
        access log), and X-Forwarded-* trust is decided for ``client``, not
        for the balancer that sent the header (see ``proxy.py``).
        """
        self.client = client
        self.sockname = server
        shared = self.server
        hosts = shared.trusted_hosts
        self.trusted = client[0] in (shared.trust if hosts is None else hosts)

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
        queue = self.queue
        if queue:
            stats.in_flight -= len(queue)
            queue.clear()
        self.cycle = None
        self.receiving = None
        self.deadline = None
        self._drop_parser()
        self.flow.release()

    def data_received(self, data: bytes) -> None:
        if self._parser_dead or self.closed:
            return
        if len(data) <= self._whole and (self.cycle is None or self.receiving is not None):
            # The common case, fed whole: a read no longer than any line limit,
            # not continuing a line, with nobody waiting for the app.
            state = self._parse_state
            queued = len(self.queue)
            self._starting = True
            try:
                self.parser.feed_data(data)
            except _PARSER_ERRORS as exc:
                if self._parse_error(exc, data):
                    return  # the connection is a WebSocket now
            else:
                if self._parse_state is not _IDLE or self._suspect:
                    self._after_feed(data, 0, len(data), state, queued)
            finally:
                self._starting = False
            self._advance()
            return
        if self._unfed is not None:  # only if a read raced our pause_reading()
            data = self._unfed[self._unfed_pos :] + data
        self._unfed = data
        self._unfed_pos = 0
        self._whole = -1
        self._advance()

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
        self._drop_parser()  # no connection_lost comes to us: cut the cycle now
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
        if (
            self.cycle is None
            and not self.queue
            and self.served > 0
            and self._parse_state is _IDLE
            and self._unfed is None
        ):
            self.close()

    def close_after_response(self) -> None:
        # The last request parsed so far says Connection: close (if its head
        # has not left yet), so every pipelined one before it is still
        # answered; requests parsed later see ``connections.keep_alive``
        # (with bytes still unparsed, the first of them closes instead).
        if self._unfed is not None:
            return
        last = self.queue[-1] if self.queue else self.cycle
        if last is not None and last.response.state <= HEAD_HELD:
            last.response.keep_alive = False

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
        if self.receiving is not None and not self._parser_dead:
            # A request is still arriving (its body or trailers) and stalled.
            logger.debug("request from %s too slow to arrive: 408", self.client)
            self._fail(408)
            return
        logger.debug("closing idle or too slow connection from %s", self.client)
        self.close()

    def body_wait(self, waiting: bool) -> None:
        """The app starts (``True``) or stops waiting for body bytes not yet here."""
        timeout = self.server.body_timeout
        if timeout <= 0 or self.closed:
            return
        if waiting:
            due = self.loop.time() + timeout
            trailers_due = self._trailers_due
            if trailers_due is not None and trailers_due < due:
                due = trailers_due
            self._body_due = self.deadline = due
        elif self._body_due is not None:
            if self.deadline == self._body_due:  # not replaced meanwhile (linger, ...)
                self.deadline = self._trailers_due
            self._body_due = None

    # --- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._parse_state = _HEADERS
        self._url = b""
        self._headers = []
        self._host = None
        if self._rare:
            self._rare = False
            self._expect = self._connection = False
            self._te = self._xff = self._xfp = None
        # (The header-read deadline is set only if the head is still
        # incomplete once the read is parsed: see _after_feed.)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.limit_request_line:
            raise _Reject(414)
        if _HASH in url:  # RFC 9112 3.2: a fragment is never part of a target
            raise _Reject(400)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parse_state is not _HEADERS:
            self._on_trailer(name, value)  # not passed on, but held to the same limits
            return
        # (The field count is checked once a read is parsed, and at the end
        # of the head: _after_piece, on_headers_complete.)
        if len(name) + len(value) > self._max_field:
            raise _Reject(431)
        name = name.lower()
        self._headers.append((name, value))
        if name in _REQUEST_SPECIAL:
            if name == b"host":
                # RFC 9112 3.2: one Host, with a valid value (nothing is left
                # once its characters are stripped; the cheapest such test)
                if self._host is not None or value.strip(_HOST_CHARS):
                    raise _Reject(400)
                self._host = value
            elif name == b"content-length":
                self._content_length = value  # (llhttp checked it: digits, once)
                self._body_seen = 0
            elif name == b"connection":  # (browsers send it: no call for it)
                self._connection = self._rare = True
            else:
                self._rare_field(name, value)

    def _rare_field(self, name: bytes, value: bytes) -> None:
        """A field of _REQUEST_SPECIAL that few requests have (on_message_begin resets)."""
        self._rare = True
        if name == b"proxy-connection":
            self._connection = True
        elif name == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif name == b"transfer-encoding":
            self._te = value  # llhttp takes nothing but chunked (last) in a request
            self._chunk = _SIZE  # the first chunk-size line follows the head
            self._trailers = 0
            self._trailers_due = None
            self._body_seen = 0
            self._chunk_size = -1
        elif name == b"x-forwarded-for":
            self._xff = value if self._xff is None else self._xff + b"," + value
        else:  # x-forwarded-proto
            self._xfp = value

    def on_headers_complete(self) -> None:
        self._parse_state = _BODY
        self.deadline = None
        headers = self._headers
        if len(headers) > self._max_fields:
            raise _Reject(431)
        server = self.server
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        # llhttp accepts the versions 0.9, 1.0, 1.1 and 2.0 and keeps only 1.1
        # alive without a Connection (or Proxy-Connection) field, so that is
        # 1.1 without asking: get_http_version() formats a str, ~2.3k
        # instructions a request on 3.11 (scripts/profile_http.py --callgrind).
        version = "1.1" if keep_alive and not self._connection else parser.get_http_version()
        if version != "1.1" or self._host is None:
            self._check_framing(version)
        url = self._url
        if url[:1] == b"/":
            if _QUESTION in url:
                raw_path, _, query = url.partition(b"?")
            else:
                raw_path, query = url, b""
        else:
            if url == b"*" and parser.get_method() != b"OPTIONS":
                raise _Reject(400)  # RFC 9112 3.2.4: asterisk-form is for OPTIONS only
            parsed = httptools.parse_url(url)
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        try:
            # (UTF-8 without naming it: naming the codec costs a lookup.)
            path = (unquote_to_bytes(raw_path) if _PERCENT in raw_path else raw_path).decode()
        except UnicodeDecodeError:
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        method_b = parser.get_method()
        method = _METHODS.get(method_b) or method_b.decode("ascii", "replace")
        client = self.client
        scheme = server.scheme
        rare = self._rare
        if rare and self.trusted:
            if self._xfp is not None:
                scheme = forwarded_scheme(self._xfp, scheme)
            if self._xff is not None:
                client = forwarded_client(self._xff, server.trust, client)
        keep_alive = keep_alive and not self.shutting_down and server.connections.keep_alive
        response = ResponseFramer(server.defaults, method == "HEAD", version == "1.0", keep_alive)
        cycle = server.cycle_class(
            self, response, method, version, path, raw_path, query, client, scheme, headers
        )
        if rare and self._expect and version == "1.1":
            cycle.expect_100 = True
        self.stats.in_flight += 1
        self.queue.append(cycle)
        self.receiving = cycle

    def _check_framing(self, version: str) -> None:
        """What llhttp accepts but RFC 9112 forbids (docs/http.md lists each)."""
        if version == "1.0":
            if self._te is not None:
                raise _Reject(400)  # 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing
            self._suspect = True  # RTSP/1.0 passes for HTTP/1.0: _after_feed looks
        elif version == "0.9":
            raise _Reject(400)  # HTTP/0.9 has no place in HTTP/1.1 (2.3)
        elif version != "1.1":
            raise _Reject(505)
        if self._host is None and version == "1.1":
            raise _Reject(400)  # 3.2: HTTP/1.1 requires Host

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        cycle = self.receiving
        if cycle is None or cycle.request is GONE or cycle.response.state is COMPLETE:
            return  # answered already: the rest of the body is read and dropped
        cycle.body.append(body)
        cycle.body_size += len(body)
        if cycle.waiter is not None:
            cycle.wake()

    def on_chunk_header(self) -> None:
        self._chunk = _AFTER_SIZE
        self._chunk_mark = self._body_seen
        self._chunk_size = -1

    def on_chunk_complete(self) -> None:
        self._chunk = _SIZE

    def on_message_complete(self) -> None:
        self._parse_state = _IDLE
        if self._trailers_due is not None:
            self._trailers_due = None
            self.deadline = None
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

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        self._trailers += 1
        if self._trailers > self._max_fields or len(name) + len(value) > self._max_field:
            raise _Reject(431)
        self._trailers_begin()

    def _trailers_begin(self) -> None:
        """The trailer section has begun: the header-read timeout runs again."""
        if self._trailers_due is not None:
            return
        timeout = self.server.header_timeout
        if timeout > 0:
            due = self._trailers_due = self.loop.time() + timeout
            if self.deadline is None or due < self.deadline:
                self.deadline = due

    # --- feeding the parser --------------------------------------------------

    def _feed_next(self) -> None:
        """Parse the next piece of the bytes held back."""
        data = self._unfed
        assert data is not None
        start = self._unfed_pos
        end = min(len(data), self._piece_end(data, start))
        carried = self._line
        if carried:
            # The line carried over may end in this piece: measure it whole.
            first = data.find(b"\n", start, end)
            limit, status = self._line_limit()
            if carried + (first if first >= 0 else end) - start > limit:
                self._fail(status)
                return
        if end >= len(data):
            self._unfed = None
            self._unfed_pos = 0
        else:
            self._unfed_pos = end
        piece: bytes | memoryview = data
        if start or end < len(data):
            piece = memoryview(data)[start:end]
        state = self._parse_state
        queued = len(self.queue)
        try:
            self.parser.feed_data(piece)
        except _PARSER_ERRORS as exc:
            self._parse_error(exc, piece)
            return
        if self._parse_state is _IDLE:
            self._line = 0
            if not self._suspect:
                self._whole = self._piece if self._unfed is None else -1
                return
        self._after_feed(data, start, end, state, queued)

    def _after_feed(
        self, data: bytes, start: int, end: int, state: ParseState, queued: int
    ) -> None:
        """The rare checks after ``data[start:end]`` was parsed (see ``_after_piece``)."""
        if self._suspect:
            self._suspect = False
            if _NOT_HTTP_10.search(data, start, end):
                # An RTSP/ICE request line passed for HTTP/1.0: none of the
                # requests parsed from this piece may run.
                while len(self.queue) > queued:
                    self.queue.pop()
                    self.stats.in_flight -= 1
                self.receiving = None
                self._fail(400)
                return
        if self._parse_state is not _IDLE:
            if self._parse_state is _HEADERS and (
                state is not _HEADERS or len(self.queue) != queued
            ):
                # A head began in this piece and is not complete: the
                # header-read timeout runs from now (a head that came whole,
                # the common case, never sets it).
                timeout = self.server.header_timeout
                self.deadline = self.loop.time() + timeout if timeout > 0 else None
            status = self._after_piece(data, start, end, state, queued)
            if status:
                self._fail(status)
                return
        self._whole = self._piece if self._unfed is None and not self._line else -1

    def _piece_end(self, data: bytes, start: int) -> int:
        """Where the piece of ``data`` from ``start`` ends (see the module docstring).

        Body data of a known length goes whole into one piece, as no line
        can hide in it: the rest of a Content-Length body (the next piece
        starts where it ends), or whole chunks, walked from size line to
        size line while each line ends within a piece's length (so within
        its limit); where the walk cannot vouch for a line, the piece ends
        and the next one is measured as usual.
        """
        piece = self._piece
        if self._parse_state is not _BODY:
            return start + piece
        if self._te is None:
            left = int(self._content_length or 0) - self._body_seen
            return start + (left if left > 0 else piece)
        if self._chunk is _AFTER_SIZE and self._chunk_size >= 0:
            seen = self._body_seen - self._chunk_mark
            at = start + max(self._chunk_size - seen, 0)  # the end of this chunk's data
            crlf = True
        elif self._chunk is _SIZE and not self._line:
            at = start  # a size line begins here
            crlf = False
        else:
            return start + piece
        n = len(data)
        while at < n:
            line = at + 2 if crlf else at
            if crlf and data[at:line] != b"\r\n":
                break
            nl = data.find(b"\n", line, line + piece - 2)
            match = _CHUNK_SIZE.match(data, line, nl) if nl >= 0 else None
            if match is None:
                break
            size = int(match.group(), 16)
            if not size:
                break  # the last chunk: the trailer section follows
            at = nl + 1 + size
            crlf = True
        return at if at > start else start + piece

    def _parse_error(self, exc: Exception, piece: bytes | memoryview) -> bool:
        """The parser stopped in ``piece``; True if the connection became a WebSocket."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._parser_dead = True
            held = self._unfed[self._unfed_pos :] if self._unfed is not None else b""
            self._unfed = None
            if self._hand_over(bytes(piece[exc.args[0] :]) + held):
                return True
            # Not one we take: the upgrade request is answered as plain HTTP
            # (a websocket-only route gives 404) and whatever follows its
            # headers is not HTTP, so the connection ends after the answer.
            last = self.queue[-1] if self.queue else self.cycle
            if last is not None:
                last.response.keep_alive = False
        elif isinstance(exc, httptools.HttpParserCallbackError):
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._fail(reject.status)
            else:
                logger.error("reuseport bug in a parser callback", exc_info=reject)
                self._fail(500)
        else:
            logger.debug("malformed request from %s: %s", self.client, exc)
            self._fail(400)
        return False

    def _after_piece(
        self, data: bytes, start: int, end: int, state: ParseState, queued: int
    ) -> int:
        """Measure the unfinished line at the end of ``data[start:end]``, just parsed.

        ``state`` and ``queued`` are the parse state and the queue length
        before it was parsed.  Returns the status to answer, or 0.
        """
        server = self.server
        nl = data.rfind(b"\n", start, end)
        if self._parse_state is _HEADERS:
            if len(self.queue) != queued or state is _BODY:
                # The head began in this piece after a message that ended in it;
                # where is unknown (a body need not end with LF): count from here.
                line = 0
                self._in_request_line = None
                self._header_bytes = 0
            else:
                carried = self._line
                if state is _IDLE:  # the head began with this piece
                    start = _EMPTY_LINES.match(data, start, end).end()  # type: ignore[union-attr]
                    carried = 0
                    self._in_request_line = True
                    self._request_line_tail = b""
                    self._header_bytes = 0
                line = carried + end - start if nl < start else end - nl - 1
                if self._in_request_line and nl >= start:
                    # The request line ended in this piece: is it HTTP/1.x's?
                    first = data.find(b"\n", start, end)
                    tail = self._request_line_tail + data[max(start, first - 15) : first + 1]
                    match = _REQUEST_LINE_END.search(tail)
                    if match is None or match.group(1) != b"HTTP":
                        return 400  # HTTP/0.9, or not HTTP at all
                    self._in_request_line = False
                elif self._in_request_line is None and nl >= start:
                    self._in_request_line = False
                self._header_bytes += end - start
                if self._header_bytes > server.max_header_bytes:
                    return 431
            if len(self._headers) > self._max_fields:
                return 431
            self._line = line
            if self._in_request_line:
                tail = self._request_line_tail + data[max(start, end - 15) : end]
                self._request_line_tail = tail[-15:]
            limit, status = self._line_limit()
            return status if line > limit else 0
        # In a body: only a chunked one has lines (size lines, trailers).
        chunk = self._chunk
        if self._te is None:
            self._line = 0  # in body data
            return 0
        seen = self._body_seen - self._chunk_mark
        if chunk is _AFTER_SIZE and seen:
            # In chunk data.  Its size line ends right before it: if this
            # piece holds that line, read the size, so the next piece can
            # take the rest of the chunk at once.
            if self._chunk_size < 0 and end - seen - 1 >= start:
                size_end = end - seen - 1
                line_start = data.rfind(b"\n", start, size_end) + 1
                if line_start > start or not self._line:
                    match = _CHUNK_SIZE.match(data, max(line_start, start), size_end)
                    if match is not None:
                        self._chunk_size = int(match.group(), 16)
            self._line = 0
            return 0
        carried = self._line
        line = carried + end - start if nl < start else end - nl - 1
        self._line = line
        if chunk is _AFTER_SIZE and self._trailers_due is None:
            # A size line ended and no data followed: trailers have begun if
            # bytes follow it, or if the last whole line is a trailer or the
            # last chunk's size line (a nonzero one awaits its data).
            if line:
                self._trailers_begin()
            elif nl >= start:
                prev = data.rfind(b"\n", start, nl)
                if prev >= start or not carried:
                    last = data[max(prev + 1, start) : nl]
                    if not _NONZERO_SIZE.match(last):
                        self._trailers_begin()
        limit, status = self._line_limit()
        return status if line > limit else 0

    def _line_limit(self) -> tuple[int, int]:
        """The longest the unfinished line may be, and the status past it."""
        server = self.server
        if self._parse_state is _HEADERS:
            if self._in_request_line:
                return server.limit_request_line + _LINE_SLACK, 414
            if self._in_request_line is None:  # request line or first field: the larger
                limit = max(server.limit_request_line, server.limit_request_field_size)
                return limit + _LINE_SLACK, 431
            return server.limit_request_field_size + _LINE_SLACK, 431
        # A chunk-size line (extensions included), or a trailer field.
        return server.limit_request_field_size + _LINE_SLACK, 400 if self._chunk is _SIZE else 431

    # --- request flow --------------------------------------------------------

    def _advance(self) -> None:
        """Run queued requests (and parse held-back bytes) until one must wait."""
        self._start_scheduled = False
        if self._starting:
            return
        self._starting = True
        try:
            if self._unfed is None:  # the common case: the requests of one read
                queue = self.queue
                while queue and self.cycle is None and not self.closed:
                    cycle = self.cycle = queue.popleft()
                    cycle.run()
            else:
                self._advance_held()
        finally:
            self._starting = False
        # Usually all is done: nothing queued, received or pending, reading on.
        if (
            self.queue
            or self.receiving is not None
            or self._unfed is not None
            or self._pending_error
            or self.flow.read_paused
        ):
            if self.cycle is None and not self.queue and self._pending_error and not self.closed:
                self._send_error(self._pending_error)
                return
            self.update_reading()

    def _advance_held(self) -> None:
        """``_advance`` with bytes held back: parse them piece by piece.

        A piece is parsed while nothing waits for the app, or while the last
        request parsed is still receiving its body (so a body that came in
        one read is complete when its app starts, if it fits); requests run
        one at a time, while each finishes inline.
        """
        while not self.closed:
            if self._unfed is not None and (
                self.receiving is not None or (self.cycle is None and not self.queue)
            ):
                self._feed_next()
            elif self.cycle is None and self.queue:
                cycle = self.cycle = self.queue.popleft()
                cycle.run()
            else:
                break

    def response_complete(self, cycle: RequestCycle) -> None:
        """The last byte of ``cycle``'s response was handed to the transport."""
        stats = self.stats
        stats.in_flight -= 1
        stats.requests += 1
        if stats.requests == stats.request_limit:
            stats.reached_limit()
        self.served += 1
        if self.server.access_log:
            cycle.log_access()
        if cycle.waiter is not None:
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
        if self.queue or self._unfed is not None:
            if not self._starting and not self._start_scheduled:
                self._start_scheduled = True
                self.loop.call_soon(self._advance)
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
        if not self._starting:  # else _advance (or data_received's) does it next
            self.update_reading()

    def update_reading(self) -> None:
        """Let flow control pause or resume reading (see ``flow.py``)."""
        if self.closed:
            return
        queued = bool(self.queue) or self._unfed is not None
        cycle = self.receiving
        if cycle is None or cycle.response.state is COMPLETE:
            if queued or self.flow.read_paused:  # else reading goes on: the common case
                self.flow.update_reading(queued, 0)
        else:
            self.flow.update_reading(queued, cycle.body_size)

    def _fail(self, status: int) -> None:
        """The peer sent something we cannot take: answer in turn, then close."""
        self._parser_dead = True
        self._drop_parser()
        self.deadline = None
        receiving, self.receiving = self.receiving, None
        if receiving is not None and receiving is self.cycle:
            # The app is reading a body that turned out malformed or stalled: it
            # sees a disconnect, the client gets the error if nothing was sent yet.
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

    def _drop_parser(self) -> None:
        """Cut the parser <-> connection cycle and free what the parser buffered."""
        self.parser = _INERT_PARSER
        self._unfed = None
        self._url = b""
        self._headers = []
        self._request_line_tail = b""

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
