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

``--max-requests``: the worker turns keep-alive off (``set_keep_alive``:
every connection closes after its next response) and pauses accepting
(``pause_accepting``) while its replacement boots; ``resume_accepting``
serves the same sockets again if the replacement fails.  Both need a
protocol factory; an app that accepts by itself keeps accepting.

Sibling rescue: an adapter whose connections come from a protocol factory
says so in ``protocol_factory()``; the worker may then ``rescue(sock)``: serve
a stalled sibling's listening socket for a while with the same factory, each
connection counted in ``stats.rescued``.  An app that accepts by itself (the
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
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.servers: list[asyncio.Server] = []
        self.rescue_servers: set[asyncio.Server] = set()
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

    async def rescue(self, sock: socket.socket) -> asyncio.Server | None:
        """Serve a sibling's listening socket too, until the returned server is closed.

        ``sock`` is this worker's own copy (the server closes it); the
        sibling's socket stays in its group.  None if the app cannot be
        rescued into (no protocol factory).
        """
        factory = self.protocol_factory()
        if factory is None:
            return None
        stats = self.ctx.stats

        def rescued() -> asyncio.BaseProtocol:
            stats.rescued += 1
            return factory()

        server = await self.listen(sock, rescued)
        self.rescue_servers.add(server)
        return server

    def serving_ssl(self) -> ssl.SSLContext | None:
        """The TLS context the app's sockets are served with; None: plain TCP."""
        return self.ctx.tls

    async def listen(
        self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol] | None = None
    ) -> asyncio.Server:
        """Serve ``sock`` with ``factory`` (default: the app's own), TLS as configured."""
        factory = factory or self.protocol_factory()
        if factory is None:
            raise TypeError(f"{type(self).__name__} accepts by itself: it has no protocol factory")
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            factory, sock=sock, backlog=self.ctx.config.backlog, ssl=self.serving_ssl()
        )

    def set_keep_alive(self, allowed: bool) -> None:  # noqa: B027 - optional hook
        """Off: each connection closes after its next response (default: nothing to do)."""

    async def pause_accepting(self) -> bool:
        """Accept nothing new for now; False if this app cannot (it accepts by itself).

        The servers close, rescues end; duplicates of the listening sockets
        stay here, so ``resume_accepting`` can serve them again (closing a
        duplicate loses nothing queued: the master holds the socket too).
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
        for sock in paused:
            self.servers.append(await self.listen(sock))
        return paused

    def end_rescue(self, server: asyncio.Server) -> None:
        self.rescue_servers.discard(server)
        server.close()

    async def stop_accepting(self) -> None:
        """Accept no more connections; return once every accepted one is known.

        Why this awaits: a loop accepts a connection and only a callback or
        two later calls its protocol's ``connection_made`` (uvloop schedules
        it; the asyncio loop even creates the transport in a task first, and
        that task fails if the server was closed meanwhile).  A drain that
        started in between would find no live connection and let the worker
        exit under a client whose request was already sent.  So: stop the
        accept readers first (selector loops), let pending accepts finish,
        close the servers, and let their ``connection_made`` calls run.
        """
        loop = asyncio.get_running_loop()
        for sock in self.paused or ():
            sock.close()
        self.paused = None
        servers = [*self.servers, *self.rescue_servers]
        self.rescue_servers.clear()
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await _settle()
        for server in servers:
            server.close()
        await _settle()


# Loop iterations that finish an accept already made: the asyncio loop's
# accept task step, then the connection_made callback it schedules.
_SETTLE_STEPS = 3


async def _settle() -> None:
    for _ in range(_SETTLE_STEPS):
        await asyncio.sleep(0)
