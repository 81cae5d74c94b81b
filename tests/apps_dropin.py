"""ASGI apps for the drop-in end-to-end tests (``tests/test_dropin_serve.py``).

Load them with ``reuseport serve apps_dropin:NAME --app-dir tests``.  Every
HTTP request gets 200 and a JSON body with what the test checks: the
scope's scheme, server and client, the worker pid, how the app was made
(``factory``), and the ``DROPIN_VALUE`` and ``LISTEN_FDS`` variables the
worker sees.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _app(made_by: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = json.dumps(
            {
                "scheme": scope["scheme"],
                "server": scope["server"],
                "client": scope["client"],
                "path": scope["path"],
                "pid": os.getpid(),
                "made_by": made_by,
                "env": os.environ.get("DROPIN_VALUE"),
                "listen_fds": os.environ.get("LISTEN_FDS"),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


scope_app = _app("module")


def make_app() -> ASGIApp:
    """A factory (``--factory``): returns the app."""
    return _app("factory")


def broken_factory() -> ASGIApp:
    raise RuntimeError("the factory could not reach its database (test 5151)")


async def printing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``scope_app`` that first writes the path three ways no logger sees:
    ``print()`` to stdout, ``print()`` to stderr, and straight to fd 2 (as a C
    library would); for ``--capture-output``."""
    if scope["type"] == "http":
        path = scope["path"]
        print(f"stdout print {path}")
        print(f"stderr print {path}", file=sys.stderr)
        os.write(2, f"fd2 write {path}\n".encode())
    await scope_app(scope, receive, send)
