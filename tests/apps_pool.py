"""Test applications for the process-manager tests (``test_pool.py``).

Load them with ``reuseport serve apps_pool:NAME --app-dir tests``.  They are
raw ASGI apps, so the worker's HTTP server counts requests and requests in
flight in the scoreboard (the pool's busy/idle view needs both).

``app`` answers every request with ``{"pid", "path"}`` JSON, except:

- ``/block?s=S``: ``time.sleep(S)`` inside the handler, i.e. the event loop is
  stuck for S seconds (the heartbeat check must notice);
- ``/sleep?s=S``: ``await asyncio.sleep(S)``: a slow request on a live loop
  (the heartbeat check must leave it alone).

``crash_soon`` is ``app`` in a worker that exits (code 1) shortly after it
is ready, every time: a crash loop the master must slow down.

``RELOADABLE`` is the source of a module the reload tests write into a
temporary directory and rewrite between reloads; ``{version}`` is filled in.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_SECONDS = 30.0


async def _respond(send: Send, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _seconds(scope: Scope) -> float:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        return min(float(query.get("s", ["0"])[0]), _MAX_SECONDS)
    except ValueError:
        return 0.0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/block":
        time.sleep(_seconds(scope))  # noqa: ASYNC251 - stalls the event loop on purpose
    elif path == "/sleep":
        await asyncio.sleep(_seconds(scope))
    await _respond(send, {"pid": os.getpid(), "path": path})


CRASH_AFTER = 0.2


async def crash_soon(scope: Scope, receive: Receive, send: Send) -> None:
    """Serves like ``app``, but its worker dies (exit 1) ``CRASH_AFTER`` s after startup."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                asyncio.get_running_loop().call_later(CRASH_AFTER, os._exit, 1)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await app(scope, receive, send)


RELOADABLE = '''\
"""Written by test_pool.py; rewritten between reloads."""

import os

VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ('{{"pid": %d, "version": "%s"}}' % (os.getpid(), VERSION)).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
'''

BROKEN = '''\
"""Written by test_pool.py: importing this fails."""

raise RuntimeError("deliberately broken for the reload test")
'''
