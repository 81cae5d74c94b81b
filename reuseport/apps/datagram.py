"""The datagram interface: an ``asyncio.DatagramProtocol`` served on ``udp://`` sockets.

Rules: APP (or ``--datagram-app``) is an ``asyncio.DatagramProtocol``
subclass or a zero-argument factory returning one.  Each UDP socket the
worker serves gets its own protocol instance, as ``loop.create_datagram_endpoint``
would make it: the instance's ``connection_made`` receives that socket's
transport, and ``transport.sendto(data, addr)`` answers from the same address
the datagram came to.

Counting: every datagram received is one request (``--max-requests``
recycles a worker after that many datagrams, and the dynamic pool sees a
worker that receives as busy) and one in ``stats.datagrams`` (what a draining
worker watches to tell that nothing new arrives).  A datagram has nothing in
flight to wait for, so ``in_flight`` stays 0.

Graceful stop (``shutdown``): the replies already handed to a transport are
sent (its write buffer empties, up to the graceful timeout), then every
transport is closed and the protocol's ``connection_lost(None)`` runs, its
place to clean up.  The worker keeps reading until then: nothing it reads is
lost, and what it does not read stays in the socket, which outlives the
worker (the master holds a copy: the slot's socket in reuseport mode, where
the replacement of a reload, recycle or respawn reads it; the one shared
socket in shared mode).  Reading is not paused first because uvloop's UDP
transport cannot pause.  Replies an app sends later, from a task of its own,
must be sent before ``connection_lost``: the worker cannot know about them.

``DatagramEndpoints`` is the part the built-in demo shares: open a socket
with a protocol factory, close them all.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from ..connections import WorkerStats
from ..errors import BootError
from .base import HostedApp, StopReason, WorkerContext

__all__ = ["DatagramApp", "DatagramEndpoints", "Endpoint"]

_FLUSH_POLL = 0.01  # seconds between looks at the write buffers while stopping
_LOST_TIMEOUT = 1.0  # longest wait for connection_lost after close()


class Endpoint(asyncio.DatagramProtocol):
    """What ``DatagramEndpoints`` serves a socket with: a protocol that says when it is gone."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()


class DatagramEndpoints:
    """The UDP sockets one adapter serves, and their closing."""

    def __init__(self) -> None:
        self.served: list[tuple[asyncio.DatagramTransport, Endpoint]] = []

    async def open(self, sock: socket.socket, protocol: Endpoint) -> None:
        """Serve ``sock`` with ``protocol`` (the transport closes ``sock`` when it closes)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        self.served.append((transport, protocol))

    async def close(self, timeout: float) -> None:
        """Let written replies go out (up to ``timeout`` s), then close every transport."""
        deadline = time.monotonic() + timeout
        transports = [t for t, _ in self.served]
        # Polled: a transport tells when its buffer drops below the low-water
        # mark (resume_writing), not when it is empty.
        while True:
            unsent = any(_buffered(t) for t in transports if not t.is_closing())
            if not unsent or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_FLUSH_POLL)
        for transport in transports:
            transport.close()
        waits = [
            asyncio.ensure_future(protocol.gone.wait())
            for _, protocol in self.served
            if not protocol.gone.is_set()
        ]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=_LOST_TIMEOUT)
            for waiter in pending:
                waiter.cancel()


def _buffered(transport: asyncio.DatagramTransport) -> int:
    """Bytes of replies not yet sent (asyncio's and uvloop's UDP transports both say)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


class _Counted(Endpoint):
    """The app's protocol, with each datagram counted (one request each)."""

    def __init__(self, inner: asyncio.DatagramProtocol, stats: WorkerStats) -> None:
        super().__init__()
        self.inner = inner
        self.stats = stats
        self.received = inner.datagram_received

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.inner.connection_made(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        stats = self.stats
        stats.requests += 1
        stats.datagrams += 1
        self.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.gone.set()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class DatagramApp(HostedApp):
    """An ``asyncio.DatagramProtocol`` subclass, or a zero-argument factory returning one."""

    streams = False
    datagrams = True

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.factory = cast(Callable[[], asyncio.DatagramProtocol], app)
        self.endpoints = DatagramEndpoints()

    def _make(self) -> Endpoint:
        try:
            protocol = self.factory()
        except Exception as exc:
            raise BootError(
                f"the datagram app {self.factory!r} raised when called for a protocol "
                f"instance: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(getattr(protocol, "datagram_received", None)):
            raise BootError(
                f"the datagram app {self.factory!r} returned {protocol!r}, which has no "
                "datagram_received(): point it at an asyncio.DatagramProtocol subclass or "
                "a factory returning one"
            )
        return _Counted(protocol, self.ctx.stats)

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        for sock in sockets:
            if sock.type != socket.SOCK_DGRAM:
                raise BootError(
                    f"a datagram app cannot serve the stream socket {sock.getsockname()!r}: "
                    "it receives on udp:// binds only"
                )
            await self.endpoints.open(sock, self._make())

    async def stop_accepting(self) -> None:
        """Nothing to stop: datagrams are read until the transports close."""

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await self.endpoints.close(timeout)
