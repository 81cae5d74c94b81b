"""Apps for the start and stop tests (``tests/test_start_stop.py``).

Load them with ``reuseport serve apps_lifecycle:NAME --app-dir tests``:

- ``failing_startup``: a Starlette app whose lifespan startup raises;
- ``hanging_startup``: a Starlette app whose lifespan startup never ends
  (it says on stderr when it has begun);
- (``apps_blocking_import``: an app whose import blocks;)
- ``keepalive_app``: ``GET /`` answers ``{"pid": <worker pid>}``, a small
  Starlette app for the ``--max-requests`` test; ``keepalive_wsgi`` the same
  as a WSGI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FAILURE = "the database at db.invalid:5432 is down (lifecycle 4242)"
STARTUP_BEGUN = "hanging_startup: lifespan startup begun"
IMPORT_BEGUN = "apps_blocking_import: import begun"  # printed by that module


@contextlib.asynccontextmanager
async def _failing(app: object) -> AsyncIterator[None]:
    raise RuntimeError(FAILURE)
    yield  # pragma: no cover - never reached


@contextlib.asynccontextmanager
async def _hanging(app: object) -> AsyncIterator[None]:
    print(f"{STARTUP_BEGUN} in pid {os.getpid()}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()  # until the worker is stopped
    yield  # pragma: no cover - never reached


async def _root(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


failing_startup = Starlette(routes=[Route("/", _root)], lifespan=_failing)
hanging_startup = Starlette(routes=[Route("/", _root)], lifespan=_hanging)
keepalive_app = Starlette(routes=[Route("/", _root)])


def keepalive_wsgi(environ: dict[str, object], start_response: Any) -> list[bytes]:
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
