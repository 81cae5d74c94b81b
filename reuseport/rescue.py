"""Sibling rescue, the worker's side: serve the queue of a sibling that stopped accepting.

Rules: runs inside a worker's event loop and never blocks it (one
``getsockopt`` per sibling socket per look, reads of shared memory).  *When*
to rescue is decided by ``steering.Rescue`` (pure, tested on its own); this
module only looks and carries the answer out.  It never closes a sibling's
socket, only its own copies: the kernel socket lives on in the sibling, the
master and the other workers.

How.  The master gives every worker a copy of every other slot's listening
sockets (inherited at fork, sent over the channel when a slot opens, taken
back when one drains).  Every ``interval`` the rescuer reads each sibling's
accept-queue length (``TCP_INFO`` on its copy) and how many connections the
sibling's workers took from it (the load board).  To rescue, it serves a
duplicate of the sibling's socket with the app's own protocol factory: the
kernel hands each queued connection to exactly one ``accept()``, the
sibling's or ours, so nothing is served twice; and closing our duplicate
leaves the socket in its group, so nothing queued is lost when the rescue
ends.  An app that accepts by itself (``--interface socket``) cannot be
rescued into: the rescuer then stays idle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence

from .apps.base import HostedApp
from .loadboard import LoadBoard
from .sockets import listen_queue_depth
from .steering import Rescue, SiblingSample

__all__ = ["Rescuer"]

log = logging.getLogger("reuseport.worker")

RESCUE_INTERVAL = 0.005  # seconds between looks at the siblings' queues


class Rescuer:
    """A worker's copies of its siblings' sockets, and the rescues running on them."""

    def __init__(
        self,
        hosted: HostedApp,
        board: LoadBoard,
        *,
        interval: float = RESCUE_INTERVAL,
        decision: Rescue | None = None,
    ) -> None:
        self.hosted = hosted
        self.board = board
        self.interval = interval
        self.decision = decision or Rescue()
        self.siblings: dict[int, list[socket.socket]] = {}
        self.servers: dict[int, list[asyncio.Server]] = {}  # slot: one rescue server per bind
        self._starting: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.enabled = hosted.protocol_factory() is not None

    # ------------------------------------------------------------------ siblings
    def add(self, slot: int, socks: Sequence[socket.socket]) -> None:
        """``slot``'s sockets (one per bind; ours to close)."""
        self.remove(slot)
        self.siblings[slot] = list(socks)

    def remove(self, slot: int) -> None:
        """``slot`` is leaving (draining) or gone: stop rescuing it, drop our copies."""
        self._end(slot)
        for sock in self.siblings.pop(slot, ()):
            sock.close()

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        if self.enabled and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        """No more looks; the rescue servers close with the app's (``stop_accepting``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop and drop every copy (after the app's shutdown)."""
        self.stop()
        for slot in list(self.siblings):
            self.remove(slot)

    def _tick(self) -> None:
        self._timer = None
        try:
            self._look()
        finally:
            if self.enabled:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _look(self) -> None:
        board = self.board
        samples = []
        for slot, socks in self.siblings.items():
            if slot >= board.capacity:
                continue
            queue = 0
            for sock in socks:
                depth = listen_queue_depth(sock)
                queue += depth[0] if depth else 0
            samples.append(SiblingSample(slot=slot, queue=queue, accepted=board.accepted(slot)))
        wanted = self.decision.decide(samples, time.monotonic())
        for slot in wanted - self.servers.keys() - self._starting:
            self._starting.add(slot)
            task = asyncio.ensure_future(self._begin(slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for slot in self.servers.keys() - wanted:
            self._end(slot)

    async def _begin(self, slot: int) -> None:
        servers: list[asyncio.Server] = []
        try:
            for sock in self.siblings.get(slot, ()):
                server = await self.hosted.rescue(sock.dup())
                if server is None:
                    self.enabled = False
                    break
                servers.append(server)
        except OSError as exc:
            log.warning("worker could not rescue slot %d's queue (%s)", slot, exc)
            for server in servers:
                self.hosted.end_rescue(server)
            return
        finally:
            self._starting.discard(slot)
        if slot not in self.siblings or slot not in self.decision.rescuing:
            for server in servers:  # it left, or recovered, while we started
                self.hosted.end_rescue(server)
            return
        self.servers[slot] = servers
        log.debug("rescuing slot %d: its worker stopped accepting", slot)

    def _end(self, slot: int) -> None:
        for server in self.servers.pop(slot, ()):
            self.hosted.end_rescue(server)
        self.decision.rescuing.discard(slot)
