"""The built-in demo app: every request gets 200 and ``{"pid", "slot", "mode"}``.

It is what ``reuseport serve`` runs with no APP and what ``reuseport bench``
drives, so it is a lean HTTP/1.1 protocol of its own (httptools parses;
keep-alive, pipelining, HEAD, ``Connection: close`` and HTTP/1.0 are honoured)
rather than an ASGI app.  The whole response is prebuilt and rebuilt only when
the ``Date`` second changes.

On ``udp://`` binds it is a datagram echo that names the worker: every
datagram is answered with ``{"pid", "slot", "mode"}``, a newline and the
datagram itself (cut to fit one reply), so a client can match answers to
what it sent and count exactly which worker read each one (``reuseport
bench --scenario udp``).

Two extras, for the benchmark: ``/work?slot=K&ms=M`` makes the worker in
slot K burn M milliseconds of CPU before answering (the others answer at
once), i.e. one slow worker (the ``skewed`` scenario); ``/stall?slot=K&ms=M&
every=E`` makes the worker in slot K block its event loop for M milliseconds
at most once every E milliseconds (``stall``: a worker that now and then
makes a blocking call).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import httptools

from .. import tls
from ..config import Interface
from ..connections import Connections, ManagedConnection, StopReason
from .base import HostedApp, WorkerContext
from .datagram import DatagramEndpoints, Endpoint

if TYPE_CHECKING:
    from ..proxystage import ProxyFront

__all__ = ["DemoApp", "app"]

_MAX_WORK_MS = 1000.0
_MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4


def _query(url: bytes) -> dict[str, list[str]]:
    parsed = httptools.parse_url(url)
    return parse_qs((parsed.query or b"").decode("latin-1"))


class DemoApp(HostedApp):
    datagrams = True  # the worker-naming echo on udp:// binds
    proxy_protocol = True  # it names no client, but takes the header (see protocol_factory)

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.connections = Connections()
        self.endpoints = DatagramEndpoints()
        self._front: ProxyFront | None = None
        body = json.dumps(
            {"pid": ctx.pid, "slot": ctx.slot, "mode": ctx.mode.value}, separators=(",", ":")
        ).encode()
        self.body = body
        self._second = -1
        self._keep: bytes = b""
        self._close: bytes = b""
        self._head_keep: bytes = b""
        self._head_close: bytes = b""
        self._last_stall = float("-inf")
        self._bad_request = (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 12\r\nConnection: close\r\n\r\nbad request\n"
        )

    def response(self, keep_alive: bool, head: bool) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            date = formatdate(now, usegmt=True).encode()
            base = (
                b"HTTP/1.1 200 OK\r\nServer: reuseport\r\nDate: " + date + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(self.body)).encode()
                + b"\r\n"
            )
            self._head_keep = base + b"\r\n"
            self._head_close = base + b"Connection: close\r\n\r\n"
            self._keep = self._head_keep + self.body
            self._close = self._head_close + self.body
        if head:
            return self._head_keep if keep_alive else self._head_close
        return self._keep if keep_alive else self._close

    def burn(self, url: bytes) -> None:
        """``/work?slot=K&ms=M``: burn CPU if we are slot K."""
        query = _query(url)
        try:
            slot = int(query.get("slot", ["-1"])[0])
            ms = min(float(query.get("ms", ["0"])[0]), _MAX_WORK_MS)
        except ValueError:
            return
        if slot != self.ctx.slot or ms <= 0:
            return
        deadline = time.perf_counter() + ms / 1000.0
        while time.perf_counter() < deadline:
            pass

    def stall(self, url: bytes) -> None:
        """``/stall?slot=K&ms=M&every=E``: block the loop M ms, at most every E ms, if slot K."""
        query = _query(url)
        try:
            slot = int(query.get("slot", ["-1"])[0])
            ms = min(float(query.get("ms", ["0"])[0]), _MAX_WORK_MS)
            every = float(query.get("every", ["1000"])[0])
        except ValueError:
            return
        now = time.monotonic()
        if slot != self.ctx.slot or ms <= 0 or now - self._last_stall < every / 1000.0:
            return
        self._last_stall = now
        time.sleep(ms / 1000.0)  # a blocking call, as an app might make by mistake

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        if not self.ctx.config.proxy_protocol:
            return lambda: DemoProtocol(self)
        if self._front is None:
            # Imported here: without --proxy-protocol the demo never loads it.
            from ..http.proxy import TrustedProxies
            from ..proxystage import ProxyFront

            config = self.ctx.config
            self._front = ProxyFront(
                lambda: DemoProtocol(self),
                trust=TrustedProxies(config.forwarded_allow_ips),
                connections=self.connections,
                stats=self.ctx.stats,
                timeout=config.header_read_timeout,
                tls=self.serving_ssl(),
            )
        return self._front

    def serving_ssl(self) -> ssl.SSLContext | None:
        return tls.offer_http11(self.ctx.tls) if self.ctx.tls is not None else None

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        for sock in sockets:
            if sock.type == socket.SOCK_DGRAM:
                await self.endpoints.open(sock, DemoDatagram(self))
            else:
                self.servers.append(await self.listen(sock))

    def set_keep_alive(self, allowed: bool) -> None:
        self.connections.set_keep_alive(allowed)

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        await self.stop_accepting()
        await asyncio.gather(
            self.connections.drain(timeout, reason, self.ctx.config.timeout_keep_alive),
            self.endpoints.close(timeout),
        )


class DemoDatagram(Endpoint):
    """The echo on a udp:// bind: the worker's JSON, a newline, then the datagram."""

    def __init__(self, app: DemoApp) -> None:
        super().__init__()
        self.stats = app.ctx.stats
        self.head = app.body + b"\n"
        self.room = _MAX_DATAGRAM - len(self.head)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        stats = self.stats
        stats.requests += 1
        stats.datagrams += 1
        if self.transport is not None:
            self.transport.sendto(self.head + data[: self.room], addr)


class DemoProtocol(asyncio.Protocol, ManagedConnection):
    __slots__ = ("app", "closing", "in_message", "out", "parser", "served", "transport", "url")

    def __init__(self, app: DemoApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.url = b""
        self.in_message = False
        self.closing = False
        self.served = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.app.ctx.stats.opened()
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.ctx.stats.closed()
        self.app.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.out.append(self.app._bad_request)
            self.closing = True
        except httptools.HttpParserError:
            self.out.append(self.app._bad_request)
            self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.out:
            transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out.clear()
        if self.closing:
            transport.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def proxied(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        pass  # the demo's answer names the worker, not the client

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.closing:
            return  # pipelined after a Connection: close; not answered
        app = self.app
        if self.url.startswith(b"/work"):
            app.burn(self.url)
        elif self.url.startswith(b"/stall"):
            app.stall(self.url)
        keep = self.parser.should_keep_alive() and app.connections.keep_alive
        self.out.append(app.response(keep, self.parser.get_method() == b"HEAD"))
        stats = app.ctx.stats
        stats.requests += 1
        if stats.requests == stats.request_limit:
            stats.reached_limit()
        self.served += 1
        if not keep:
            self.closing = True

    # ManagedConnection
    def shutdown(self) -> None:
        if self.transport is None:
            return
        # An idle keep-alive connection may be closed now (clients retry such
        # closes).  A connection that has not sent its first request yet was
        # accepted moments ago: its request is on the way, so answer it (with
        # Connection: close) rather than reset it.
        if not self.in_message and self.served > 0:
            self.closing = True
            self.transport.close()
        # else: the response in progress carries Connection: close.

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _DemoMarker:
    """What ``reuseport.apps.demo:app`` is: tells the registry to host DemoApp."""

    __reuseport_interface__ = Interface.PROTOCOL.value

    @staticmethod
    def __reuseport_hosted__(ctx: WorkerContext) -> HostedApp:
        return DemoApp(ctx)

    def __repr__(self) -> str:
        return "<reuseport demo app>"


app = _DemoMarker()
