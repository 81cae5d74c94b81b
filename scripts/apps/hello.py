"""The peer benchmark's app: a raw ASGI 3 hello-world (``hello:app``).

Every HTTP request gets ``200``, ``text/plain`` and ``Hello, world!`` with a
Content-Length; the lifespan scope is acknowledged so every server starts it
the same way.  A WebSocket (the ``ws-echo`` scenario) is accepted and every
message echoed back as it came (text or bytes) until the client closes.
Nothing here depends on the server, so each one runs the same bytes of Python
per request or message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

BODY = b"Hello, world!"
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(BODY)).encode("ascii")),
    ],
}
RESPONSE: Message = {"type": "http.response.body", "body": BODY}


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
    await send(START)
    await send(RESPONSE)
