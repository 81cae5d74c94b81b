"""The peer benchmark's Starlette app: a JSON endpoint (``starlette_json:app``).

``GET /`` gets ``200`` and a small JSON document from ``JSONResponse``, after
Starlette's routing and its default middleware (errors, exceptions), the way
a typical Starlette API answers.  Nothing here depends on the server, so each
one runs the same bytes of Python per request; ``scripts/profile_http.py``
profiles the same app.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def endpoint(request: Request) -> Response:
    return JSONResponse({"hello": "world", "path": request.url.path})


app = Starlette(routes=[Route("/", endpoint)])
