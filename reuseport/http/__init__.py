"""HTTP/1.1 for ASGI apps: an httptools-based asyncio Protocol.

``HttpServer`` holds what all connections of one app in a worker share and is
the protocol factory handed to ``loop.create_server``; ``HttpProtocol`` is one
connection.  The ASGI adapter (``reuseport.apps.asgi``) wires them to the
worker's lifecycle.
"""

from __future__ import annotations

from .protocol import ASGIApp, ClientDisconnected, HttpProtocol, HttpServer

__all__ = ["ASGIApp", "ClientDisconnected", "HttpProtocol", "HttpServer"]
