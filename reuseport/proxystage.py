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

Bookkeeping: the stage joins the adapter's ``Connections`` while it waits
(a graceful drain waits for it as for a fresh connection whose first request
is on the way; ``abort`` ends it) and leaves once the real protocol has
joined.  A connection closed by the stage never reaches the real protocol,
so the stage counts it in ``WorkerStats`` itself (opened and closed), which
also settles a rescued connection's pending count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container
from typing import Protocol, cast

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
    ) -> None:
        self.inner = inner
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
        self.front.connections.discard(self)
        self.buffer = b""
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
        transport.set_protocol(cast(asyncio.BaseProtocol, inner))
        inner.connection_made(transport)
        if source is not None and destination is not None:
            inner.proxied(source, destination)
        front.connections.discard(self)  # after the real protocol joined: no false "drained"
        self.transport = None
        if rest and not transport.is_closing():
            inner.data_received(rest)

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
