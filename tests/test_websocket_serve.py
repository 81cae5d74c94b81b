"""WebSocket end to end through ``python -m reuseport serve``, with the
``websockets`` client: a FastAPI route in both listen modes, the close code a
graceful stop sends, a reload with a server-sent-events stream open (the drain
signal ends it at once), and the log line of an install without the extra.

The apps are in ``tests/apps_websocket.py`` (loaded with ``--app-dir``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from features import requires_reuseport
from support import REPO_ROOT, Server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
SHADOW = os.path.join(TESTS_DIR, "shadow_no_websockets")
MODES = [pytest.param("reuseport", marks=requires_reuseport), "shared"]
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _serve(app: str, *extra: str, env: dict[str, str] | None = None) -> Server:
    return Server(f"apps_websocket:{app}", "--app-dir", TESTS_DIR, *extra, env=env)


def _url(server: Server, path: str) -> str:
    host, port = server.address
    return f"ws://{host}:{port}{path}"


@pytest.mark.parametrize("mode", MODES)
def test_fastapi_websocket_route_is_served_by_the_workers(mode: str) -> None:
    with _serve("fastapi_app", "-w", "2", "--mode", mode) as server:
        server.wait_ready()
        workers = set(server.wait_workers(2))
        for _ in range(4):
            with connect(_url(server, "/ws"), open_timeout=10) as ws:
                for text in ("one", "two"):
                    ws.send(text)
                    reply = json.loads(ws.recv(timeout=10))
                    assert reply["echo"] == text
                    assert reply["pid"] in workers
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_graceful_stop_closes_an_open_websocket_with_1001_at_the_timeout() -> None:
    timeout = 2.0
    with _serve("ignores_drain", "-w", "1", "--graceful-timeout", str(timeout)) as server:
        server.wait_ready()
        with connect(_url(server, "/ws"), open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=timeout + 5)
            elapsed = time.monotonic() - started
            assert ws.close_code == 1001
            # It stayed open for the graceful time, then was closed politely.
            assert timeout / 2 <= elapsed < timeout + 1.0
        assert server.wait(15) == 0
    assert "Traceback" not in server.stderr


def test_a_reload_closes_an_open_websocket_with_1012_at_the_timeout() -> None:
    """HUP: the old worker's WebSocket is told the service restarts (1012), not 1001."""
    timeout = 2.0
    with _serve("ignores_drain", "-w", "1", "--graceful-timeout", str(timeout)) as server:
        server.wait_ready()
        with connect(_url(server, "/ws"), open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            server.send_signal(signal.SIGHUP)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=timeout + 10)
            assert ws.close_code == 1012
        server.wait_for_line(r"Reload complete: 1 worker\(s\)", timeout=20)
        with connect(_url(server, "/ws"), open_timeout=10) as ws:  # the new worker serves
            ws.send("again")
            assert ws.recv(timeout=10) == "again"
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_reload_with_an_sse_stream_open_ends_it_through_the_drain_signal() -> None:
    """HUP while a stream is open: the stream ends at once, not at --graceful-timeout."""
    with _serve("sse_app", "-w", "1", "--graceful-timeout", "30") as server:
        server.wait_ready()
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=20)
        chunks: list[bytes] = []
        try:
            conn.request("GET", "/events")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("content-type", "").startswith("text/event-stream")
            chunks.append(response.read1())  # the first tick: the stream is open
            ended = threading.Event()

            def read_rest() -> None:
                while piece := response.read1():
                    chunks.append(piece)
                ended.set()

            reader = threading.Thread(target=read_rest, daemon=True)
            reader.start()
            mark = len(server.lines)
            started = time.monotonic()
            server.send_signal(signal.SIGHUP)
            server.wait_for_line(r"Reload complete: 1 worker\(s\)", timeout=20, start=mark)
            took = time.monotonic() - started
            assert ended.wait(10), "the stream did not end"
            reader.join(5)
        finally:
            conn.close()
        assert took < 10, f"the reload took {took:.1f}s: the stream held the old worker"
        body = b"".join(chunks)
        assert body.startswith(b"data: tick 0")
        assert body.endswith(b"event: bye\ndata: the server is restarting\n\n")
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_without_the_extra_upgrades_are_plain_http_and_the_log_says_why_once() -> None:
    env = {"PYTHONPATH": os.pathsep.join([SHADOW, REPO_ROOT])}
    with _serve("fastapi_app", "-w", "1", env=env) as server:
        server.wait_ready()
        host, port = server.address
        for _ in range(3):
            raw = _exchange(host, port, HANDSHAKE)
            assert raw.startswith(b"HTTP/1.1 404 "), raw[:100]
        server.wait_for_line(r"WebSocket support needs the websockets package")
        assert server.stop() == 0
    assert server.count_lines(r"WebSocket support needs the websockets package") == 1
    assert server.count_lines(r"pip install 'reuseport\[websockets\]'") == 1


def _exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return raw
