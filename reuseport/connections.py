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
* ``Connections``: the live set of one adapter, with the drained event and
  the keep-alive switch (``set_keep_alive``): off, every connection closes
  after its next response, which says so (``Connection: close``), so its
  client reconnects, elsewhere; idle connections are not closed under a
  client that may be sending (that is the drain's business).  A worker
  that reaches ``--max-requests`` turns it off (``WorkerStats.request_limit``
  tells it, from the adapter that counts the request, at once).
* ``StopReason``: why the worker stops.  A connection that can say so to its
  peer (a WebSocket closes with 1001 "going away" or 1012 "service restart")
  is told in ``going_away()`` shortly before the graceful deadline.

The graceful drain, for ``timeout`` seconds: every connection gets
``shutdown()`` at once (which closes an idle keep-alive connection: a
client may retry a request sent as it closes, see RFC 9112 9.3.1), but when
keep-alive was off already (``--max-requests``: the worker's clients were
told to go with their next response), an idle connection first gets
``idle_grace`` (the keep-alive timeout) to send that request, since its
client has no way to know; whatever is still open ``going_away_grace(timeout)``
before the deadline gets ``going_away(reason)`` (a WebSocket starts its
closing handshake, which needs that moment to complete, so it ends *by* the
deadline: the master kills a stopping worker at ``--graceful-timeout``);
whatever is still open at the deadline is aborted.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Connections",
    "LoadPublisher",
    "ManagedConnection",
    "StopReason",
    "WorkerStats",
    "going_away_grace",
]

# Longest time a closing handshake gets before the graceful deadline.
GOING_AWAY_GRACE = 1.0


def going_away_grace(timeout: float) -> float:
    """How long before the end of a ``timeout``-second drain ``going_away`` is called."""
    return min(GOING_AWAY_GRACE, timeout / 4)


class StopReason(enum.Enum):
    """Why a worker stops; a protocol that can tell its peer says it (WebSocket close codes)."""

    STOP = "stop"  # the server stops (SIGTERM, SIGINT, SIGQUIT to the master)
    SCALE_DOWN = "scale-down"  # the pool shrinks (TTOU, dynamic or ondemand retirement)
    RELOAD = "reload"  # rolling reload (HUP): a new worker takes this one's place
    RECYCLE = "recycle"  # --max-requests: a new worker takes this one's place

    @property
    def restarting(self) -> bool:
        """True when a replacement serves on: the peer may reconnect at once."""
        return self is StopReason.RELOAD or self is StopReason.RECYCLE


class LoadPublisher(Protocol):
    """Where a worker's connection counts go as they change (``loadboard.Lane``)."""

    def publish(self, accepted: int, open_: int) -> None: ...

    def publish_cost(self, cost_ns: int) -> None: ...


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker, bumped on the hot path by the adapters.

    Adapters call ``opened()``/``closed()`` for each connection rather than
    touching ``connections``/``accepted``: with a load board, those two also
    go to shared memory at once (the kernel's p2c steering and sibling rescue
    read them per connection, not per heartbeat).
    """

    requests: int = 0  # completed requests (responses finished)
    in_flight: int = 0  # requests read but not yet answered
    connections: int = 0  # open client connections
    accepted: int = 0  # connections accepted since start
    rescued: int = 0  # of those, taken from a stalled sibling's queue (sibling rescue)
    rescue_pending: int = 0  # rescued connections whose protocol is not made yet
    datagrams: int = 0  # UDP datagrams received since start (each is also one request)
    lane: LoadPublisher | None = None
    # --max-requests of this worker (0: none).  An adapter that counts a
    # request checks ``requests == request_limit`` and calls ``reached_limit``.
    request_limit: int = 0
    on_limit: Callable[[], None] | None = None

    def opened(self) -> None:
        self.connections += 1
        self.accepted += 1
        if self.rescue_pending:
            # A rescued connection (or an own one made first: the counts even
            # out, and ours never goes down).
            self.rescue_pending -= 1
            self.rescued += 1
        lane = self.lane
        if lane is not None:
            # Only what came from our own queue counts as accepted from it.
            lane.publish(self.accepted - self.rescued, self.connections)

    def closed(self) -> None:
        self.connections -= 1
        lane = self.lane
        if lane is not None:
            lane.publish(self.accepted - self.rescued, self.connections)

    def reached_limit(self) -> None:
        """``requests`` just reached ``request_limit``: tell the worker (once per count)."""
        if self.on_limit is not None:
            self.on_limit()


class ManagedConnection(abc.ABC):
    """A client connection the adapter owns and can wind down on shutdown."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Close now if idle; otherwise finish the current request, then close."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once (graceful timeout expired)."""

    def close_after_response(self) -> None:  # noqa: B027 - optional hook
        """No keep-alive: close after the next response, which says ``Connection: close``.

        A response whose head is already out keeps its word; the request after
        it gets the close.  The default does nothing (a connection that carries
        one request, or none: a WebSocket).
        """

    def going_away(self, reason: StopReason) -> bool:
        """The graceful deadline is near: start a polite close if the protocol has one.

        Returns True if it did (the default has none: ``abort()`` follows at
        the deadline).
        """
        return False


class Connections:
    """The set of live connections of one adapter, with a drained event."""

    def __init__(self) -> None:
        self._live: set[ManagedConnection] = set()
        # Exists only while drain() waits for the set to empty: add() and
        # discard() run for every connection, an Event's clear()/set() cost
        # two Python calls each time.
        self._empty: asyncio.Event | None = None
        self.shutting_down = False
        self.keep_alive = True  # new requests may keep their connection (see set_keep_alive)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[ManagedConnection]:
        return iter(list(self._live))

    def add(self, conn: ManagedConnection) -> None:
        self._live.add(conn)
        if self.shutting_down:
            conn.shutdown()

    def set_keep_alive(self, allowed: bool) -> None:
        """Off: every connection closes after its next response (see the module docstring)."""
        if allowed == self.keep_alive or (allowed and self.shutting_down):
            return
        self.keep_alive = allowed
        if not allowed:
            for conn in list(self._live):
                conn.close_after_response()

    def discard(self, conn: ManagedConnection) -> None:
        live = self._live
        live.discard(conn)
        if not live and self._empty is not None:
            self._empty.set()

    async def drain(
        self, timeout: float, reason: StopReason = StopReason.STOP, idle_grace: float = 0.0
    ) -> bool:
        """Ask every connection to wind down; abort the rest after ``timeout``.

        Returns True when all closed by themselves in time (see the module
        docstring for ``going_away`` and ``idle_grace``).
        """
        wound_down = not self.keep_alive
        self.shutting_down = True
        self.keep_alive = False
        if wound_down and idle_grace > 0 and self._live:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if await self._wait_empty(min(idle_grace, timeout / 2)):
                return True
            timeout -= loop.time() - started
        for conn in list(self._live):
            conn.shutdown()
        grace = going_away_grace(timeout)
        if await self._wait_empty(timeout - grace):
            return True
        polite = [conn.going_away(reason) for conn in list(self._live)]
        if await self._wait_empty(grace):
            return not any(polite)
        for conn in list(self._live):
            conn.abort()
        return False

    async def _wait_empty(self, timeout: float) -> bool:
        if not self._live:
            return True
        self._empty = empty = asyncio.Event()
        try:
            await asyncio.wait_for(empty.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        finally:
            self._empty = None
        return True
