"""Adapters for the three plain asyncio interfaces: stream, protocol, socket.

These interfaces carry any protocol, so a *request* is not visible to us: for
the stream and protocol adapters one connection counts as one request (in
flight while it is open), which is what ``--max-requests`` and the dynamic
pool's idea of "busy" then mean.  A socket app's work is invisible to us.

Rules: these adapters cannot ask the user's code to wind down politely, so
graceful shutdown means: stop accepting, give live connections up to the
graceful timeout to finish by themselves, then close (stream/protocol) or
cancel (socket) what is left.  Counters are kept per connection.

TLS (``--ssl-certfile``) wraps the stream and protocol interfaces like any
other asyncio server (``ssl=``; no ALPN, the protocol is the app's).  A
socket app gets the raw listening socket and serves it itself, so TLS cannot
be put in front of it: that is a boot error saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from ..errors import BootError
from .base import HostedApp, StopReason, WorkerContext

__all__ = ["PlainProtocolApp", "SocketApp", "StreamApp"]

log = logging.getLogger("reuseport.worker")

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SocketServe = Callable[[socket.socket], Awaitable[None]]


async def _wait_or_give_up(tasks: set[asyncio.Task[None]], timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


class StreamApp(HostedApp):
    """``async def handler(reader, writer)`` served with ``asyncio.start_server``."""

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.handler = cast(StreamHandler, app)
        self.tasks: set[asyncio.Task[None]] = set()

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.ctx.stats
        stats.opened()
        stats.in_flight += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(cast("asyncio.Task[None]", task))
        try:
            await self.handler(reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream handler raised")
        finally:
            stats.closed()
            stats.in_flight -= 1
            stats.requests += 1
            if stats.requests == stats.request_limit:
                stats.reached_limit()
            self.tasks.discard(cast("asyncio.Task[None]", task))
            writer.close()

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        # What asyncio.start_server builds for each connection.
        return lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._run)

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await self.stop_accepting()
        await _wait_or_give_up(set(self.tasks), timeout)


class _Tracked(asyncio.Protocol):
    """Forwards every callback to the user's protocol; counts the connection."""

    __slots__ = ("inner", "owner", "transport")

    def __init__(self, inner: asyncio.Protocol, owner: PlainProtocolApp) -> None:
        self.inner = inner
        self.owner = owner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.owner.live.add(self)
        self.owner.drained.clear()
        stats = self.owner.ctx.stats
        stats.opened()
        stats.in_flight += 1
        try:
            self.inner.connection_made(transport)
        except BaseException:
            # The loop only logs this and leaves the connection open, so the
            # client would hang and a graceful stop would wait for it in vain.
            self._untrack()
            cast(Any, transport).abort()
            raise

    def connection_lost(self, exc: Exception | None) -> None:
        if self._untrack():
            self.inner.connection_lost(exc)

    def _untrack(self) -> bool:
        """Forget this connection; False if it was forgotten already."""
        if self not in self.owner.live:
            return False
        self.owner.live.discard(self)
        stats = self.owner.ctx.stats
        stats.closed()
        stats.in_flight -= 1
        stats.requests += 1
        if stats.requests == stats.request_limit:
            stats.reached_limit()
        if not self.owner.live:
            self.owner.drained.set()
        return True

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class PlainProtocolApp(HostedApp):
    """An ``asyncio.Protocol`` subclass or a zero-argument factory returning one."""

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.factory = cast(Callable[[], asyncio.Protocol], app)
        self.live: set[_Tracked] = set()
        self.drained = asyncio.Event()
        self.drained.set()

    def _make(self) -> asyncio.Protocol:
        inner = self.factory()
        if isinstance(inner, asyncio.BufferedProtocol):
            # get_buffer/buffer_updated would need their own forwarding; keep
            # buffered protocols untracked rather than break them.
            return inner
        return _Tracked(inner, self)

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        return self._make

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await self.stop_accepting()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), timeout)
        for conn in list(self.live):
            if conn.transport is not None:
                cast(Any, conn.transport).abort()


class SocketApp(HostedApp):
    """``async def serve(sock)``: any asyncio server, run until cancelled.

    It is handed every socket, UDP ones included: what it does with them is its own.
    """

    datagrams = True

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        if ctx.tls is not None:
            raise BootError(
                "--ssl-certfile cannot apply to a socket app: it serves the raw listening "
                "socket itself; give its server the certificate (ssl=...) instead"
            )
        self.serve_fn = cast(SocketServe, app)
        self.tasks: set[asyncio.Task[None]] = set()

    async def _run(self, sock: socket.socket) -> None:
        try:
            await self.serve_fn(sock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("socket app raised")
            raise

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        for sock in sockets:
            task = asyncio.create_task(self._run(sock))
            self.tasks.add(task)
        # Give each coroutine one step to start its server; a crash at start-up
        # surfaces here as a boot error instead of a silent dead worker.
        await asyncio.sleep(0)
        for task in self.tasks:
            if task.done() and task.exception() is not None:
                raise cast(BaseException, task.exception())

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=timeout)
