"""What the ASGI and WSGI adapters share: one ``HttpServer`` per worker, made on first use.

Rules: the server (the protocol factory every listening socket is served
with) is made lazily by ``make_server`` and kept in ``http``; ``serve``
starts its tick before the sockets are served; TLS offers ALPN
``http/1.1``; ``set_keep_alive`` (``--max-requests``) goes to its
connections.  Each adapter keeps its own startup and shutdown (lifespan,
the WSGI thread pool).  With ``--proxy-protocol`` the factory is a
``proxystage.ProxyFront`` in front of the server (so rescued connections
read their PROXY header too); without it, the server itself.
"""

from __future__ import annotations

import abc
import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .. import tls
from ..http import HttpServer
from ..proxystage import ProxyFront
from .base import HostedApp

__all__ = ["HttpHostedApp"]

S = TypeVar("S", bound=HttpServer)


class HttpHostedApp(HostedApp, Generic[S]):
    """A hosted app served by an ``HttpServer`` (``S``: its kind)."""

    proxy_protocol = True
    http: S | None = None
    _front: ProxyFront | None = None

    @abc.abstractmethod
    def make_server(self) -> S:
        """The worker's HTTP server for this app (called once)."""

    def http_server(self) -> S:
        if self.http is None:
            self.http = self.make_server()
        return self.http

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        server = self.http_server()
        if not self.ctx.config.proxy_protocol:
            return server
        if self._front is None:
            self._front = ProxyFront(
                server,
                trust=server.trust,
                connections=server.connections,
                stats=server.stats,
                timeout=server.header_timeout,
                tls=self.serving_ssl(),
            )
        return self._front

    def set_keep_alive(self, allowed: bool) -> None:
        if self.http is not None:
            self.http.connections.set_keep_alive(allowed)

    def serving_ssl(self) -> ssl.SSLContext | None:
        return tls.offer_http11(self.ctx.tls) if self.ctx.tls is not None else None

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        self.http_server().start()
        await super().serve(sockets)
