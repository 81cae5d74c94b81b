"""Client connections of one worker: the counters they bump and the drain set.

Rules: this module sits below both ``reuseport.http`` (the HTTP/1.1
protocol) and ``reuseport.apps`` (the adapters that host an application), so
either may import it and it imports neither.  It holds only what every
connection-owning adapter shares:

* ``WorkerStats``: plain counters bumped on the hot path (no locks: the
  worker copies them into the shared scoreboard on its heartbeat).
* ``ManagedConnection``: what a connection must offer for a graceful drain
  (``shutdown()`` when idle or after the current request, ``abort()`` at the
  deadline).
* ``Connections``: the live set of one adapter, with the drained event.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

__all__ = ["Connections", "ManagedConnection", "WorkerStats"]


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker, bumped on the hot path by the adapters."""

    requests: int = 0  # completed requests (responses finished)
    in_flight: int = 0  # requests read but not yet answered
    connections: int = 0  # open client connections
    accepted: int = 0  # connections accepted since start


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
