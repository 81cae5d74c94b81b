"""Sibling rescue inside one event loop: a stalled sibling's queue is served, then left.

The "sibling" here is a listening socket nobody accepts from, with its
accept count on a load board that the test moves by hand; the rescuing
worker is a real ``HostedApp`` with a protocol that answers and closes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from typing import cast

import pytest
from support import wait_until

from reuseport.apps.base import HostedApp, WorkerContext
from reuseport.config import Config, Mode
from reuseport.loadboard import LoadBoard
from reuseport.rescue import Rescuer
from reuseport.steering import Rescue

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

    async def shutdown(self, timeout: float) -> None:
        await self.stop_accepting()


class _CountingRescuer(Rescuer):
    """A rescuer the test can wait on: ``await looked(n)`` returns after n more looks."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._looks = 0
        self._looked = asyncio.Event()

    def _look(self) -> None:
        super()._look()
        self._looks += 1
        self._looked.set()

    async def looked(self, more: int) -> None:
        target = self._looks + more
        while self._looks < target:
            self._looked.clear()
            await asyncio.wait_for(self._looked.wait(), _TIMEOUT)


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


def test_a_stalled_siblings_queue_is_served_once_then_left_when_it_accepts_again() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        app = _App(ctx)
        board = LoadBoard(4, ebpf=False)
        sibling = _listener()
        port = sibling.getsockname()[1]
        rescuer = _CountingRescuer(app, board, interval=0.002, decision=Rescue(stall_after=0.01))
        clients: list[socket.socket] = []
        try:
            rescuer.add(_SIBLING, [sibling.dup()])
            rescuer.start()
            for _ in range(20):
                client = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
                client.setblocking(False)
                clients.append(client)
            assert await _answered(clients) == 20
            assert ctx.stats.rescued == 20
            assert ctx.stats.accepted == 20  # each exactly once (the kernel's accept)
            assert rescuer.servers.keys() == {_SIBLING}
            # The sibling accepts one of its own: it is back, the rescue ends.
            board.lane(_SIBLING, 0).publish(accepted=1, open_=0)
            await rescuer.looked(2)
            assert not rescuer.servers
            late = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
            late.setblocking(False)
            clients.append(late)
            wait_until(lambda: _queued(sibling) == 1, timeout=_TIMEOUT)
            # A sibling that keeps accepting (its count moves at every look)
            # is not robbed, however long its queue stays non-empty.
            for count in range(2, 12):
                board.lane(_SIBLING, 0).publish(accepted=count, open_=0)
                await rescuer.looked(1)
            assert not rescuer.servers
            assert ctx.stats.rescued == 20
            assert _queued(sibling) == 1
            # It stops accepting again: after stall_after, the rescue is back.
            assert await _answered([late]) == 1
            assert ctx.stats.rescued == 21
        finally:
            rescuer.close()
            await app.shutdown(1.0)
            for client in clients:
                client.close()
            sibling.close()
            board.close()
        assert not loop.is_closed()

    asyncio.run(main())


def _queued(sock: socket.socket) -> int:
    from reuseport.sockets import listen_queue_depth

    depth = listen_queue_depth(sock)
    return depth[0] if depth else -1


def test_an_app_that_accepts_by_itself_is_never_rescued_into() -> None:
    class _SocketApp(HostedApp):
        async def serve(self, sockets: Sequence[socket.socket]) -> None:
            pass

        async def shutdown(self, timeout: float) -> None:
            pass

    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        board = LoadBoard(2, ebpf=False)
        try:
            rescuer = Rescuer(_SocketApp(ctx), board)
            assert not rescuer.enabled
            rescuer.start()  # nothing to run
            assert rescuer._timer is None
        finally:
            board.close()

    asyncio.run(main())


@pytest.mark.parametrize("slot", [1])
def test_removing_a_sibling_closes_only_our_copy(slot: int) -> None:
    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        board = LoadBoard(2, ebpf=False)
        sibling = _listener()
        try:
            rescuer = Rescuer(_App(ctx), board)
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
            board.close()

    asyncio.run(main())
