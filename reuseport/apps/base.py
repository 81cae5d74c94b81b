"""What a worker needs from an application adapter, and what it gives one.

Rules: an adapter turns one user object (ASGI app, stream handler, Protocol
factory, socket coroutine, or the built-in demo) into a ``HostedApp``.  The
worker drives every adapter through the same three steps:

1. ``await startup()`` - app-level preparation before any socket is served
   (ASGI lifespan startup).  Raise ``BootError`` to refuse to start.
2. ``await serve(sockets)`` - start accepting on the listening sockets and
   return once it does.
3. ``await shutdown(timeout)`` - stop accepting, let in-flight work finish
   for up to ``timeout`` seconds, close idle keep-alive connections politely,
   then run app-level shutdown.  It must return within about ``timeout``.

Counters go to ``WorkerContext.stats`` (plain attributes, no locks: the worker
copies them into the shared scoreboard on its heartbeat).
"""

from __future__ import annotations

import abc
import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import Config, Mode

__all__ = ["Connections", "HostedApp", "ManagedConnection", "WorkerContext", "WorkerStats"]


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker, bumped on the hot path by the adapters."""

    requests: int = 0  # completed requests (responses finished)
    in_flight: int = 0  # requests read but not yet answered
    connections: int = 0  # open client connections
    accepted: int = 0  # connections accepted since start


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerContext:
    """Who this worker is; handed to every adapter."""

    pid: int
    slot: int
    generation: int
    mode: Mode  # the effective mode: REUSEPORT or SHARED, never AUTO
    config: Config
    stats: WorkerStats = field(default_factory=WorkerStats)


class ManagedConnection(abc.ABC):
    """A client connection the adapter owns and can wind down on shutdown."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Close now if idle; otherwise finish the current request, then close."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once (graceful timeout expired)."""


class Connections:
    """The set of live connections of one adapter, with a drained event."""

    def __init__(self) -> None:
        self._live: set[ManagedConnection] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.shutting_down = False

    def __len__(self) -> int:
        return len(self._live)

    def add(self, conn: ManagedConnection) -> None:
        self._live.add(conn)
        self._empty.clear()
        if self.shutting_down:
            conn.shutdown()

    def discard(self, conn: ManagedConnection) -> None:
        self._live.discard(conn)
        if not self._live:
            self._empty.set()

    async def drain(self, timeout: float) -> bool:
        """Ask every connection to wind down; abort the rest after ``timeout``.

        Returns True when all closed by themselves in time.
        """
        self.shutting_down = True
        for conn in list(self._live):
            conn.shutdown()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except TimeoutError:
            for conn in list(self._live):
                conn.abort()
            return False


class HostedApp(abc.ABC):
    """One application as the worker sees it (see the module docstring)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.servers: list[asyncio.AbstractServer] = []

    async def startup(self) -> None:  # noqa: B027 - optional hook
        """Prepare the app before serving (default: nothing to do)."""

    @abc.abstractmethod
    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Start accepting on every listening socket; return once accepting."""

    @abc.abstractmethod
    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, drain, and clean up within about ``timeout`` seconds."""

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
