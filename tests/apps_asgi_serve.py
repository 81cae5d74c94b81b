"""ASGI apps for ``reuseport serve`` end-to-end tests (``tests/test_asgi_serve.py``).

Load them with ``reuseport serve apps_asgi_serve:NAME --app-dir tests``.  The
Starlette and FastAPI apps offer the same routes, so one test body covers both:

- ``GET /``: ``{"pid": <worker pid>}``, the body ``tests/loadclient.py`` expects;
- ``GET /json``: a JSON document with the worker pid and the lifespan state;
- ``GET /stream``: a streamed (chunked) ``text/plain`` response;
- ``POST /echo``: the request body, back.

The lifespan of each stores the pid of the worker that ran it in the state, so
a request can show that it sees the state of its own worker's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STREAM_PARTS = 20
FAILURE_MESSAGE = "the database at db.invalid:5432 is down (test 4242)"


@contextlib.asynccontextmanager
async def _lifespan(app: object) -> AsyncIterator[dict[str, Any]]:
    yield {"lifespan_pid": os.getpid(), "greeting": "hi from lifespan"}


async def _numbers() -> AsyncIterator[bytes]:
    for i in range(STREAM_PARTS):
        yield f"part {i}\n".encode()
        await asyncio.sleep(0.001)


# --- Starlette ---------------------------------------------------------------


async def _root(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


async def _json(request: Request) -> Response:
    return JSONResponse(
        {
            "pid": os.getpid(),
            "lifespan_pid": request.state.lifespan_pid,
            "greeting": request.state.greeting,
            "framework": "starlette",
        }
    )


async def _stream(request: Request) -> Response:
    return StreamingResponse(_numbers(), media_type="text/plain")


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


starlette_app = Starlette(
    routes=[
        Route("/", _root),
        Route("/json", _json),
        Route("/stream", _stream),
        Route("/echo", _echo, methods=["POST"]),
    ],
    lifespan=_lifespan,
)


# --- FastAPI -----------------------------------------------------------------

fastapi_app = FastAPI(lifespan=_lifespan)


@fastapi_app.get("/")
async def fastapi_root() -> dict[str, Any]:
    return {"pid": os.getpid()}


@fastapi_app.get("/json")
async def fastapi_json(request: Request) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "lifespan_pid": request.state.lifespan_pid,
        "greeting": request.state.greeting,
        "framework": "fastapi",
    }


@fastapi_app.get("/stream")
async def fastapi_stream() -> StreamingResponse:
    return StreamingResponse(_numbers(), media_type="text/plain")


@fastapi_app.post("/echo")
async def fastapi_echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


# --- raw ASGI ----------------------------------------------------------------


async def failing_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuses to start: its lifespan startup reports a failure."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": FAILURE_MESSAGE})
        return
    raise AssertionError("never serves: startup failed")  # pragma: no cover


class Asgi2App:
    """An ASGI 2 double-callable: ``Asgi2App(scope)`` then ``await instance(receive, send)``."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] != "http":
            return  # lifespan: returning without a word means "not supported"
        body = json.dumps({"pid": os.getpid(), "asgi2": self.scope["path"]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
