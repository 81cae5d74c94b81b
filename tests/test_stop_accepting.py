"""A connection accepted just as a worker stops accepting is still answered.

The race behind a rare zero-loss failure in the churn tests: the loop accepts
a connection and creates its protocol, but calls ``connection_made`` one
callback later (uvloop), or even creates the transport in a task first (the
asyncio loop).  A graceful stop that starts in between used to see no live
connection, finish its drain at once, and exit: the client, whose request was
already sent, got an empty close.  These tests start the stop at exactly that
moment (from inside the accept) and expect a complete response.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from apps_plain import HttpProtocol as PlainHttpProtocol

from reuseport import apps
from reuseport.apps.base import HostedApp, WorkerContext
from reuseport.config import Config, Interface, LoopKind, Mode

_REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
_TIMEOUT = 5.0


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def _build(kind: str) -> HostedApp:
    ctx = WorkerContext(
        pid=os.getpid(), slot=0, generation=0, mode=Mode.SHARED, config=Config(lifespan="off")
    )
    if kind == "demo":
        return apps.build(apps.load_app(apps.DEMO_APP), Interface.ASGI, ctx)
    if kind == "asgi":
        return apps.build(_hello, Interface.ASGI, ctx)
    return apps.build(PlainHttpProtocol, Interface.PROTOCOL, ctx)


class _StopOnAccept(socket.socket):
    """A listening socket that starts the app's graceful stop inside accept().

    The asyncio loop accepts with ``sock.accept()`` and then finishes the
    connection in a task; uvloop accepts in C and calls the protocol factory
    at once, so for uvloop the factory is wrapped instead (``_wrap_factory``).
    """

    on_accept: Callable[[], None] = staticmethod(lambda: None)

    def accept(self) -> tuple[socket.socket, Any]:
        conn, addr = super().accept()
        self.on_accept()
        return conn, addr


def _run(kind: str, loop_kind: LoopKind, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Serve, connect and send a request, stop at the accept; what the client had then.

    What matters is the moment the graceful stop returns, because a worker
    exits right after: the reply must already be in the client's socket
    (loopback delivers a write at once), so it is peeked at in the same step.
    """

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        hosted = _build(kind)
        listener = _StopOnAccept(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        client: socket.socket | None = None
        stopping: list[asyncio.Task[bytes]] = []
        began = asyncio.Event()

        async def stop() -> bytes:
            await hosted.shutdown(_TIMEOUT)
            assert client is not None
            try:
                return client.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return b""

        def begin_stop() -> None:
            if not stopping:
                stopping.append(loop.create_task(stop()))
                began.set()

        listener.on_accept = begin_stop  # type: ignore[method-assign]
        original = loop.create_server

        async def create_server(factory: Callable[[], Any], **kwargs: Any) -> Any:
            def wrapped() -> Any:
                protocol = factory()
                begin_stop()
                return protocol

            return await original(wrapped, **kwargs)

        monkeypatch.setattr(loop, "create_server", create_server, raising=False)
        try:
            await hosted.startup()
            await hosted.serve([listener])
            client = socket.create_connection(listener.getsockname(), timeout=_TIMEOUT)
            client.sendall(_REQUEST)
            await asyncio.wait_for(began.wait(), _TIMEOUT)
            return await asyncio.wait_for(stopping[0], _TIMEOUT)
        finally:
            listener.close()
            if client is not None:
                client.close()

    factory = uvloop.new_event_loop if loop_kind is LoopKind.UVLOOP else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


@pytest.mark.parametrize("loop_kind", [LoopKind.UVLOOP, LoopKind.ASYNCIO], ids=lambda k: k.value)
@pytest.mark.parametrize("kind", ["demo", "asgi", "protocol"])
def test_a_connection_accepted_as_the_stop_begins_is_answered(
    kind: str, loop_kind: LoopKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = _run(kind, loop_kind, monkeypatch)
    assert reply.startswith(b"HTTP/1.1 200"), reply
