"""Sibling rescue, the worker's side: serve the queue of a sibling that stopped accepting.

Rules: runs inside a worker's event loop and never blocks it.  The worker
does not watch its siblings itself: the master already samples every slot's
queue each steering tick, so it decides (``steering.Rescue``, pure and tested
on its own) and tells the other workers ``rescue`` on or off for a slot over
their channels.  This module only carries that out.  It never closes a
sibling's socket, only its own copies: the kernel socket lives on in the
sibling, the master and the other workers.

Why the master decides.  The first version had every worker look at its
siblings' queues every 5 ms; an idle worker then spent about 1.6 % of a core
on those looks (17 against 1 clock ticks per 10 s, measured here), and under
load that time came out of serving.  The master's tick costs the same once,
whatever the number of workers, and it already reads the queues.

How.  The master gives every worker a copy of every other slot's listening
sockets (inherited at fork, sent over the channel when a slot opens, taken
back when one drains).  To rescue, the worker serves a duplicate of the
sibling's socket with the app's own protocol factory (``HostedApp.rescue``):
the kernel hands each queued connection to exactly one ``accept()``, the
sibling's or ours, so nothing is served twice; and closing our duplicate
leaves the socket in its group, so nothing queued is lost when the rescue
ends.  An app that accepts by itself (``--interface socket``) cannot be
rescued into: the rescuer then ignores the master's word.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from .apps.base import HostedApp

__all__ = ["Rescuer"]

log = logging.getLogger("reuseport.worker")


class Rescuer:
    """A worker's copies of its siblings' sockets, and the rescues running on them."""

    def __init__(self, hosted: HostedApp) -> None:
        self.hosted = hosted
        self.siblings: dict[int, list[socket.socket]] = {}
        self.servers: dict[int, list[asyncio.Server]] = {}  # slot: one rescue server per bind
        self.wanted: set[int] = set()  # slots the master asked us to rescue
        self._tasks: set[asyncio.Task[None]] = set()
        self.enabled = hosted.protocol_factory() is not None

    # ------------------------------------------------------------------ siblings
    def add(self, slot: int, socks: Sequence[socket.socket]) -> None:
        """``slot``'s sockets (one per bind; ours to close)."""
        self.remove(slot)
        self.siblings[slot] = list(socks)

    def remove(self, slot: int) -> None:
        """``slot`` is leaving (draining) or gone: stop rescuing it, drop our copies."""
        self.end(slot)
        for sock in self.siblings.pop(slot, ()):
            sock.close()

    # ------------------------------------------------------------------ rescues
    def begin(self, slot: int) -> None:
        """Serve ``slot``'s sockets too, until ``end``."""
        if not self.enabled or slot in self.wanted or slot not in self.siblings:
            return
        self.wanted.add(slot)
        task = asyncio.ensure_future(self._begin(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            log.warning("could not serve slot %d's queue (%s)", slot, exc)
            self.wanted.discard(slot)
            for server in servers:
                self.hosted.end_rescue(server)
            return
        if slot not in self.wanted:  # ended, or it left, while we started
            for server in servers:
                self.hosted.end_rescue(server)
            return
        self.servers[slot] = servers
        log.debug("rescuing slot %d: its worker stopped accepting", slot)

    def end(self, slot: int) -> None:
        self.wanted.discard(slot)
        for server in self.servers.pop(slot, ()):
            self.hosted.end_rescue(server)

    def close(self) -> None:
        """End every rescue and drop every copy (draining, or after the app's shutdown)."""
        for slot in list(self.siblings):
            self.remove(slot)
