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

Counters go to ``WorkerContext.stats`` (plain attributes, no locks: the worker
copies them into the shared scoreboard on its heartbeat).  ``WorkerStats``,
``ManagedConnection``, ``Connections`` and ``StopReason`` live in
``reuseport.connections`` (below both this package and ``reuseport.http``)
and are re-exported here.
"""

from __future__ import annotations

import abc
import asyncio
import socket
import ssl
from collections.abc import Sequence
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

    async def startup(self) -> None:  # noqa: B027 - optional hook
        """Prepare the app before serving (default: nothing to do)."""

    @abc.abstractmethod
    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Start accepting on every listening socket; return once accepting."""

    @abc.abstractmethod
    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        """Stop accepting, drain, and clean up within about ``timeout`` seconds."""

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
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await _settle()
        for server in self.servers:
            server.close()
        await _settle()


# Loop iterations that finish an accept already made: the asyncio loop's
# accept task step, then the connection_made callback it schedules.
_SETTLE_STEPS = 3


async def _settle() -> None:
    for _ in range(_SETTLE_STEPS):
        await asyncio.sleep(0)
