"""The ASGI side of one request: the app call and its ``receive``/``send`` pair.

Rules:

* The connection (``protocol.py``) parses, queues and starts requests; a
  ``RequestCycle`` is what one of them looks like to the app.  It gets the
  request body from the connection (``body``/``body_size``, ``request``,
  ``wake()``), hands response events to its ``ResponseFramer`` (``framing.py``)
  and writes the bytes that come back, and reports the end of the response
  with ``proto.response_complete(cycle)``.
* ``run()`` calls the app.  Its first step runs inline (``_eager.py``); a Task
  exists only if it suspends, and then the response head a step left held
  back is flushed: right after the first step, or one callback later for a
  ``http.response.start`` sent from a later step (the next body usually comes
  in the same step and takes the head along).
* ``send()`` awaits while the transport is paused for writing; after the
  client went away it raises ``ClientDisconnected`` (ASGI spec 2.4), and
  ``receive()`` answers ``http.disconnect``, as it does once the response is
  complete.
* App errors are logged on ``reuseport.http`` and answered with 500 (before
  the response started) or by closing the connection (after); they never
  escape into the event loop.

A second app interface (WSGI, issue 13) is a sibling of this class, built by
the connection from the same parsed parts (the constructor's arguments): the
connection needs from a cycle only ``run()``, the body buffer with
``wake()``, ``request``, ``response``, ``client_gone()`` and
``log_access()``; everything ASGI (the scope, ``root_path`` in the path, the
lifespan state copy, the message types) is here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ._eager import start_eager
from .access import format_client
from .flow import RECHECK_AFTER
from .framing import BODY, COMPLETE, HEAD_HELD, WAITING, ResponseFramer

if TYPE_CHECKING:
    from .protocol import HttpProtocol

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "Message",
    "Receive",
    "RequestCycle",
    "RequestState",
    "Scope",
    "Send",
    "format_client",
]

logger = logging.getLogger("reuseport.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT: Message = {"type": "http.disconnect"}


class ClientDisconnected(OSError):
    """``send()`` was called after the client went away (ASGI spec 2.4)."""


class RequestState(IntEnum):
    """The request body as the app sees it."""

    RECEIVING = 0  # more body may arrive
    RECEIVED = 1  # the whole body arrived; the app has not had its end yet
    DELIVERED = 2  # the app got the last body message
    GONE = 3  # the client went away, or its body was malformed


# Module-level aliases: a global lookup is cheaper than an enum class attribute.
RECEIVING = RequestState.RECEIVING
RECEIVED = RequestState.RECEIVED
DELIVERED = RequestState.DELIVERED
GONE = RequestState.GONE


class RequestCycle:
    """One request and its response; the ASGI ``receive``/``send`` pair."""

    __slots__ = (
        "body",
        "body_size",
        "expect_100",
        "proto",
        "request",
        "response",
        "scope",
        "started",
        "task",
        "waiter",
    )

    def __init__(
        self,
        proto: HttpProtocol,
        response: ResponseFramer,
        method: str,
        http_version: str,
        path: str,
        raw_path: bytes,
        query: bytes,
        client: tuple[str, int] | None,
        scheme: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        server = proto.server
        root_path = server.root_path
        if root_path:
            path = root_path + path
            raw_path = server.root_path_bytes + raw_path
        self.scope: Scope = {
            "type": "http",
            # One dict per worker, shared by its requests (apps must treat it
            # as read-only): a dict per request cost 1 % of a hello-world
            # request, this key 0.35 % (callgrind, scripts/profile_http.py).
            "extensions": server.http_extensions,
            "asgi": server.asgi_info,  # one per worker too, as read-only as the above
            "http_version": http_version,
            "server": proto.sockname,
            "client": client,
            "scheme": scheme,
            "method": method,
            "root_path": root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
            "state": server.state.copy(),
        }
        self.proto = proto
        self.response = response
        self.request = RECEIVING
        self.expect_100 = False  # send "100 Continue" on the first receive()
        self.body: list[bytes] = []  # parsed, not yet handed to the app
        self.body_size = 0
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        # For the access log's request time; read no clock when it is off.
        self.started = proto.loop.time() if server.access_log is not None else 0.0

    # --- the app call --------------------------------------------------------

    def run(self) -> None:
        """Call the app (see the module docstring); the connection made us current."""
        proto = self.proto
        server = proto.server
        limit = server.limit_concurrency
        if limit is not None and server.active >= limit:
            proto.transport.write(self.response.refuse(503))
            proto.response_complete(self)
            return
        server.active += 1
        try:
            awaitable = server.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self.app_done(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return
        task = start_eager(proto.loop, awaitable, self.app_done)
        if task is not None:
            # Still running: asyncio keeps only weak references to tasks.
            self.task = task
            server.tasks.add(task)
            self.flush_head()

    # --- ASGI receive -------------------------------------------------------

    async def receive(self) -> Message:
        if self.expect_100:
            self.expect_100 = False
            if self.response.state is WAITING and not self.proto.closed:
                self.proto.transport.write(_CONTINUE)
        while True:
            state = self.request
            if state is GONE or self.response.state is COMPLETE:
                return _DISCONNECT
            if state is not DELIVERED and (self.body or state is RECEIVED):
                chunks = self.body
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.body = []
                size, self.body_size = self.body_size, 0
                more = state is RECEIVING
                if not more:
                    self.request = DELIVERED
                if size > RECHECK_AFTER:
                    self.proto.update_reading()
                return {"type": "http.request", "body": body, "more_body": more}
            proto = self.proto
            waiter = proto.loop.create_future()
            self.waiter = waiter
            proto.update_reading()
            # Waiting for body bytes still to come (not for a disconnect after
            # the whole body): --body-read-timeout runs meanwhile.
            stall = state is RECEIVING
            if stall:
                proto.body_wait(True)
            try:
                await waiter
            finally:
                self.waiter = None
                if stall:
                    proto.body_wait(False)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def client_gone(self) -> None:
        self.request = GONE
        self.wake()

    # --- ASGI send ----------------------------------------------------------

    async def send(self, message: Message) -> None:
        proto = self.proto
        if proto.flow.write_paused and self.request is not GONE:
            await proto.flow.drain()
        if self.request is GONE:
            raise ClientDisconnected("the client closed the connection")
        response = self.response
        kind = message["type"]
        if kind == "http.response.body":
            state = response.state
            if state is not HEAD_HELD and state is not BODY:
                if state is WAITING:
                    raise RuntimeError(
                        "the ASGI app sent 'http.response.body' before 'http.response.start'"
                    )
                raise RuntimeError(
                    "the ASGI app sent 'http.response.body' after the response was complete"
                )
            data = response.body(message.get("body", b""), message.get("more_body", False))
            if data:
                proto.transport.write(data)
            if response.state is COMPLETE:
                if response.left:
                    logger.error(
                        "the ASGI app sent %d body bytes fewer than its Content-Length header "
                        "says; closing the connection",
                        response.left,
                    )
                proto.response_complete(self)
        elif kind == "http.response.start":
            if response.state is not WAITING:
                raise RuntimeError("the ASGI app sent 'http.response.start' twice")
            # A client still waiting for "100 Continue" may or may not send its
            # body now: the connection is in an unknown state, so it ends.
            close = proto.shutting_down or (self.expect_100 and self.request is RECEIVING)
            response.start(message["status"], message.get("headers", ()), close)
            if self.task is not None:
                # A later step: flush the head if this step ends without a body.
                proto.loop.call_soon(self.flush_head)
        elif kind == "http.response.trailers":
            # We do not offer the http.response.trailers extension, so an app
            # sending them is confused; the body (if complete) stands, but the
            # connection cannot be trusted for another request.
            logger.warning(
                "the ASGI app sent 'http.response.trailers', which reuseport does not "
                "support (the extension is not offered in the scope); closing the connection"
            )
            response.keep_alive = False
            if response.state is COMPLETE:
                proto.close()
        else:
            raise RuntimeError(f"the ASGI app sent an unexpected message type {kind!r}")

    def flush_head(self) -> None:
        """Send a head held back for joining once the app waits for something."""
        if self.response.state is not HEAD_HELD or self.request is GONE or self.proto.closed:
            return
        self.proto.transport.write(self.response.flush_head())

    # --- app lifecycle -------------------------------------------------------

    def app_done(self, exc: BaseException | None) -> None:
        proto = self.proto
        server = proto.server
        server.active -= 1
        task = self.task
        if task is not None:
            server.tasks.discard(task)
            self.task = None
        if exc is None and self.response.state is COMPLETE:
            return  # the common case, without a call
        try:
            self._app_done(exc)
        except Exception:  # pragma: no cover - a bug here must not kill the loop
            logger.exception("reuseport bug while finishing a request")
            proto.abort()

    def _app_done(self, exc: BaseException | None) -> None:
        proto = self.proto
        state = self.response.state
        if exc is None:
            if state is COMPLETE or self.request is GONE:
                return
            if state is WAITING:
                logger.error("the ASGI app returned without sending a response")
                self._fail_before_start()
            else:
                logger.error("the ASGI app returned without completing its response")
                proto.close()
            return
        if self.request is GONE or proto.closed:
            logger.debug("ASGI app ended with %r after the client went away", exc)
            return
        if isinstance(exc, asyncio.CancelledError):
            logger.debug("ASGI app was cancelled")
        else:
            logger.error("Exception in ASGI application", exc_info=exc)
        if state is COMPLETE:
            return  # the response was sent; the error came later (e.g. a background task)
        if state is WAITING:
            self._fail_before_start()
        else:
            proto.close()

    def log_access(self) -> None:
        access_log = self.proto.server.access_log
        if access_log is not None:
            access_log.request(self, self.proto.loop.time())

    def _fail_before_start(self) -> None:
        self.proto.transport.write(self.response.refuse(500))
        self.proto.response_complete(self)
