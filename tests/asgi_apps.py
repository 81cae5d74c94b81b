"""Test applications (raw ASGI, Starlette, FastAPI) and in-process serving helpers.

Rules: every helper bounds its waits; servers listen on 127.0.0.1 port 0 and
the tests read the port back from the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from reuseport.apps.asgi import AsgiApp
from reuseport.apps.base import WorkerContext
from reuseport.config import Config, Mode

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WAIT = 5.0  # seconds: the bound for any single wait in these tests


# --- running a server in-process ---------------------------------------------


def run(main: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run ``main`` on a fresh uvloop loop, bounded by ``timeout``."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(main, timeout))


@dataclass
class Running:
    hosted: AsgiApp
    ctx: WorkerContext
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(
    app: object, *, tls_context: ssl.SSLContext | None = None, **config: Any
) -> AsyncIterator[Running]:
    """Start ``app`` on a fresh listening socket; drain and stop it on exit.

    ``tls_context``: the worker's TLS context (``tls.server_context`` of the same settings).
    """
    ctx = WorkerContext(
        pid=os.getpid(),
        slot=0,
        generation=0,
        mode=Mode.SHARED,
        config=Config(**config),
        tls=tls_context,
    )
    hosted = AsgiApp(app, ctx)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        await hosted.startup()
        await hosted.serve([sock])
        yield Running(hosted, ctx, sock.getsockname()[1])
    finally:
        try:
            await hosted.shutdown(2.0)
        finally:
            sock.close()


async def exchange(port: int, data: bytes, *, timeout: float = WAIT) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


@dataclass
class Response_:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_count(self, name: bytes) -> int:
        return sum(1 for key, _ in self.headers if key.lower() == name.lower())


class _ResponseCollector:
    def __init__(self) -> None:
        self.responses: list[Response_] = []
        self.current: Response_ | None = None
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.current = Response_(status=0)
        self.responses.append(self.current)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        assert self.parser is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True


def parse_responses(data: bytes) -> list[Response_]:
    """Split a byte stream into responses (not for answers to HEAD)."""
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    parser.feed_data(data)
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(b"")  # end of a close-delimited body
    return collector.responses


# --- raw ASGI apps -----------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def send_text(send: Send, status: int, text: str | bytes, **headers: str) -> None:
    body = text.encode() if isinstance(text, str) else text
    raw_headers = [(b"content-type", b"text/plain")] + [
        (k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def scope_json(scope: Scope) -> bytes:
    """The parts of a scope a test wants to look at, as JSON."""
    return json.dumps(
        {
            "type": scope["type"],
            "asgi": scope["asgi"],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "root_path": scope["root_path"],
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "client": list(scope["client"]) if scope["client"] else None,
            "server": list(scope["server"]) if scope["server"] else None,
            "state": sorted(scope["state"]),
        }
    ).encode()


class Probe:
    """A raw ASGI app whose behaviour depends on the path; records what it saw."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.messages: list[Message] = []
        self.events: dict[str, asyncio.Event] = {}
        self.errors: list[BaseException] = []

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("Probe does not do lifespan")
        self.scopes.append(scope)
        path = scope["path"]
        handler = getattr(self, "h_" + path.strip("/").split("/")[-1].replace("-", "_"), None)
        if handler is None:
            await send_text(send, 200, path)
            return
        await handler(scope, receive, send)

    async def h_scope(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send_text(send, 200, scope_json(scope))

    async def h_echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await send_text(send, 200, body)

    async def h_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def h_nobody(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Answers without reading the request body.
        await send_text(send, 200, b"ignored your body")

    async def h_error(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("boom before start")

    async def h_error_sync(self, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom after a suspension")

    async def h_error_after(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after start")

    async def h_silent(self, scope: Scope, receive: Receive, send: Send) -> None:
        return  # no response at all

    async def h_wait(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Hold the request until the test releases it.
        self.event("wait-entered").set()
        await self.event("release").wait()
        await send_text(send, 200, b"released")

    async def h_head_first(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Start in the first step, then wait: the head must go out meanwhile.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await self.event("head-release").wait()
        await send({"type": "http.response.body", "body": b"late body"})

    async def h_head_later(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The same from a later step (the request has a Task by then).
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await self.event("head-release").wait()
        await send({"type": "http.response.body", "body": b"late body"})

    async def h_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        self.event("disconnect-entered").set()
        message = await receive()
        self.messages.append(message)
        self.event("disconnect-seen").set()
        try:
            await send_text(send, 200, b"too late")
        except OSError as exc:
            self.errors.append(exc)
            self.event("send-failed").set()

    async def h_after_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send_text(send, 200, b"done")
        message = await receive()
        self.messages.append(message)
        self.event("after-response").set()

    async def h_continue(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.event("continue-entered").set()
        await self.event("continue-read").wait()
        body = await read_body(receive)
        await send_text(send, 200, body)

    async def h_trailers(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"with trailers", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})

    async def h_server_header(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 200, b"mine", server="custom", date="Mon, 01 Jan 2024 00:00:00 GMT")

    async def h_no_length(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"single shot"})

    async def h_status_204(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def h_slow_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Read the body slowly: reading must pause instead of buffering it all.
        total = 0
        peak = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            peak = max(peak, len(message.get("body", b"")))
            if not message.get("more_body"):
                break
            await asyncio.sleep(0.001)
        await send_text(send, 200, f"{total} {peak}")

    async def h_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        # 8 MiB in 64 KiB pieces: send() must wait for a slow reader.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * 65536
        for _ in range(128):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.event("big-done").set()


class Asgi2App:
    """An ASGI 2 double-callable."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] != "http":
            return
        await send_text(send, 200, b"asgi2 " + self.scope["path"].encode())


class LifespanApp:
    """Raw ASGI app with configurable lifespan behaviour."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.shutdown_called = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            if self.behaviour == "fail":
                await send({"type": "lifespan.startup.failed", "message": "database is down"})
                return
            if self.behaviour == "raise-after-receive":
                raise RuntimeError("lifespan exploded")
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            self.shutdown_called.set()
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen = sorted(scope["state"].items())
        scope["state"]["mutated"] = True  # must not leak into the next request
        await send_text(send, 200, json.dumps(seen))


# --- Starlette and FastAPI ---------------------------------------------------


@dataclass
class Tracker:
    background: asyncio.Event = field(default_factory=asyncio.Event)
    lifespan: list[str] = field(default_factory=list)


def starlette_app(tmp_file: str, tracker: Tracker) -> Starlette:
    async def json_endpoint(request: Request) -> Response:
        return JSONResponse({"hello": "world", "state": request.state.greeting})

    async def stream(request: Request) -> Response:
        async def numbers() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"{i}\n".encode()
                await asyncio.sleep(0)

        return StreamingResponse(numbers(), media_type="text/plain")

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body, media_type="application/octet-stream")

    async def file(request: Request) -> Response:
        return FileResponse(tmp_file)

    async def background(request: Request) -> Response:
        async def note() -> None:
            await asyncio.sleep(0)
            tracker.background.set()

        return Response("queued", background=BackgroundTask(note))

    async def disconnected(request: Request) -> Response:
        return JSONResponse({"disconnected": await request.is_disconnected()})

    async def ws(websocket: WebSocket) -> None:  # pragma: no cover - never reached over HTTP
        await websocket.accept()
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        tracker.lifespan.append("startup")
        yield {"greeting": "hi from lifespan"}
        tracker.lifespan.append("shutdown")

    return Starlette(
        routes=[
            Route("/json", json_endpoint),
            Route("/stream", stream),
            Route("/echo", echo, methods=["POST"]),
            Route("/file", file),
            Route("/background", background),
            Route("/disconnected", disconnected),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=lifespan,
    )


def fastapi_app(tracker: Tracker) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        tracker.lifespan.append("startup")
        yield {"counter": "lifespan-value"}
        tracker.lifespan.append("shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.get("/sync")
    def sync_endpoint(request: Request) -> dict[str, Any]:  # runs in the threadpool
        return {"sync": True, "state": request.state.counter}

    @api.post("/echo-json")
    async def echo_json(payload: dict[str, Any]) -> dict[str, Any]:
        return {"got": payload}

    @api.get("/background")
    async def background() -> Response:
        async def note() -> None:
            tracker.background.set()

        return Response("ok", background=BackgroundTask(note))

    return api


def wait_for(aw: Awaitable[Any], timeout: float = WAIT) -> Awaitable[Any]:
    return asyncio.wait_for(aw, timeout)


async def until(predicate: Callable[[], object], interval: float = 0.005) -> None:
    """Poll server state that has no event of its own (counters, connection sets).

    Unbounded by itself: callers bound it, ``await wait_for(until(...))``.
    """
    while not predicate():  # noqa: ASYNC110 - plain attributes, no event to wait on
        await asyncio.sleep(interval)
