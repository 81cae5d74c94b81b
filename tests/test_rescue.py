"""Sibling rescue inside one event loop: a stalled sibling's queue is served, then left.

The "sibling" here is a listening socket nobody accepts from, with its
accept count on a load board that the test moves by hand; the rescuing
worker is a real ``HostedApp`` with a protocol that answers and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Sequence
from typing import cast

import pytest
from support import wait_until

from reuseport.apps.base import HostedApp, StopReason, WorkerContext, WorkerStats
from reuseport.config import Config, Mode
from reuseport.rescue import YIELD, Rescuer

_SIBLING = 1
_TIMEOUT = 5.0


class _Answer(asyncio.Protocol):
    def __init__(self, app: _App) -> None:
        self.app = app

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.app.ctx.stats.opened()
        cast(asyncio.Transport, transport).write(b"ok")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.ctx.stats.closed()


class _App(HostedApp):
    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        return lambda: _Answer(self)

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        pass

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await self.stop_accepting()


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def _answered(clients: list[socket.socket]) -> int:
    loop = asyncio.get_running_loop()
    got = 0
    for client in clients:
        if await asyncio.wait_for(loop.sock_recv(client, 2), _TIMEOUT) == b"ok":
            got += 1
    return got


def test_a_rescue_serves_the_siblings_queue_until_it_ends() -> None:
    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        app = _App(ctx)
        sibling = _listener()
        port = sibling.getsockname()[1]
        rescuer = Rescuer(app)
        clients: list[socket.socket] = []
        try:
            rescuer.add(_SIBLING, [sibling.dup()])
            for _ in range(20):  # queued for the sibling, which never accepts
                client = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
                client.setblocking(False)
                clients.append(client)
            rescuer.begin(_SIBLING)
            assert await _answered(clients) == 20
            assert ctx.stats.rescued == 20
            assert ctx.stats.accepted == 20  # each exactly once (the kernel's accept)
            assert rescuer.watches.keys() == {_SIBLING}
            rescuer.end(_SIBLING)
            assert not rescuer.watches
            late = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
            clients.append(late)
            # Left in the sibling's queue: we stopped watching, the sibling's
            # socket still listens.
            wait_until(lambda: _queued(sibling) == 1, timeout=_TIMEOUT)
            await asyncio.sleep(YIELD * 5)  # well past the yield: still nobody takes it
            assert _queued(sibling) == 1
            assert ctx.stats.rescued == 20
            conn, _ = sibling.accept()
            conn.close()
        finally:
            rescuer.close()
            await app.shutdown(1.0)
            for client in clients:
                client.close()
            sibling.close()

    asyncio.run(main())


def test_a_running_sibling_keeps_its_own_connections() -> None:
    """The rescuer yields: a sibling that accepts within YIELD takes its own queue.

    (Were it to accept at once, the rescuer would win most races, the
    sibling's accept count would not move, and the rescue would never end.)
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        app = _App(ctx)
        sibling = _listener()
        port = sibling.getsockname()[1]
        taken_by_sibling: list[socket.socket] = []

        def sibling_accepts() -> None:  # the sibling's own worker, alive and quick
            with contextlib.suppress(BlockingIOError):
                while True:
                    taken_by_sibling.append(sibling.accept()[0])

        rescuer = Rescuer(app)
        clients: list[socket.socket] = []
        loop.add_reader(sibling.fileno(), sibling_accepts)
        try:
            rescuer.add(_SIBLING, [sibling.dup()])
            rescuer.begin(_SIBLING)
            for _ in range(20):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT))
                await asyncio.sleep(YIELD * 2)  # let both look
            assert len(taken_by_sibling) == 20
            assert ctx.stats.rescued == 0
        finally:
            loop.remove_reader(sibling.fileno())
            rescuer.close()
            await app.shutdown(1.0)
            for sock in clients + taken_by_sibling:
                sock.close()
            sibling.close()

    asyncio.run(main())


def _queued(sock: socket.socket) -> int:
    from reuseport.sockets import listen_queue_depth

    depth = listen_queue_depth(sock)
    return depth[0] if depth else -1


def test_an_app_that_accepts_by_itself_is_never_rescued_into() -> None:
    class _SocketApp(HostedApp):
        async def serve(self, sockets: Sequence[socket.socket]) -> None:
            pass

        async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
            pass

    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        sibling = _listener()
        rescuer = Rescuer(_SocketApp(ctx))
        try:
            assert not rescuer.enabled
            rescuer.add(_SIBLING, [sibling.dup()])
            rescuer.begin(_SIBLING)  # the master's word is ignored
            assert not rescuer.watches
        finally:
            rescuer.close()
            sibling.close()

    asyncio.run(main())


@pytest.mark.parametrize("slot", [1])
def test_removing_a_sibling_closes_only_our_copy(slot: int) -> None:
    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        sibling = _listener()
        try:
            rescuer = Rescuer(_App(ctx))
            copy = sibling.dup()
            rescuer.add(slot, [copy])
            rescuer.remove(slot)
            assert copy.fileno() == -1
            client = socket.create_connection(sibling.getsockname(), timeout=_TIMEOUT)
            conn, _ = sibling.accept()  # the sibling's socket still listens
            conn.close()
            client.close()
        finally:
            sibling.close()

    asyncio.run(main())


def test_the_lane_counts_only_our_own_accepts_and_never_goes_down() -> None:
    """Rescued connections made before or after our own: the own count only grows."""
    published: list[int] = []

    class Lane:
        def publish(self, accepted: int, open_: int) -> None:
            published.append(accepted)

        def publish_cost(self, cost_ns: int) -> None:
            pass

    stats = WorkerStats(lane=Lane())
    stats.rescue_pending += 3  # three rescued connections accepted, not made yet
    stats.opened()  # an own connection's connection_made may come first
    stats.opened()
    stats.opened()
    stats.opened()
    stats.closed()
    assert (stats.accepted, stats.rescued, stats.rescue_pending) == (4, 3, 0)
    assert published[-1] == 1  # one of the four came from our own queue
    assert published == sorted(published)
    assert min(published) >= 0
