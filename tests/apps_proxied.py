"""Apps for ``test_proxy_protocol_serve.py``: each answers with who it thinks the client is.

- ``asgi_app``: ``{"pid", "client", "server", "scheme"}`` from the scope.
- ``wsgi_app``: ``{"pid", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT"}``.
- ``stream_handler``: a stream handler (which ``--proxy-protocol`` refuses).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def asgi_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps(
        {
            "pid": os.getpid(),
            "client": scope["client"],
            "server": scope["server"],
            "scheme": scope["scheme"],
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT")
    body = json.dumps({"pid": os.getpid(), **{k: environ.get(k) for k in keys}}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


async def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("load with reuseport serve apps_proxied:asgi_app --app-dir tests")
