"""``--proxy-protocol``: the first stage of every connection, which reads its PROXY header.

Rules: with the flag on, the protocol factory a socket is served with (its
own accepts and a sibling's rescued ones alike) is a ``ProxyFront``; each
connection starts with a ``ProxyStage`` that reads the PROXY header
(``proxyproto.parse``) and nothing else, then hands the transport to the
real protocol: ``transport.set_protocol(inner)``, ``inner.connection_made``,
``inner.proxied(client, server)`` when the header names a proxied client,
and ``inner.data_received`` of the bytes that came after the header.  With
the flag off none of this exists, so the serving hot path is untouched; with
it on only connection start-up changes.

Who may send a header: only a peer in the trust list (``--forwarded-allow-ips``;
a Unix socket peer is trusted as 127.0.0.1 is).  With the flag on, every
connection must start with a header: one from an untrusted peer, one that
does not start with a valid header, one whose header is not complete within
the header-read timeout (a timer of its own, armed only while the header is
awaited), or one that ends before it is complete is closed without a word
(the sender is not speaking HTTP to us).  The first such refusal in a
worker is a warning that says what to check (a balancer not sending the
header, or not in the trust list, is otherwise invisible: every connection
would just close); the later ones are debug lines, so a scanner cannot
flood the log.  The stage holds at most the
longest header ``parse`` accepts plus one read.

TLS (``--ssl-certfile`` with the flag): the balancer passes the client's TLS
through and puts its header in front of it, so the loop must not start TLS
on accept (the adapters then serve their sockets without it, see
``HostedApp.accept_ssl``).  The stage reads the header as above; then,
instead of handing the plain transport over, it puts a server-side TLS
protocol on the transport (the loop's own: uvloop's on uvloop, asyncio's
otherwise), feeds it the bytes that came after the header (the start of
the ClientHello), and a one-shot ``_TlsStart`` takes the handshake's end:
it gives the TLS transport to the real protocol (``set_protocol``, then
``connection_made`` and ``proxied``), so decrypted data goes straight to it.
A handshake that fails (or that the client abandons) closes the
connection; the stage counts it as a refused one.  The handshake has the
loop's default time limit, as without the header.

Bookkeeping: the stage joins the adapter's ``Connections`` while it waits
(a graceful drain waits for it as for a fresh connection whose first request
is on the way; ``abort`` ends it) and leaves once the real protocol has
joined.  A connection closed by the stage never reaches the real protocol,
so the stage counts it in ``WorkerStats`` itself (opened and closed), which
also settles a rescued connection's pending count.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
from collections.abc import Callable, Container
from typing import Any, Protocol, cast

from .connections import Connections, ManagedConnection, WorkerStats
from .proxyproto import ProxyHeaderError, parse

__all__ = ["ProxiedProtocol", "ProxyFront", "ProxyStage"]

logger = logging.getLogger("reuseport.http")


class ProxiedProtocol(Protocol):
    """What a real protocol offers the stage: asyncio's calls, and the proxied addresses."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def proxied(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        """The connection is on behalf of ``client``, which connected to ``server``.

        Called right after ``connection_made``, before any data.
        """


class ProxyFront:
    """The protocol factory with ``--proxy-protocol`` on: one ``ProxyStage`` per connection."""

    __slots__ = (
        "connections",
        "inner",
        "loop",
        "stats",
        "timeout",
        "tls",
        "trust",
        "trust_local",
        "warned",
    )

    def __init__(
        self,
        inner: Callable[[], ProxiedProtocol],
        *,
        trust: Container[str],
        connections: Connections,
        stats: WorkerStats,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.inner = inner
        self.tls = tls  # TLS starts after the header (--ssl-certfile); None: plain
        self.trust = trust
        self.trust_local = "127.0.0.1" in trust  # for Unix socket peers
        self.connections = connections
        self.stats = stats
        self.timeout = timeout  # seconds for the whole header; 0: no limit
        self.loop = asyncio.get_running_loop()
        self.warned = False  # the first refusal was logged as a warning

    def __call__(self) -> ProxyStage:
        return ProxyStage(self)

    def refused(self, peer: object, why: str) -> None:
        """Log a connection closed for its PROXY header: a warning the first time only."""
        if self.warned:
            logger.debug("closing a connection from %s: %s", peer, why)
            return
        self.warned = True
        logger.warning(
            "closing a connection from %s: %s. With --proxy-protocol every connection "
            "must start with a PROXY header from a peer in --forwarded-allow-ips: check "
            "that the balancer sends one (HAProxy send-proxy-v2) and that its address is "
            "listed. (Further refusals are logged at debug level.)",
            peer,
            why,
        )


class ProxyStage(asyncio.Protocol, ManagedConnection):
    """One connection until its PROXY header is read (see the module docstring)."""

    __slots__ = ("buffer", "front", "handed_over", "peer", "timer", "transport")

    def __init__(self, front: ProxyFront) -> None:
        self.front = front
        self.buffer = b""
        self.peer: object = None
        self.handed_over = False
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        front = self.front
        peer = self.peer = transport.get_extra_info("peername")
        # A Unix socket's peer is local: trusted as 127.0.0.1 is.
        trusted = str(peer[0]) in front.trust if isinstance(peer, tuple) else front.trust_local
        if not trusted:
            front.refused(peer, "not trusted to send a PROXY header")
            self._refuse()
            return
        front.connections.add(self)
        if front.timeout > 0:
            self.timer = front.loop.call_later(front.timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.handed_over or self.transport is None or self.transport.is_closing():
            return
        buffer = self.buffer = self.buffer + data
        try:
            header = parse(buffer)
        except ProxyHeaderError as exc:
            self.front.refused(self.peer, str(exc))
            self._refuse()
            return
        if header is None:
            return
        self._hand_over(buffer[header.length :], header.source, header.destination)

    def eof_received(self) -> bool | None:
        logger.debug("connection from %s ended before its PROXY header did", self.peer)
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handed_over:
            return  # (never called: the real protocol has the transport)
        self._cancel_timer()
        self.buffer = b""
        self.gone()

    def gone(self) -> None:
        """The connection ended before the real protocol had it: forget and count it."""
        self.front.connections.discard(self)
        self.transport = None
        stats = self.front.stats
        stats.opened()  # counted as a connection that came and went
        stats.closed()

    # --- ManagedConnection ---------------------------------------------------

    def shutdown(self) -> None:
        # Like a fresh HTTP connection: its request is on the way; the
        # header-read timeout (or the drain's deadline) ends it if not.
        pass

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- the hand-over -------------------------------------------------------

    def _hand_over(
        self,
        rest: bytes,
        source: tuple[str, int] | None,
        destination: tuple[str, int] | None,
    ) -> None:
        transport = self.transport
        assert transport is not None
        front = self.front
        self.handed_over = True
        self._cancel_timer()
        self.buffer = b""
        inner = front.inner()
        if front.tls is not None:
            self._start_tls(transport, front.tls, inner, rest, source, destination)
            return
        transport.set_protocol(cast(asyncio.BaseProtocol, inner))
        inner.connection_made(transport)
        if source is not None and destination is not None:
            inner.proxied(source, destination)
        front.connections.discard(self)  # after the real protocol joined: no false "drained"
        self.transport = None
        if rest and not transport.is_closing():
            inner.data_received(rest)

    def _start_tls(
        self,
        transport: asyncio.Transport,
        context: ssl.SSLContext,
        inner: ProxiedProtocol,
        rest: bytes,
        source: tuple[str, int] | None,
        destination: tuple[str, int] | None,
    ) -> None:
        """TLS after the header; the stage stays in ``connections`` until the handshake ends."""
        loop = self.front.loop
        waiter = loop.create_future()
        start = _TlsStart(self, inner, source, destination)
        tls = _tls_protocol(loop, start, context, waiter)
        waiter.add_done_callback(start.handshake_done)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        # The bytes after the header are the start of the ClientHello.
        while rest and not transport.is_closing():
            buffer = tls.get_buffer(len(rest))
            size = min(len(buffer), len(rest))
            buffer[:size] = rest[:size]
            rest = rest[size:]
            tls.buffer_updated(size)

    def _too_slow(self) -> None:
        self.timer = None
        self.front.refused(self.peer, "no complete PROXY header in time")
        self._refuse()

    def _refuse(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _tls_protocol(
    loop: asyncio.AbstractEventLoop,
    app: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    waiter: asyncio.Future[Any],
) -> Any:
    """A server-side TLS protocol for ``app``: the one the loop uses for ``ssl=`` itself.

    uvloop does not export its (Cython) TLS protocol as a public API; should
    a release change it, asyncio's (which runs on any loop, slower) serves.
    """
    try:
        import uvloop

        if isinstance(loop, uvloop.Loop):
            return uvloop.loop.SSLProtocol(  # type: ignore[attr-defined]
                loop, app, context, waiter, True, None, True, None, None
            )
    except (ImportError, AttributeError, TypeError):
        pass
    return asyncio.sslproto.SSLProtocol(
        loop, app, context, waiter, server_side=True, call_connection_made=True
    )


class _TlsStart(asyncio.Protocol):
    """Takes the end of a TLS handshake after a PROXY header (see the module docstring)."""

    __slots__ = ("destination", "inner", "source", "stage")

    def __init__(
        self,
        stage: ProxyStage,
        inner: ProxiedProtocol,
        source: tuple[str, int] | None,
        destination: tuple[str, int] | None,
    ) -> None:
        self.stage = stage
        self.inner = inner
        self.source = source
        self.destination = destination

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The handshake is done: the TLS transport goes to the real protocol.
        inner = self.inner
        transport.set_protocol(cast(asyncio.BaseProtocol, inner))
        inner.connection_made(transport)
        if self.source is not None and self.destination is not None:
            inner.proxied(self.source, self.destination)
        stage = self.stage
        stage.front.connections.discard(stage)  # after the real protocol joined
        stage.transport = None

    def handshake_done(self, waiter: asyncio.Future[Any]) -> None:
        if waiter.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = waiter.exception()
            if exc is None:
                return  # connection_made above took it
        stage = self.stage
        logger.debug("TLS handshake after a PROXY header from %s failed: %s", stage.peer, exc)
        if stage.transport is not None:
            stage.transport.close()
        stage.gone()
