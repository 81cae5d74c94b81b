"""One ``HttpProtocol`` driven in-process: a fake transport, no sockets.

Rules: a ``Harness`` owns one uvloop loop and one ``HttpServer``; bytes reach
a connection through ``data_received`` from a loop callback (never from a
task, as for a real read), and after each delivery the loop runs a bounded
number of iterations so apps that suspend make progress.  Time never passes
by itself: the server's tick is not started, and ``expire()`` does what the
tick would do once a connection's deadline is due.  ``FakeTransport`` keeps
every byte written and records a write after the close (a protocol bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import uvloop
from asgi_apps import Response_, parse_responses

from reuseport.config import Config, Lifespan
from reuseport.connections import WorkerStats
from reuseport.http import HttpProtocol, HttpServer

SETTLE_STEPS = 30  # loop iterations after each delivery


class FakeTransport:
    """Just enough of ``asyncio.Transport`` for ``HttpProtocol``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: HttpProtocol | None = None
        self.chunks: list[bytes] = []
        self.after_close: list[bytes] = []  # written once closed or half-closed
        self.closed = False
        self.eof = False
        self.reading = True
        self._extra = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}

    @property
    def output(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        if self.closed or self.eof:
            self.after_close.append(bytes(data))
        else:
            self.chunks.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:  # a WebSocket hand-over
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # A real transport reports the loss from a later loop iteration.
            self.loop.call_soon(self._lost)

    def abort(self) -> None:
        self.close()

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0

    def _lost(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connection_lost(None)


class Conn:
    """One connection of a ``Harness``."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.proto = harness.server()
        self.transport = FakeTransport(harness.loop)
        self.transport.protocol = self.proto
        self.proto.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, *pieces: bytes) -> Conn:
        """Deliver each piece as one read (skipped once the transport is closed)."""
        for piece in pieces:
            if self.transport.closed:
                break
            self.harness.loop.call_soon(self._deliver, piece)
            self.harness.settle()
        return self

    def _deliver(self, piece: bytes) -> None:
        if not self.transport.closed:
            self.proto.data_received(piece)

    def lose(self) -> None:
        """The peer went away."""
        if self.transport.protocol is not None:
            self.transport.closed = True
            self.harness.loop.call_soon(self.transport._lost)
        self.harness.settle()

    def expire(self) -> None:
        """What the server's tick does once this connection's deadline is due."""
        assert self.proto.deadline is not None, "no deadline is armed"
        self.harness.loop.call_soon(self.proto.on_deadline)
        self.harness.settle()

    def deadline_in(self) -> float | None:
        """Seconds until this connection's deadline, or None if none is armed."""
        deadline = self.proto.deadline
        return None if deadline is None else deadline - self.harness.loop.time()

    @property
    def output(self) -> bytes:
        return self.transport.output

    @property
    def closed(self) -> bool:
        return self.transport.closed

    def responses(self) -> list[Response_]:
        return parse_responses(self.output)

    def statuses(self) -> list[int]:
        return [r.status for r in self.responses()]


class Harness:
    """A loop, an ``HttpServer`` for ``app``, and connections to it."""

    def __init__(self, app: Any, **config: Any) -> None:
        config.setdefault("lifespan", Lifespan.OFF)
        config.setdefault("date_header", False)
        self.loop = uvloop.new_event_loop()
        self.stats = WorkerStats()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.server = self.run(self._make(app, Config(**config)))

    async def _make(self, app: Any, config: Config) -> HttpServer:
        return HttpServer(app, config, self.stats)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 5.0))

    def settle(self, steps: int = SETTLE_STEPS) -> None:
        async def spin() -> None:
            for _ in range(steps):
                await asyncio.sleep(0)

        self.run(spin())

    def connect(self) -> Conn:
        return Conn(self)

    def close(self) -> None:
        for task in list(self.server.tasks):
            task.cancel()
        self.settle()
        self.loop.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
