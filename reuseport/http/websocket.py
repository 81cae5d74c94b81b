"""WebSocket for ASGI apps (the ``websocket`` scope, ASGI spec 2.4).

The connection (``protocol.py``) parses the upgrade request like any other;
when it is a WebSocket handshake it hands the transport over
(``WebSockets.start``): from then on ``WebSocketProtocol`` is the transport's
protocol and ``HttpProtocol`` is out of the picture.

Rules of this module:

* Framing and the handshake are the ``websockets`` package's sans-IO
  ``ServerProtocol`` (an optional extra: ``pip install 'reuseport[websockets]'``);
  Two of its objects serve one connection: one in CONNECTING state checks
  the handshake and builds the ``101`` (or a rejection) from the headers our
  parser already read, and one created OPEN, holding the negotiated
  extensions, frames the messages (a CONNECTING ``ServerProtocol`` would
  parse the request bytes again).
* Two exceptions, for speed, on an OPEN connection without compression: the
  app's messages are framed here (a 2-10 byte header in front of the
  payload, RFC 6455 5.2), and a read that holds exactly one final, masked,
  valid-header text or binary frame, while the library's parser is between
  frames and no fragmented message is in progress, is unmasked and
  delivered here (``_one_message``).  Everything else (control frames,
  fragments, partial or several frames, oversized or malformed ones, any
  protocol error) is the library's.  The library's frame parser and
  serializer cost more per echoed message than all the rest of our code.
* The app sees the handshake first (``websocket.connect``), and answers with
  ``websocket.accept`` (``subprotocol``, ``headers``), ``websocket.close``
  (answered ``403``), or the denial extension ``websocket.http.response.start``
  / ``.body`` (advertised in ``scope["extensions"]``), framed by our
  ``ResponseFramer``.  A handshake the library finds invalid (a bad key or
  version) is answered by it (``400``/``426``) and never reaches the app.
* Flow control both ways: received messages wait in a queue of at most
  ``--ws-max-queue`` messages (plus what one read held) and reading pauses
  while it is full; ``send()`` awaits while the transport's write buffer is
  above its high-water mark.  ``--ws-max-size`` bounds one message (the
  library closes with 1009).
* Keep-alive: a ping every ``--ws-ping-interval`` seconds; no pong within
  ``--ws-ping-timeout`` fails the connection (1011).  A closing handshake the
  peer does not finish within ``_CLOSE_TIMEOUT`` ends with an abort.
* The client going away (close frame or lost connection) gives the app
  ``websocket.disconnect`` with the close code (1006 when there was no close
  frame); a ``send`` after that raises ``ClientDisconnected``.
* Graceful stop: ``shutdown()`` changes nothing (the app has the drain event
  in ``scope["extensions"]["reuseport.drain"]``); shortly before the
  graceful deadline ``going_away(reason)`` closes with 1001 (stop,
  scale-down) or 1012 (reload, recycle), so the peer knows whether to
  reconnect at once.
* App errors are logged on ``reuseport.http``: before the handshake is
  answered the client gets ``500``, after it a close with 1011.

Which library, measured (``scripts/profile_ws.py``: an in-process echo on
the server side, client frames pre-masked, text decoded to ``str`` and
fragments joined as the ASGI layer needs; Python 3.11.7, websockets 17.4,
wsproto 1.3.2, no compression; callgrind instructions per message, and a
wall-clock rate of one run on a busy 2-core machine):

    message          websockets                wsproto
    32 B text         42,100 ins, 189k msg/s   129,562 ins, 103k msg/s
    64 KiB binary    269,951 ins, 116k msg/s   1,842,670 ins, 6.2k msg/s

websockets costs a third of wsproto's instructions for small messages and a
seventh for 64 KiB ones (its C extension unmasks; wsproto does it in Python),
so websockets it is.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, cast

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState, ProtocolError
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - built without its C extension
    from websockets.utils import apply_mask

from ..config import Config
from ..connections import ManagedConnection, StopReason
from .cycle import ClientDisconnected, Message, Scope
from .flow import FlowControl
from .framing import COMPLETE, ResponseFramer

if TYPE_CHECKING:
    from .protocol import HttpProtocol
    from .server import HttpServer

__all__ = ["Phase", "WebSocketProtocol", "WebSockets", "close_code_for", "websocket_scope"]

logger = logging.getLogger("reuseport.http")
access_logger = logging.getLogger("reuseport.access")
# The library logs every open and close at INFO; that is access-log material.
_library_logger = logging.getLogger("reuseport.websocket")
_library_logger.setLevel(logging.WARNING)

_CLOSE_TIMEOUT = 10.0  # seconds the peer gets to answer our close frame
_EARLY_LIMIT = 64 * 1024  # bytes read before the app accepted, before reading pauses
_CONNECT: Message = {"type": "websocket.connect"}
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_STATE_OPEN = State.OPEN
# The two header bytes of an unmasked final text (0x81) or binary (0x82)
# frame of 0 to 125 bytes, by opcode and length.
_HEADS = tuple(tuple(bytes((head, length)) for length in range(126)) for head in (0x81, 0x82))


class Phase(IntEnum):
    """Where one WebSocket connection is."""

    CONNECTING = 0  # the handshake arrived; the app has not answered it
    OPEN = 1  # accepted: messages flow both ways
    DENYING = 2  # the app answers the handshake with an HTTP response
    CLOSING = 3  # a close frame went out: waiting for the peer's, or for the transport
    CLOSED = 4  # the transport is gone


_CONNECTING = Phase.CONNECTING
_OPEN = Phase.OPEN
_DENYING = Phase.DENYING
_CLOSING = Phase.CLOSING
_CLOSED = Phase.CLOSED


def close_code_for(reason: StopReason) -> tuple[int, str]:
    """The close code and reason a stopping worker sends its WebSocket clients."""
    if reason.restarting:
        return CloseCode.SERVICE_RESTART, "server restarting"
    return CloseCode.GOING_AWAY, "server going away"


def websocket_scope(
    http_scope: Scope, drain: dict[str, Any], subprotocols: list[str] | None = None
) -> Scope:
    """The ASGI ``websocket`` scope for a handshake parsed as ``http_scope``."""
    if subprotocols is None:
        subprotocols = offered_subprotocols(http_scope["headers"])
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": http_scope["http_version"],
        "scheme": "wss" if http_scope["scheme"] == "https" else "ws",
        "server": http_scope["server"],
        "client": http_scope["client"],
        "root_path": http_scope["root_path"],
        "path": http_scope["path"],
        "raw_path": http_scope["raw_path"],
        "query_string": http_scope["query_string"],
        "headers": http_scope["headers"],
        "subprotocols": subprotocols,
        "state": http_scope["state"],
        "extensions": {"websocket.http.response": {}, "reuseport.drain": drain},
    }


def offered_subprotocols(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a client offers, in its order (``Sec-WebSocket-Protocol``)."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return offered


class WebSockets:
    """What every WebSocket connection of one app in one worker shares."""

    def __init__(self, server: HttpServer, config: Config) -> None:
        self.server = server
        self.max_size = config.ws_max_size
        self.max_queue = config.ws_max_queue
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.extensions = (
            enable_server_permessage_deflate(None) if config.ws_per_message_deflate else None
        )
        self.server_header = "reuseport" if config.server_header else None

    def start(self, http: HttpProtocol, http_scope: Scope, tail: bytes) -> None:
        """Take over ``http``'s transport for the handshake parsed as ``http_scope``."""
        ws = WebSocketProtocol(self, http, http_scope)
        http.transport.set_protocol(ws)
        ws.begin(tail)


class WebSocketProtocol(asyncio.Protocol, ManagedConnection):
    """One WebSocket connection and its ASGI ``receive``/``send`` (see the module docstring)."""

    def __init__(self, sockets: WebSockets, http: HttpProtocol, http_scope: Scope) -> None:
        server = sockets.server
        self.sockets = sockets
        self.server = server
        self.loop = server.loop
        self.stats = server.stats
        self.transport = http.transport
        self.flow: FlowControl = http.flow
        self.client = http.client
        self.scope = websocket_scope(http_scope, server.drain_extension)
        self.phase = _CONNECTING
        self.connect_delivered = False
        self.queue: deque[Message] = deque()  # received, not yet taken by the app
        self.disconnect: Message | None = None  # queued once the connection ends
        # receive() waiting: completed with the next message, or None to look again
        self.waiter: asyncio.Future[Message | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.early = b""  # bytes read before the app accepted
        self.fragments: list[bytes] = []  # the message being received, when fragmented
        self.fragment_text = False
        self.subprotocol: str | None = None
        self.response: ResponseFramer | None = None  # the denial response
        self.timer: asyncio.TimerHandle | None = None  # ping, pong deadline or close timeout
        self.ping_payload = b""
        self.pings = 0
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in http_scope["headers"]
        )
        path = http_scope["raw_path"].decode("latin-1")
        if http_scope["query_string"]:
            path += "?" + http_scope["query_string"].decode("latin-1")
        self.request = Request(path, headers)

        def select_subprotocol(protocol: ServerProtocol, offered: object) -> Subprotocol | None:
            # The app chooses in websocket.accept; the library only writes it down.
            return cast(Subprotocol | None, self.subprotocol)

        self.handshake = ServerProtocol(
            extensions=sockets.extensions,
            select_subprotocol=select_subprotocol,
            logger=_library_logger,
        )
        self.conn: ServerProtocol | None = None  # the framing side, once accepted
        # The library's parser has been given whole frames only, so a read
        # holding one whole message may bypass it (see _one_message).
        self.aligned = True
        self.compressed = False  # an extension (permessage-deflate) was negotiated

    # --- the hand-off --------------------------------------------------------

    def begin(self, tail: bytes) -> None:
        """The transport is ours: check the handshake, then call the app."""
        server = self.server
        server.connections.add(self)
        self.early = tail
        # The library checks the handshake (key, version, extension offers);
        # an invalid one gets its answer (400, 426) and never reaches the app.
        response = self.handshake.accept(self.request)
        if response.status_code != 101:
            self._write_response(response)
            self._log_access(response.status_code)
            self.close()
            return
        limit = server.limit_concurrency
        if limit is not None and server.active >= limit:
            self.transport.write(server.defaults.error_response(503))
            self._log_access(503)
            self.close()
            return
        self.stats.in_flight += 1
        server.active += 1
        self.flow.resume_reading()
        task = self.loop.create_task(self._run_app())
        self.task = task
        server.tasks.add(task)

    async def _run_app(self) -> None:
        error: BaseException | None = None
        try:
            await self.server.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            error = exc
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        finally:
            self._app_done(error)

    def _app_done(self, exc: BaseException | None) -> None:
        server = self.server
        server.active -= 1
        task = self.task
        if task is not None:
            server.tasks.discard(task)
            self.task = None
        stats = self.stats
        stats.in_flight -= 1
        stats.requests += 1
        phase = self.phase
        if exc is not None and phase is not _CLOSED:
            if isinstance(exc, asyncio.CancelledError):
                logger.debug("ASGI WebSocket app was cancelled")
            elif not isinstance(exc, ClientDisconnected):
                logger.error("Exception in ASGI application (WebSocket)", exc_info=exc)
        if phase is _CONNECTING:
            if exc is None:
                logger.error(
                    "the ASGI app returned without accepting or closing the WebSocket; "
                    "answering 403"
                )
                self._refuse(403)
            else:
                self._refuse(500)
        elif phase is _DENYING:
            logger.error("the ASGI app returned without completing its denial response")
            self.close()
        elif phase is _OPEN:
            if exc is None:
                self._close_frame(CloseCode.NORMAL_CLOSURE, "")
            else:
                self._close_frame(CloseCode.INTERNAL_ERROR, "")

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # set_protocol() does not call it; the transport came from the HTTP side.
        pass  # pragma: no cover

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase is _CLOSED:
            return
        self.phase = _CLOSED
        self._cancel_timer()
        self.server.connections.discard(self)
        self.stats.connections -= 1
        self.flow.release()
        self._queue_disconnect()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            if self.phase is _CONNECTING:
                # A client must wait for the 101 before it sends frames; keep
                # what an eager one sent for after the accept, within bounds.
                self.early += data
                if len(self.early) > _EARLY_LIMIT:
                    self.flow.pause_reading()
            return
        if self.aligned:
            if self._one_message(conn, data):
                return
            # The library reads from here on, unless this read ends on a frame
            # boundary too (its parser then waits for a new frame again).
            self.aligned = _whole_frames(data)
        conn.receive_data(data)
        events = conn.events_received()
        if events:
            self._handle(events)
        if conn.writes:  # a pong, a close, or the end of stream (data frames add none)
            self._flush()
        queue = self.queue
        if queue and len(queue) >= self.sockets.max_queue and self.phase is _OPEN:
            self.flow.pause_reading()

    def _one_message(self, conn: ServerProtocol, data: bytes) -> bool:
        """Deliver ``data`` if it is exactly one whole message the library need not see.

        That is a final, masked, unextended text or binary frame, when no
        fragmented message is in progress, no extension was negotiated and
        the library's connection is OPEN with its parser between frames
        (``self.aligned``): what the library would do with it is exactly
        unmask and hand it over.  Anything else (control frames, fragments,
        oversized or malformed frames, part of a frame, several frames) is
        the library's, which also judges and answers protocol errors.
        """
        size = len(data)
        if size < 6 or self.fragments or self.compressed or conn.state is not _STATE_OPEN:
            return False
        first = data[0]
        length = data[1] ^ 0x80  # the mask bit must be set: a server reads masked frames only
        if (first != 0x81 and first != 0x82) or length > 127:
            return False
        start = 2
        if length == 126:
            if size < 8:
                return False
            length, start = int.from_bytes(data[2:4]), 4
        elif length == 127:
            if size < 14:
                return False
            length, start = int.from_bytes(data[2:10]), 10
        if size != start + 4 + length or length > self.sockets.max_size:
            return False
        self._deliver(apply_mask(data[start + 4 :], data[start : start + 4]), first == 0x81)
        if conn.writes:  # invalid UTF-8 failed the connection
            self._flush()
        queue = self.queue
        if queue and len(queue) >= self.sockets.max_queue and self.phase is _OPEN:
            self.flow.pause_reading()
        return True

    def eof_received(self) -> bool | None:
        conn = self.conn
        if conn is not None and conn.state is not State.CLOSED:
            conn.receive_eof()
            self._handle(conn.events_received())
            self._flush()
        return None

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # --- ManagedConnection ---------------------------------------------------

    def shutdown(self) -> None:
        # A WebSocket has no "between requests": the app sees the drain event
        # and may close by itself; going_away() closes it before the deadline.
        pass

    def going_away(self, reason: StopReason) -> bool:
        if self.phase is _OPEN:
            code, text = close_code_for(reason)
            self._close_frame(code, text)
            return True
        return self.phase is _CLOSING

    def abort(self) -> None:
        if self.phase is not _CLOSED:
            self.transport.abort()

    def close(self) -> None:
        if self.phase is not _CLOSED and not self.transport.is_closing():
            self.transport.close()

    # --- received frames -----------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        # An OPEN ServerProtocol only gives frames (annotated, not cast()).
        frame: Frame
        for frame in events:
            opcode = frame.opcode
            # The parser gives bytes (BytesLike is what a sender may pass);
            # annotated, not cast(): that would be a call per frame.
            data: bytes = frame.data  # type: ignore[assignment]
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._deliver(data, opcode is _TEXT)
                else:
                    self.fragments = [data]
                    self.fragment_text = opcode is _TEXT
            elif opcode is _CONT:
                self.fragments.append(data)
                if frame.fin:
                    data = b"".join(self.fragments)
                    self.fragments = []
                    self._deliver(data, self.fragment_text)
            elif opcode is _PONG:
                if data == self.ping_payload and data:
                    self.ping_payload = b""
                    self._schedule_ping()
            elif opcode is Opcode.CLOSE:
                self._cancel_timer()
                self._queue_disconnect()

    def _deliver(self, data: bytes, text: bool) -> None:
        if text:
            try:
                message: Message = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError as exc:
                assert self.conn is not None
                self.conn.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self._queue_disconnect()
                return
        else:
            message = {"type": "websocket.receive", "bytes": data}
        # A receive() waiting (so nothing is queued) gets the message handed
        # over: no queue round trip, and it returns as soon as its task runs.
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        self.queue.append(message)

    def _queue_disconnect(self) -> None:
        if self.disconnect is not None:
            return
        code: int = CloseCode.ABNORMAL_CLOSURE
        reason = ""
        conn = self.conn
        if conn is not None:
            close = conn.close_rcvd or conn.close_sent
            if close is not None:
                code, reason = close.code, close.reason
        self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)  # receive() looks again: the disconnect is next

    # --- ASGI receive --------------------------------------------------------

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return _CONNECT
        while True:
            queue = self.queue
            if queue:
                message = queue.popleft()
                if self.flow.read_paused and len(queue) < self.sockets.max_queue:
                    self.flow.resume_reading()
                return message
            if self.disconnect is not None:
                return self.disconnect
            if self.phase is _CLOSED:  # gone before the handshake was answered
                self._queue_disconnect()
                continue
            # Whoever completes the waiter clears self.waiter; a cancelled
            # receive() clears it here, so nothing is handed to a dead waiter.
            waiter = self.waiter = self.loop.create_future()
            try:
                message = await waiter
            except BaseException:
                if self.waiter is waiter:
                    self.waiter = None
                elif waiter.done() and not waiter.cancelled():
                    # handed over, then the task was cancelled: keep it for a later receive()
                    handed: Message | None = waiter.result()
                    if handed is not None:
                        self.queue.appendleft(handed)
                raise
            if message is not None:
                return message  # type: ignore[no-any-return]

    # --- ASGI send -----------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        phase = self.phase
        if phase is _OPEN and self.flow.write_paused:
            await self.flow.drain()
            phase = self.phase
        if phase is _OPEN:
            if kind == "websocket.send":
                self._send_message(message)
            elif kind == "websocket.close":
                self._close_frame(
                    message.get("code") or CloseCode.NORMAL_CLOSURE, message.get("reason") or ""
                )
            else:
                raise RuntimeError(f"the ASGI app sent {kind!r} on an accepted WebSocket")
        elif phase is _CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._refuse(403)
            elif kind == "websocket.http.response.start":
                self._start_denial(message)
            else:
                raise RuntimeError(
                    f"the ASGI app sent {kind!r} before answering the WebSocket handshake "
                    "(expected 'websocket.accept', 'websocket.close' or "
                    "'websocket.http.response.start')"
                )
        elif phase is _DENYING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"the ASGI app sent {kind!r} during its denial response")
            self._denial_body(message)
        elif kind == "websocket.close":
            return  # closing already (the peer's close, or ours): nothing to add
        else:
            raise ClientDisconnected("the WebSocket is closed")

    def _send_message(self, message: Message) -> None:
        conn = self.conn
        assert conn is not None
        text = message.get("text")
        if text is not None:
            data = text.encode()
            head = 0x81
        else:
            data = message.get("bytes")
            if data is None:
                raise RuntimeError("the ASGI app sent 'websocket.send' without 'bytes' or 'text'")
            head = 0x82
        if self.compressed or conn.state is not _STATE_OPEN:
            # Compression, or a state the library has to judge: its framing.
            if head == 0x81:
                conn.send_text(data)
            else:
                conn.send_binary(data)
            self._flush()
            return
        # An unmasked, unfragmented, unextended data frame: FIN + opcode and
        # the length (RFC 6455 5.2).  The library's serializer costs more per
        # message than the rest of this send() and copies the payload twice.
        length = len(data)
        if length < 126:
            frame = _HEADS[head - 0x81][length] + data
        elif length < 65536:
            frame = struct.pack("!BBH", head, 126, length) + data
        else:
            frame = struct.pack("!BBQ", head, 127, length) + data
        self.transport.write(frame)

    def _accept(self, message: Message) -> None:
        self.subprotocol = message.get("subprotocol")
        response = self.handshake.accept(self.request)
        if response.status_code != 101:  # pragma: no cover - it passed in begin()
            self._write_response(response)
            self.close()
            return
        for name, value in message.get("headers") or ():
            response.headers[_text(name)] = _text(value)
        if self.sockets.server_header and "Server" not in response.headers:
            response.headers["Server"] = self.sockets.server_header
        self.transport.write(response.serialize())
        self._log_access(101)
        conn = ServerProtocol(
            state=State.OPEN, max_size=self.sockets.max_size, logger=_library_logger
        )
        conn.extensions = self.handshake.extensions
        self.compressed = bool(conn.extensions)
        self.conn = conn
        self.phase = _OPEN
        self._schedule_ping()
        early, self.early = self.early, b""
        if self.flow.read_paused and len(self.queue) < self.sockets.max_queue:
            self.flow.resume_reading()
        if early:
            self.data_received(early)

    def _select_subprotocol(self, protocol: ServerProtocol, offered: object) -> Subprotocol | None:
        # The app chooses in websocket.accept; the library only writes it down.
        return cast(Subprotocol | None, self.subprotocol)

    def _refuse(self, status: int) -> None:
        if self.phase is not _CONNECTING:
            return
        self.phase = _CLOSING
        self.transport.write(self.server.defaults.error_response(status))
        self._log_access(status)
        self.close()

    def _start_denial(self, message: Message) -> None:
        response = ResponseFramer(self.server.defaults, False, False, False)
        response.start(message["status"], message.get("headers", ()), True)
        self.response = response
        self.phase = _DENYING

    def _denial_body(self, message: Message) -> None:
        response = self.response
        assert response is not None
        data = response.body(message.get("body", b""), message.get("more_body", False))
        if data:
            self.transport.write(data)
        if response.state is COMPLETE:
            self.phase = _CLOSING
            self._log_access(response.status)
            self.close()

    # --- closing and keep-alive ---------------------------------------------

    def _close_frame(self, code: int, reason: str) -> None:
        """Start the closing handshake (we close first); the peer gets _CLOSE_TIMEOUT."""
        conn = self.conn
        if conn is None or self.phase is not _OPEN:
            return
        try:
            conn.send_close(code, reason)
        except (ProtocolError, InvalidState) as exc:
            raise RuntimeError(f"cannot close the WebSocket with code {code!r}: {exc}") from None
        self.phase = _CLOSING
        self._flush()
        self._cancel_timer()
        self.flow.resume_reading()  # the peer's close frame must get through
        if self.phase is _CLOSING:
            self.timer = self.loop.call_later(_CLOSE_TIMEOUT, self.abort)

    def _flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        for data in conn.data_to_send():
            if data:
                self.transport.write(data)
            else:  # the library's end of stream: a server closes the TCP connection
                if self.phase is _OPEN:
                    self.phase = _CLOSING
                self.close()

    def _schedule_ping(self) -> None:
        self._cancel_timer()
        interval = self.sockets.ping_interval
        if interval > 0 and self.phase is _OPEN:
            self.timer = self.loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        self.timer = None
        conn = self.conn
        if conn is None or self.phase is not _OPEN:
            return
        self.pings += 1
        self.ping_payload = struct.pack("!I", self.pings)
        conn.send_ping(self.ping_payload)
        self._flush()
        timeout = self.sockets.ping_timeout
        if timeout > 0:
            self.timer = self.loop.call_later(timeout, self._ping_timed_out)
        else:
            self.ping_payload = b""
            self._schedule_ping()

    def _ping_timed_out(self) -> None:
        self.timer = None
        conn = self.conn
        if conn is None or self.phase is not _OPEN:
            return
        logger.debug("WebSocket client %s did not answer a ping; closing", self.client)
        conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._queue_disconnect()
        self._flush()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- writing responses ---------------------------------------------------

    def _write_response(self, response: Response) -> None:
        self.phase = _CLOSING
        self.transport.write(response.serialize())

    def _log_access(self, status: int) -> None:
        if self.server.access_log:
            scope = self.scope
            query = scope["query_string"]
            path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            client = scope["client"]
            access_logger.info(
                '%s - "WebSocket %s" %d',
                f"{client[0]}:{client[1]}" if client else "-",
                path,
                status,
            )


def _whole_frames(data: bytes) -> bool:
    """Whether ``data`` is a run of whole frames (their headers only are read)."""
    size = len(data)
    at = 0
    while at < size:
        if at + 2 > size:
            return False
        second = data[at + 1]
        length = second & 0x7F
        at += 2
        if length == 126:
            length = int.from_bytes(data[at : at + 2])
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8])
            at += 8
        at += length + (4 if second & 0x80 else 0)
    return at == size


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
