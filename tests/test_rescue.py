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

from reuseport.apps.base import HostedApp, StopReason, WorkerContext
from reuseport.config import Config, Mode
from reuseport.rescue import Rescuer

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
            assert rescuer.servers.keys() == {_SIBLING}
            rescuer.end(_SIBLING)
            assert not rescuer.servers
            late = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
            clients.append(late)
            # Left in the sibling's queue: the rescue server is closed, the
            # sibling's socket is not.
            wait_until(lambda: _queued(sibling) == 1, timeout=_TIMEOUT)
            await _loop_turns(5)
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


def test_a_rescue_ended_while_it_starts_leaves_no_server() -> None:
    async def main() -> None:
        ctx = WorkerContext(
            pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=Config()
        )
        app = _App(ctx)
        sibling = _listener()
        rescuer = Rescuer(app)
        try:
            rescuer.add(_SIBLING, [sibling.dup()])
            rescuer.begin(_SIBLING)
            rescuer.end(_SIBLING)  # before its server started
            await _loop_turns(5)
            assert not rescuer.servers
            assert not app.rescue_servers
        finally:
            rescuer.close()
            sibling.close()

    asyncio.run(main())


async def _loop_turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


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
            assert not rescuer.wanted
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
