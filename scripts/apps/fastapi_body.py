"""The peer benchmark's FastAPI app: a pydantic request body (``fastapi_body:app``).

``POST /items`` with a JSON body (``BODY``) is parsed and validated into an
``Item`` model and answered with it (the response model validates and
serialises it again), the way a typical FastAPI endpoint works; ``GET /``
answers ``Hello, world!`` for the benchmark's readiness probe.  Nothing here
depends on the server, so each one runs the same bytes of Python per request;
``scripts/profile_http.py`` profiles the same app.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

# The request every benchmark and profile sends to POST /items.
BODY = b'{"name": "widget", "price": 9.5, "tags": ["a", "b"], "stock": 12}'


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []
    stock: int = 0


app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return "Hello, world!"


@app.post("/items")
async def create_item(item: Item) -> Item:
    return item
