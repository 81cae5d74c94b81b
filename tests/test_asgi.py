"""The ASGI adapter: lifespan, state, and real Starlette / FastAPI apps."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_apps import (
    LifespanApp,
    Probe,
    Tracker,
    exchange,
    fastapi_app,
    parse_responses,
    run,
    serving,
    starlette_app,
    wait_for,
)

from reuseport.apps.asgi import AsgiApp, as_asgi3
from reuseport.apps.base import WorkerContext
from reuseport.config import Config, Mode
from reuseport.errors import BootError


def _hosted(app: object, **config: Any) -> AsgiApp:
    ctx = WorkerContext(
        pid=os.getpid(), slot=0, generation=0, mode=Mode.SHARED, config=Config(**config)
    )
    return AsgiApp(app, ctx)


# --- lifespan -----------------------------------------------------------------


def test_lifespan_state_is_shared_and_copied_per_request() -> None:
    async def main() -> None:
        app = LifespanApp()
        async with serving(app, lifespan="on") as srv:
            async with httpx.AsyncClient() as client:
                for _ in range(2):
                    response = await client.get(srv.url + "/")
                    # "mutated" was set by the previous request on its copy only.
                    assert response.json() == [["db", "connected"]]
            assert srv.hosted.state == {"db": "connected"}
        assert app.shutdown_called.is_set()

    run(main())


def test_lifespan_auto_tolerates_app_without_lifespan(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:  # Probe raises on the lifespan scope
            (response,) = parse_responses(
                await exchange(
                    srv.port, b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                )
            )
            assert response.body == b"/ok"

    with caplog.at_level(logging.INFO, logger="reuseport.asgi"):
        run(main())
    assert any("does not support lifespan" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_lifespan_on_with_raising_app_is_a_boot_error() -> None:
    async def main() -> None:
        hosted = _hosted(Probe(), lifespan="on")
        with pytest.raises(BootError, match="Probe does not do lifespan"):
            await hosted.startup()

    run(main())


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_lifespan_startup_failed_is_a_boot_error(mode: str) -> None:
    async def main() -> None:
        hosted = _hosted(LifespanApp("fail"), lifespan=mode)
        with pytest.raises(BootError, match="database is down"):
            await hosted.startup()

    run(main())


def test_lifespan_exception_after_receiving_startup_in_auto_is_a_boot_error() -> None:
    async def main() -> None:
        # The app did speak lifespan (it received), then raised: in auto mode
        # this still counts as "no lifespan support" (nothing was sent) and
        # serving goes on.
        hosted = _hosted(LifespanApp("raise-after-receive"), lifespan="auto")
        await hosted.startup()
        await hosted.shutdown(1.0)
        hosted = _hosted(LifespanApp("raise-after-receive"), lifespan="on")
        with pytest.raises(BootError, match="lifespan exploded"):
            await hosted.startup()

    run(main())


def test_lifespan_off_never_calls_the_app() -> None:
    async def main() -> None:
        calls: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            calls.append(scope["type"])

        hosted = _hosted(app, lifespan="off")
        await hosted.startup()
        await hosted.shutdown(1.0)
        assert calls == []

    run(main())


def test_asgi_version_detection() -> None:
    class Asgi2:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            pass

    async def asgi3(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert as_asgi3(asgi3) is asgi3
    assert as_asgi3(Asgi2) is not Asgi2
    with pytest.raises(TypeError, match="not callable"):
        as_asgi3(42)


# --- Starlette --------------------------------------------------------------------


def test_starlette_app(tmp_path: Path) -> None:
    tracker = Tracker()
    payload = os.urandom(100_000)
    path = tmp_path / "data.bin"
    path.write_bytes(payload)

    async def main() -> None:
        app = starlette_app(str(path), tracker)
        # --ws none: the WebSocket handshake below is a plain HTTP request.
        async with serving(app, lifespan="on", ws="none") as srv:
            assert tracker.lifespan == ["startup"]
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
                response = await client.get("/json")
                assert response.json() == {"hello": "world", "state": "hi from lifespan"}

                response = await client.get("/stream")
                assert response.text == "0\n1\n2\n3\n4\n"
                assert response.headers["transfer-encoding"] == "chunked"

                big = os.urandom(10 * 1024 * 1024)
                response = await client.post("/echo", content=big)
                assert response.status_code == 200
                assert response.content == big

                response = await client.get("/file")
                assert response.content == payload
                assert response.headers["content-length"] == str(len(payload))

                response = await client.head("/file")
                assert response.status_code == 200
                assert response.content == b""
                assert response.headers["content-length"] == str(len(payload))

                response = await client.get("/background")
                assert response.text == "queued"
                await wait_for(tracker.background.wait())

                response = await client.get("/disconnected")
                assert response.json() == {"disconnected": False}

                response = await client.get("/missing")
                assert response.status_code == 404

            # With --ws none, a websocket handshake to a websocket-only route is
            # plain HTTP to the app: 404, then close (test_websocket.py has the rest).
            raw = await exchange(
                srv.port,
                b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            (response_,) = parse_responses(raw)
            assert response_.status == 404
        assert tracker.lifespan == ["startup", "shutdown"]

    run(main(), timeout=40)


def test_starlette_stream_client_disconnect_stops_generator() -> None:
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    stopped = asyncio.Event()
    started = asyncio.Event()

    async def endless(request: Any) -> StreamingResponse:
        async def gen() -> Any:
            try:
                while True:
                    started.set()
                    yield b"x" * 1024
                    await asyncio.sleep(0.001)
            finally:
                stopped.set()

        return StreamingResponse(gen())

    app = Starlette(routes=[Route("/", endless)])

    async def main() -> None:
        async with serving(app, lifespan="off") as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await wait_for(started.wait())
            await wait_for(reader.readuntil(b"\r\n\r\n"))
            writer.close()
            await wait_for(stopped.wait())

    run(main())


# --- FastAPI ----------------------------------------------------------------------


def test_fastapi_app() -> None:
    tracker = Tracker()

    async def main() -> None:
        async with serving(fastapi_app(tracker)) as srv:
            assert tracker.lifespan == ["startup"]
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
                response = await client.get("/items/7", params={"q": "x y"})
                assert response.json() == {"item_id": 7, "q": "x y"}

                response = await client.get("/items/nope")
                assert response.status_code == 422

                response = await client.get("/sync")
                assert response.json() == {"sync": True, "state": "lifespan-value"}

                response = await client.post("/echo-json", json={"a": [1, 2]})
                assert response.json() == {"got": {"a": [1, 2]}}

                response = await client.get("/background")
                assert response.text == "ok"
                await wait_for(tracker.background.wait())

                # Many concurrent requests on several connections.
                responses = await asyncio.gather(*(client.get(f"/items/{i}") for i in range(50)))
                assert [r.json()["item_id"] for r in responses] == list(range(50))
        assert tracker.lifespan == ["startup", "shutdown"]

    run(main())


def test_contextvars_do_not_leak_between_requests() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        before = var.get()
        var.set(scope["path"])
        body = json.dumps([before, var.get()]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with serving(app, lifespan="off") as srv:
            data = (
                b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            first, second = parse_responses(await exchange(srv.port, data))
            assert json.loads(first.body) == ["unset", "/a"]
            assert json.loads(second.body) == ["unset", "/b"]

    run(main())
