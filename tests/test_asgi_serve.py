"""ASGI apps end to end through ``python -m reuseport serve``, in both listen modes.

The apps live in ``tests/apps_asgi_serve.py`` (loaded with ``--app-dir``).  Each
process test goes through ``support.Server``, which bounds every wait and
fails a test that leaves a process behind.  The last test drives the HTTP
protocol's graceful-shutdown rule in-process, where the timing is exact.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apps_asgi_serve import FAILURE_MESSAGE, STREAM_PARTS
from asgi_apps import WAIT, Probe, parse_responses, run, serving, until, wait_for
from features import requires_reuseport
from support import Server, child_env, read_responses, send_requests, wait_until

from reuseport.control import query

TESTS_DIR = str(Path(__file__).resolve().parent)
REUSEPORT = pytest.param("reuseport", marks=requires_reuseport)
MODES = [REUSEPORT, "shared"]
FRAMEWORKS = ["starlette_app", "fastapi_app"]
BIG = 10 * 1024 * 1024
_CONTROL = re.compile(r"Control socket at (\S+)")


def _serve(app: str, mode: str, *extra: str) -> Server:
    return Server(
        f"apps_asgi_serve:{app}", "--app-dir", TESTS_DIR, "-w", "2", "--mode", mode, *extra
    )


def _connection(server: Server, timeout: float = 10.0) -> http.client.HTTPConnection:
    host, port = server.address
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    return conn.getresponse()


def _pids_seen(server: Server, want: set[int], batches: int = 30) -> set[int]:
    """Send batches of concurrent one-shot requests until every pid in ``want`` answered."""
    seen: set[int] = set()
    for _ in range(batches):
        socks = send_requests(server.address, 16)
        try:
            answers = read_responses(socks, timeout=10.0)
        finally:
            for sock in socks:
                sock.close()
        for status, body in answers:
            assert status == 200, body
            seen.add(body["pid"])
        if want <= seen:
            break
    return seen


# ------------------------------------------------------------------ serving
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("app", FRAMEWORKS)
@pytest.mark.e2e
def test_framework_app_is_served_by_two_workers(app: str, mode: str) -> None:
    with _serve(app, mode) as server:
        ready = server.wait_ready()
        assert (ready["workers"], ready["interface"], ready["mode"]) == ("2", "asgi", mode)
        workers = set(server.wait_workers(2))
        framework = app.removesuffix("_app")

        conn = _connection(server)
        try:
            # JSON, and the lifespan state of the worker that answered.
            response = _get(conn, "/json")
            assert response.status == 200
            assert response.getheader("content-type") == "application/json"
            body = json.loads(response.read())
            assert body["framework"] == framework
            assert body["pid"] in workers
            assert body["lifespan_pid"] == body["pid"]
            assert body["greeting"] == "hi from lifespan"

            # A streamed response, on the same keep-alive connection.
            response = _get(conn, "/stream")
            assert response.status == 200
            assert response.getheader("transfer-encoding") == "chunked"
            assert response.read() == b"".join(f"part {i}\n".encode() for i in range(STREAM_PARTS))

            # 10 MB up and back.
            payload = os.urandom(BIG)
            conn.request(
                "POST", "/echo", body=payload, headers={"content-type": "application/octet-stream"}
            )
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("content-length") == str(BIG)
            echoed = response.read()
            assert len(echoed) == BIG
            assert echoed == payload
        finally:
            conn.close()

        # Both workers take requests.
        assert _pids_seen(server, workers) == workers
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.e2e
def test_asgi2_double_callable_is_detected_and_served(mode: str) -> None:
    with _serve("Asgi2App", mode) as server:
        ready = server.wait_ready()
        assert (ready["app"], ready["interface"]) == ("apps_asgi_serve:Asgi2App", "asgi")
        workers = set(server.wait_workers(2))
        status, body = server.request("/two/levels")
        assert status == 200
        assert body["asgi2"] == "/two/levels"
        assert body["pid"] in workers
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.e2e
def test_lifespan_startup_failure_exits_5_and_says_why_once(mode: str) -> None:
    with _serve("failing_lifespan", mode) as server:
        assert server.wait(20) == 5  # ExitCode.BOOT_ERROR: no respawn loop
    assert server.stderr.count(FAILURE_MESSAGE) == 1, server.stderr
    assert "lifespan startup failed" in server.stderr
    assert "Traceback" not in server.stderr


# ------------------------------------------------------------------ reload
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.e2e
def test_rolling_reload_under_load_fails_no_request(mode: str) -> None:
    with _serve("starlette_app", mode) as server:
        server.wait_ready()
        old = set(server.wait_workers(2))
        control = server.wait_for_line(_CONTROL)[1]
        host, port = server.address
        load = subprocess.Popen(
            [
                sys.executable,
                os.path.join(TESTS_DIR, "loadclient.py"),
                "--host",
                host,
                "--port",
                str(port),
                "--duration",
                "6",
                "--concurrency",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:

            def served() -> int:
                return sum(w["requests"] for w in query(control)["workers"])

            wait_until(lambda: served() >= 50, timeout=10.0, message="load never reached us")
            mark = len(server.lines)
            server.send_signal(signal.SIGHUP)
            server.wait_for_line(r"Reload complete: 2 worker\(s\)", timeout=20.0, start=mark)
            new = set(server.wait_workers(2))
            assert not new & old
            out, err = load.communicate(timeout=30.0)
        finally:
            if load.poll() is None:
                load.kill()
                load.communicate(timeout=5.0)
        assert load.returncode == 0, err
        result: dict[str, Any] = json.loads(out)
        assert result["failed"] == 0, result
        pids = {int(pid) for pid in result["pids"]}
        assert pids & old, result  # the load ran before the reload...
        assert pids & new, result  # ...and after it
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


# ------------------------------------------------------------------ shutdown rule
def test_graceful_shutdown_answers_fresh_connections_and_closes_idle_ones() -> None:
    """A connection whose first request is still on the way is answered, not closed."""

    async def main() -> None:
        async with serving(Probe()) as srv:
            stats = srv.ctx.stats
            fresh_r, fresh_w = await asyncio.open_connection("127.0.0.1", srv.port)
            partial_r, partial_w = await asyncio.open_connection("127.0.0.1", srv.port)
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                idle_w.write(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
                await wait_for(idle_r.readuntil(b"\r\n\r\n"))
                await wait_for(idle_r.readexactly(len(b"/idle")))
                partial_w.write(b"GET /partial HTTP/1.1\r\nHost: t\r\n")
                await partial_w.drain()
                await wait_for(until(lambda: stats.connections == 3))

                shutdown = asyncio.ensure_future(srv.hosted.shutdown(WAIT))
                # The idle keep-alive connection (it served a request) closes now...
                assert await wait_for(idle_r.read()) == b""
                # ...the others are still open and get answers, with Connection: close.
                fresh_w.write(b"GET /fresh HTTP/1.1\r\nHost: t\r\n\r\n")
                partial_w.write(b"\r\n")
                for reader, path in ((fresh_r, b"/fresh"), (partial_r, b"/partial")):
                    (answer,) = parse_responses(await wait_for(reader.read()))
                    assert (answer.status, answer.body) == (200, path)
                    assert answer.header(b"connection") == b"close"
                await wait_for(shutdown)
                assert stats.requests == 3
            finally:
                for writer in (fresh_w, partial_w, idle_w):
                    writer.close()

    run(main())


def test_graceful_shutdown_ends_a_silent_fresh_connection_at_the_header_timeout() -> None:
    async def main() -> None:
        async with serving(Probe(), header_read_timeout=0.3) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                await wait_for(until(lambda: srv.ctx.stats.connections == 1))
                loop = asyncio.get_running_loop()
                started = loop.time()
                await wait_for(srv.hosted.shutdown(WAIT))
                assert loop.time() - started < WAIT / 2  # the timeout, not the graceful deadline
                assert await wait_for(reader.read()) == b""
            finally:
                writer.close()

    run(main())
