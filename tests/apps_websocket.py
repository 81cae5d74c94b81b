"""WebSocket apps for the tests (``test_websocket.py`` in-process,
``test_websocket_serve.py`` through ``reuseport serve --app-dir tests``).

- ``WsProbe``: a raw ASGI app whose behaviour depends on the path (``/echo``,
  ``/close-first``, ``/deny``, ``/deny-close``, ``/silent``, ``/hold``,
  ``/flood``, ``/drain``, ``/error``); records what it saw.
- ``fastapi_app``: FastAPI with ``@app.websocket("/ws")`` (an echo that says
  which worker answered) and ``GET /``.
- ``sse_app``: a server-sent-events stream that ends when its worker starts
  draining (``scope["extensions"]["reuseport.drain"]["event"]``), the example
  of the README's "drain signal" section.
- ``ignores_drain``: a WebSocket echo that never looks at the drain event, so
  the server has to close it at the graceful timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.requests import Request
from starlette.responses import StreamingResponse

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FLOOD_PIECE = 64 * 1024
FLOOD_COUNT = 1024


def drain_event(scope: Scope) -> asyncio.Event:
    """The worker's drain signal, as an app finds it in its scope."""
    event: asyncio.Event = scope["extensions"]["reuseport.drain"]["event"]
    return event


class WsProbe:
    """A raw ASGI WebSocket app; its behaviour depends on the path."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []  # everything receive() returned, in order
        self.events: dict[str, asyncio.Event] = {}
        self.sent = 0  # /flood: messages sent so far
        self.errors: list[BaseException] = []

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("WsProbe does not do lifespan")
        self.scopes.append(scope)
        if scope["type"] == "http":
            body = b"http " + scope["path"].encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        name = "h_" + scope["path"].strip("/").replace("-", "_")
        await getattr(self, name)(scope, self._recording(receive), send)

    def _recording(self, receive: Receive) -> Receive:
        async def recording() -> Message:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                self.event("disconnect").set()
            return message

        return recording

    async def h_echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        offered = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": offered[-1] if offered else None,
                "headers": [(b"x-probe", b"accepted")],
            }
        )
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4001, "reason": "as you wish"})
                await receive()  # the client's close answer: websocket.disconnect
                return
            reply = {"type": "websocket.send"}
            if message.get("text") is not None:
                reply["text"] = message["text"]
            else:
                reply["bytes"] = message["bytes"]
            await send(reply)

    async def h_close_first(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    async def h_deny(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Token")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    async def h_silent(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # returns without answering the handshake

    async def h_error(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise ValueError("boom in a WebSocket handler")

    async def h_hold(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Accept, then read nothing until the test sets "release"; then count."""
        await receive()
        await send({"type": "websocket.accept"})
        self.event("held").set()
        await self.event("release").wait()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def h_flood(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send 64 KiB messages for as long as the client takes them."""
        await receive()
        await send({"type": "websocket.accept"})
        piece = b"f" * FLOOD_PIECE
        try:
            while self.sent < FLOOD_COUNT:
                await send({"type": "websocket.send", "bytes": piece})
                self.sent += 1
            await send({"type": "websocket.close", "code": 1000})
        except OSError as exc:
            self.errors.append(exc)

    async def h_drain(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Accept, then close with 4000 as soon as the worker starts draining."""
        await receive()
        await send({"type": "websocket.accept"})
        self.event("accepted").set()
        await drain_event(scope).wait()
        await send({"type": "websocket.close", "code": 4000, "reason": "draining"})

    async def h_ignore_drain(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        self.event("accepted").set()
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def ignores_drain(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo until the client goes; never looks at the drain signal."""
    if scope["type"] != "websocket":
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or "?"})


# --- FastAPI -----------------------------------------------------------------

fastapi_app = FastAPI()


@fastapi_app.get("/")
async def fastapi_root() -> dict[str, Any]:
    return {"pid": os.getpid()}


@fastapi_app.websocket("/ws")
async def fastapi_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"echo": text, "pid": os.getpid()})
    except WebSocketDisconnect:
        pass


# --- server-sent events that end on drain ------------------------------------


async def _events(request: Request) -> AsyncIterator[bytes]:
    draining = drain_event(request.scope)
    n = 0
    while not draining.is_set():
        yield f"data: tick {n} from {os.getpid()}\n\n".encode()
        n += 1
        # Wait for the next tick or the drain signal, whichever comes first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(draining.wait(), 0.2)
    yield b"event: bye\ndata: the server is restarting\n\n"


async def sse(request: Request) -> StreamingResponse:
    return StreamingResponse(_events(request), media_type="text/event-stream")


sse_app = FastAPI()
sse_app.add_api_route("/events", sse)
