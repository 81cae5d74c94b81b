"""HTTP/1.1 for ASGI and WSGI apps: an httptools-based asyncio Protocol.

``HttpServer`` holds what all connections of one app in a worker share and is
the protocol factory handed to ``loop.create_server``; ``HttpProtocol`` is one
connection.  The ASGI adapter (``reuseport.apps.asgi``) wires them to the
worker's lifecycle.

The modules, from the wire up (each opens with its rules):

* ``_wire``: bytes computed once (status lines, Date, canned errors).
* ``framing``: response framing without I/O (``ResponseFramer``).
* ``proxy``: which peers may set X-Forwarded-For/-Proto.
* ``flow``: read pausing and the write drain waiter of one transport.
* ``_eager``: a request's first step runs inline; a Task only if it suspends.
* ``cycle``: one request as the ASGI app sees it (``receive``/``send``).
* ``protocol``: one connection (parser callbacks, queue, deadlines, errors).
* ``server``: the per-worker shared state and the tick.
* ``wsgi_environ`` and ``wsgi``: WSGI apps on a thread pool; the same
  connection with another cycle class (``WsgiServer``, imported by the WSGI
  adapter only, so ASGI workers never load it).

Nothing here imports from ``reuseport.apps``: connection counters and the
drain set come from ``reuseport.connections``, below both.
"""

from __future__ import annotations

from .cycle import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send
from .protocol import HttpProtocol
from .server import HttpServer

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "HttpProtocol",
    "HttpServer",
    "Message",
    "Receive",
    "Scope",
    "Send",
]
