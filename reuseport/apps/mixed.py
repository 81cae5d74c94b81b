"""Two apps in one worker: APP on the stream sockets, ``--datagram-app`` on the UDP ones.

Rules: ``MixedApp`` is what the worker hosts when its sockets include both
kinds and two apps serve them (``apps.host`` decides).  It hands each socket
to the app of its kind, starts both (the stream app first: an ASGI lifespan
failure stops the boot before the datagram app runs), stops both at once
(each within the same graceful timeout), and gives sibling rescue the stream
app's protocol factory: rescue is for TCP queues only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence

from .base import HostedApp, StopReason, WorkerContext

__all__ = ["MixedApp"]


class MixedApp(HostedApp):
    """A stream app and a datagram app, side by side."""

    datagrams = True

    def __init__(self, stream: HostedApp, datagram: HostedApp, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.stream = stream
        self.datagram = datagram
        self.sockets: list[socket.socket] = []  # as served, in the worker's order

    async def startup(self) -> None:
        await self.stream.startup()
        await self.datagram.startup()

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        self.sockets = list(sockets)
        udp = [s for s in sockets if s.type == socket.SOCK_DGRAM]
        await self.stream.serve([s for s in sockets if s.type != socket.SOCK_DGRAM])
        await self.datagram.serve(udp)

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await asyncio.gather(
            self.stream.shutdown(timeout, reason), self.datagram.shutdown(timeout, reason)
        )

    def set_keep_alive(self, allowed: bool) -> None:
        self.stream.set_keep_alive(allowed)

    async def pause_accepting(self) -> bool:
        """``--max-requests``: the stream app pauses; datagrams go on (a datagram is no accept)."""
        paused = await self.stream.pause_accepting()
        self.paused = self.stream.paused
        return paused

    async def resume_accepting(self) -> list[socket.socket]:
        """The stream app serves its sockets again: every socket, in the order served."""
        served = iter(await self.stream.resume_accepting())
        self.paused = None
        self.sockets = [
            sock if sock.type == socket.SOCK_DGRAM else next(served, sock) for sock in self.sockets
        ]
        return list(self.sockets)

    async def stop_accepting(self) -> None:
        await asyncio.gather(self.stream.stop_accepting(), self.datagram.stop_accepting())

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol] | None:
        return self.stream.protocol_factory()

    def serving_ssl(self) -> ssl.SSLContext | None:
        return self.stream.serving_ssl()

    def accept_ssl(self) -> ssl.SSLContext | None:
        return self.stream.accept_ssl()

    def serve_rescued(self, conn: socket.socket) -> bool:
        return self.stream.serve_rescued(conn)

    async def listen(
        self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol] | None = None
    ) -> asyncio.Server:
        return await self.stream.listen(sock, factory)
