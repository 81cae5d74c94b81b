"""Flow control for one connection: pause reading, wait for writing.

Rules: a slow peer or a slow app never makes us buffer without bound.

* Reading pauses while requests, or read bytes not parsed yet, wait their
  turn (a pipelining client gets at most one read ahead of us) or while more
  than ``HIGH_WATER`` request body bytes wait for the app; it resumes when
  both are no longer so.  The connection calls ``update_reading`` whenever either
  may have changed; ``pause_reading``/``resume_reading`` force it (an error
  answer stops reading, a lingering close drains what is left).
* Writing: the transport calls ``pause_writing``/``resume_writing`` (its
  buffer passed the high/low-water marks); the app's next send awaits
  ``drain()`` while paused.  ``release()`` wakes that waiter when the
  connection is lost, so no send waits for a peer that is gone.

The state is the transport's, not the protocol's: whatever speaks on the
transport after an upgrade (WebSocket, issue 9) takes this object over with
it.
"""

from __future__ import annotations

import asyncio

__all__ = ["HIGH_WATER", "RECHECK_AFTER", "FlowControl"]

HIGH_WATER = 64 * 1024  # request body bytes buffered for the app before we pause reading
# After handing the app more than this at once, the cycle asks for an update:
# the buffer it emptied may have paused reading (a much smaller one cannot have).
RECHECK_AFTER = HIGH_WATER // 2


class FlowControl:
    """Read pausing and the write drain waiter of one transport."""

    __slots__ = ("_drain_waiter", "_loop", "read_paused", "transport", "write_paused")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # --- reading -------------------------------------------------------------

    def update_reading(self, queued: bool, buffered: int) -> None:
        """Pause while requests or unparsed bytes wait (``queued``) or body bytes pile up."""
        pause = queued or buffered > HIGH_WATER
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # --- writing -------------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def release(self) -> None:
        """The connection is lost: wake whoever waits in ``drain()``."""
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes more data (or the connection is lost)."""
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        await asyncio.shield(waiter)
