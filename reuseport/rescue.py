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
back when one drains).  To rescue, the worker watches the sibling's socket
for readiness and, when connections wait, gives the sibling ``YIELD``
seconds to take them itself before it accepts them (by hand, non-blocking)
and serves them with the app's own protocol factory
(``HostedApp.serve_rescued``).  The kernel hands each queued connection to
exactly one ``accept()``, the sibling's or ours, so nothing is served twice;
we never close or shut down the sibling's socket, so nothing queued is lost
when the rescue ends.  An app that accepts by itself (``--interface
socket``) cannot be rescued into: the rescuer then ignores the master's word.

Why yield.  When two processes wait on one listening socket, the kernel
wakes the most recent waiter first, and the first one awake usually wins the
accept.  A rescuer that simply served the socket (an ordinary server on a
copy) won nearly every connection once the sibling ran again, so the
sibling's accept count never moved and the master never ended the rescue.
Waiting ``YIELD`` lets a running sibling take its own queue (which ends the
rescue), and costs a connection waiting behind a stalled one only that much.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from .apps.base import HostedApp

__all__ = ["Rescuer"]

log = logging.getLogger("reuseport.worker")


YIELD = 0.002  # seconds a sibling gets to accept its own queue before we do
_BATCH = 64  # connections taken per turn, at most


class _Watch:
    """One sibling socket under rescue: wait for readiness, yield, accept, repeat."""

    def __init__(self, hosted: HostedApp, sock: socket.socket) -> None:
        self.hosted = hosted
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.active = True
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self._timer = self.loop.call_later(YIELD, self._take)

    def _take(self) -> None:
        self._timer = None
        if not self.active:
            return
        for _ in range(_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break  # its own worker took them: good
            except OSError as exc:  # it was shut down (its slot left), or we ran out of fds
                log.debug("rescue accept on slot socket failed: %s", exc)
                self.stop()
                return
            conn.setblocking(False)
            if not self.hosted.serve_rescued(conn):
                conn.close()  # stopping: leave the rest in the sibling's queue
                self.stop()
                return
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self.sock.fileno())


class Rescuer:
    """A worker's copies of its siblings' sockets, and the rescues running on them."""

    def __init__(self, hosted: HostedApp) -> None:
        self.hosted = hosted
        self.siblings: dict[int, list[socket.socket]] = {}
        self.watches: dict[int, list[_Watch]] = {}  # slot: one per bind, while rescuing
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
        """Serve ``slot``'s queue too, until ``end``."""
        if not self.enabled or slot in self.watches or slot not in self.siblings:
            return
        self.watches[slot] = [_Watch(self.hosted, sock) for sock in self.siblings[slot]]
        log.debug("rescuing slot %d: its worker stopped accepting", slot)

    def end(self, slot: int) -> None:
        for watch in self.watches.pop(slot, ()):
            watch.stop()

    def close(self) -> None:
        """End every rescue and drop every copy (draining, or after the app's shutdown)."""
        for slot in list(self.siblings):
            self.remove(slot)
