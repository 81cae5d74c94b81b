"""What a worker needs from an application adapter, and what it gives one.

Rules: an adapter turns one user object (ASGI app, stream handler, Protocol
factory, socket coroutine, or the built-in demo) into a ``HostedApp``.  The
worker drives every adapter through the same three steps:

1. ``await startup()`` - app-level preparation before any socket is served
   (ASGI lifespan startup).  Raise ``BootError`` to refuse to start.
2. ``await serve(sockets)`` - start accepting on the listening sockets and
   return once it does.
3. ``await shutdown(timeout, reason)`` - stop accepting, let in-flight work
   finish for up to ``timeout`` seconds, close idle keep-alive connections
   politely, then run app-level shutdown.  It must return within about
   ``timeout``.  ``reason`` (``StopReason``: stop, scale-down, reload,
   recycle) is what a protocol may tell its peer (a WebSocket's close code).

What an adapter can serve: ``streams`` (listening TCP, unix and fd sockets)
and ``datagrams`` (UDP sockets), class attributes the worker checks before
serving (``apps.host``), and ``proxy_protocol``: whether its stream
connections can start with a PROXY header (``--proxy-protocol``: the HTTP
adapters and the demo, through ``proxystage.ProxyFront``).  Most adapters
serve streams only; the datagram adapter serves UDP only; the demo and the
socket adapter serve both.

``--max-requests``: the worker turns keep-alive off (``set_keep_alive``:
every connection closes after its next response) and pauses accepting
(``pause_accepting``) while its replacement boots; ``resume_accepting``
serves the same sockets again if the replacement fails.  Both need a
protocol factory; an app that accepts by itself keeps accepting.

Sibling rescue: an adapter whose connections come from a protocol factory
says so in ``protocol_factory()``; the worker may then ``serve_rescued(conn)``
a connection it accepted from a stalled sibling's queue, with the same
factory, counted in ``stats.rescued``.  An app that accepts by itself (the
``socket`` interface) returns None and is never asked.

Counters go to ``WorkerContext.stats`` (plain attributes, no locks: the worker
copies them into the shared scoreboard on its heartbeat).  ``WorkerStats``,
``ManagedConnection``, ``Connections`` and ``StopReason`` live in
``reuseport.connections`` (below both this package and ``reuseport.http``)
and are re-exported here.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import Config, Mode
from ..connections import Connections, ManagedConnection, StopReason, WorkerStats

__all__ = [
    "Connections",
    "HostedApp",
    "ManagedConnection",
    "StopReason",
    "WorkerContext",
    "WorkerStats",
]


log = logging.getLogger("reuseport.worker")


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerContext:
    """Who this worker is; handed to every adapter."""

    pid: int
    slot: int
    generation: int
    mode: Mode  # the effective mode: REUSEPORT or SHARED, never AUTO
    config: Config
    stats: WorkerStats = field(default_factory=WorkerStats)
    tls: ssl.SSLContext | None = None  # serve TLS on every socket (--ssl-certfile)


class HostedApp(abc.ABC):
    """One application as the worker sees it (see the module docstring)."""

    streams: ClassVar[bool] = True  # serves listening stream sockets
    datagrams: ClassVar[bool] = False  # serves UDP sockets
    proxy_protocol: ClassVar[bool] = False  # reads a PROXY header first (--proxy-protocol)

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.servers: list[asyncio.Server] = []
        self._rescuing: set[asyncio.Task[Any]] = set()  # rescued connections being set up
        self._accepting = True
        self.paused: list[socket.socket] | None = None  # what resume_accepting serves again

    async def startup(self) -> None:  # noqa: B027 - optional hook
        """Prepare the app before serving (default: nothing to do)."""

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Start accepting on every listening socket; return once accepting.

        The default serves each with ``listen`` (the app's protocol factory);
        an app that accepts by itself overrides this.
        """
        for sock in sockets:
            self.servers.append(await self.listen(sock))

    @abc.abstractmethod
    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        """Stop accepting, drain, and clean up within about ``timeout`` seconds."""

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol] | None:
        """What ``serve`` hands the loop for each socket; None: the app accepts by itself."""
        return None

    def serve_rescued(self, conn: socket.socket) -> bool:
        """Serve ``conn``, accepted from a stalled sibling's queue; False if the app cannot.

        The connection then belongs to this worker like any it accepted
        itself (counted in ``stats.rescued`` too).  An app that accepts by
        itself has no protocol factory and cannot take it.
        """
        factory = self.protocol_factory()
        if factory is None or self._accepting is False:
            return False
        self.ctx.stats.rescue_pending += 1  # counted in stats.rescued once its protocol is made
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(factory, conn, ssl=self.accept_ssl()))
        self._rescuing.add(task)
        task.add_done_callback(self._rescued)
        return True

    def _rescued(self, task: asyncio.Task[Any]) -> None:
        self._rescuing.discard(task)
        if task.cancelled() or task.exception() is not None:
            stats = self.ctx.stats
            stats.rescue_pending = max(0, stats.rescue_pending - 1)
            if not task.cancelled():
                log.warning("a rescued connection could not be set up: %s", task.exception())

    def serving_ssl(self) -> ssl.SSLContext | None:
        """The TLS context the app's sockets are served with; None: plain TCP."""
        return self.ctx.tls

    def accept_ssl(self) -> ssl.SSLContext | None:
        """The TLS context the loop starts on each accepted connection.

        ``serving_ssl()``, except with ``--proxy-protocol``: the PROXY header
        comes before the TLS handshake, so the protocol factory
        (``proxystage.ProxyFront``) starts TLS itself once it has read it.
        """
        if self.proxy_protocol and self.ctx.config.proxy_protocol:
            return None
        return self.serving_ssl()

    async def listen(
        self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol] | None = None
    ) -> asyncio.Server:
        """Serve ``sock`` with ``factory`` (default: the app's own), TLS as configured."""
        factory = factory or self.protocol_factory()
        if factory is None:
            raise TypeError(f"{type(self).__name__} accepts by itself: it has no protocol factory")
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            factory, sock=sock, backlog=self.ctx.config.backlog, ssl=self.accept_ssl()
        )

    def set_keep_alive(self, allowed: bool) -> None:  # noqa: B027 - optional hook
        """Off: each connection closes after its next response (default: nothing to do)."""

    async def pause_accepting(self) -> bool:
        """Accept nothing new for now; False if this app cannot (it accepts by itself).

        The servers close and no rescued connection is taken meanwhile;
        duplicates of the listening sockets stay here, so ``resume_accepting``
        can serve them again (closing a duplicate loses nothing queued: the
        master holds the socket too).
        """
        if self.protocol_factory() is None or self.paused is not None:
            return False
        kept: list[socket.socket] = []
        try:
            for server in self.servers:
                for sock in server.sockets:
                    kept.append(socket.socket(fileno=os.dup(sock.fileno())))
        except OSError:
            for sock in kept:
                sock.close()
            return False
        await self.stop_accepting()
        self.servers = []
        self.paused = kept
        return True

    async def resume_accepting(self) -> list[socket.socket]:
        """Serve the paused sockets again; returns them (the ones now served), in order."""
        paused, self.paused = self.paused or [], None
        self._accepting = True
        for sock in paused:
            self.servers.append(await self.listen(sock))
        return paused

    async def stop_accepting(self) -> None:
        """Accept no more connections; return once every accepted one is known.

        Why this awaits: a loop accepts a connection and only a callback or
        two later calls its protocol's ``connection_made`` (uvloop schedules
        it; the asyncio loop even creates the transport in a task first, and
        that task fails if the server was closed meanwhile).  A drain that
        started in between would find no live connection and let the worker
        exit under a client whose request was already sent.  So: stop the
        accept readers first (selector loops), let pending accepts finish,
        close the servers, and let their ``connection_made`` calls run
        (rescued connections still being set up included).
        """
        loop = asyncio.get_running_loop()
        self._accepting = False
        for sock in self.paused or ():
            sock.close()
        self.paused = None
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await _settle()
        for server in self.servers:
            server.close()
        if self._rescuing:
            await asyncio.wait(set(self._rescuing), timeout=_RESCUED_SETUP)
        await _settle()


# Loop iterations that finish an accept already made: the asyncio loop's
# accept task step, then the connection_made callback it schedules.
_SETTLE_STEPS = 3
_RESCUED_SETUP = 1.0  # seconds a rescued connection's setup (a TLS handshake) may take


async def _settle() -> None:
    for _ in range(_SETTLE_STEPS):
        await asyncio.sleep(0)
