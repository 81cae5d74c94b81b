"""WSGI apps end to end through ``python -m reuseport serve``, with real clients.

The apps live in ``tests/apps_wsgi.py`` (loaded with ``--app-dir``).  Every
wait is bounded; where a test shows that something does *not* grow (the
worker buffering a response or an upload), it watches for a bounded window
while the unbounded behaviour would have run far past the limit.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from apps_wsgi import STREAM_PARTS
from features import requires_reuseport
from support import Server, read_responses, send_requests, wait_until

from reuseport.control import query

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
MODES = [pytest.param("reuseport", marks=requires_reuseport), "shared"]
MIB = 1024 * 1024
_CONTROL = re.compile(r"Control socket at (\S+)")


def _serve(app: str, *extra: str, workers: int = 1) -> Server:
    return Server(f"apps_wsgi:{app}", "--app-dir", TESTS_DIR, "-w", str(workers), *extra)


def _connection(server: Server, timeout: float = 10.0) -> http.client.HTTPConnection:
    host, port = server.address
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _get_json(server: Server, path: str) -> Any:
    status, body = server.request(path, timeout=10.0)
    assert status == 200, body
    return body


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def _kernel_buffers() -> int:
    """The most bytes loopback TCP can hold between two processes (both max buffers)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}", encoding="ascii") as fh:
            total += int(fh.read().split()[2])
    return total


# --- Flask -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_flask_app_is_detected_and_served(mode: str) -> None:
    with _serve("flask_app", "--mode", mode, workers=2) as server:
        ready = server.wait_ready()
        assert (ready["interface"], ready["mode"]) == ("wsgi", mode)
        server.wait_for_line(
            r"serving apps_wsgi:flask_app on 8 app threads per worker "
            r"\(plain callable\(environ, start_response\) \(WSGI\)\)"
        )
        workers = set(server.wait_workers(2))
        conn = _connection(server)
        try:
            conn.request("GET", "/json")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("content-type") == "application/json"
            doc = json.loads(response.read())
            assert doc["framework"] == "flask"
            assert doc["pid"] in workers
            assert doc["remote"] == "127.0.0.1"
            assert doc["scheme"] == "http"
            assert doc["thread"].startswith("reuseport-wsgi-")

            # A streamed response, on the same keep-alive connection.
            conn.request("GET", "/stream")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("transfer-encoding") == "chunked"
            assert response.read() == b"".join(f"part {i}\n".encode() for i in range(STREAM_PARTS))

            # 10 MiB up: the app reads it in pieces.
            payload = os.urandom(10 * MIB)
            conn.request("POST", "/upload", body=payload)
            response = conn.getresponse()
            assert response.status == 200
            doc = json.loads(response.read())
            assert doc == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        finally:
            conn.close()
        seen: set[int] = set()
        for _ in range(30):
            socks = send_requests(server.address, 8, "/pid")
            try:
                seen |= {body["pid"] for _, body in read_responses(socks, timeout=10.0)}
            finally:
                for sock in socks:
                    sock.close()
            if seen == workers:
                break
        assert seen == workers
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_sixteen_blocking_requests_run_in_parallel_on_sixteen_threads() -> None:
    with _serve("flask_app", "--threads", "16") as server:
        server.wait_ready()
        _get_json(server, "/pid")  # warm: Flask's first request imports more
        started = time.monotonic()
        socks = send_requests(server.address, 16, "/sleep?s=0.5")
        try:
            answers = read_responses(socks, timeout=15.0)
        finally:
            for sock in socks:
                sock.close()
        elapsed = time.monotonic() - started
        assert [status for status, _ in answers] == [200] * 16
        # Each blocks its thread for 0.5 s: one after another would take 8 s.
        assert max(body["peak"] for _, body in answers) == 16
        assert elapsed < 4.0, f"16 x 0.5 s took {elapsed:.2f} s"
        assert server.stop() == 0


# --- conformance -------------------------------------------------------------------


def test_wsgiref_validator_finds_no_fault() -> None:
    with _serve("validated_app", "--interface", "wsgi", "--root-path", "/app") as server:
        server.wait_ready()
        conn = _connection(server)
        body = b"first line\nsecond line\nthird"
        try:
            conn.request("GET", "/info?x=1")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {
                "REQUEST_METHOD": "GET",
                "SCRIPT_NAME": "/app",
                "PATH_INFO": "/info",
                "QUERY_STRING": "x=1",
                "SERVER_PROTOCOL": "HTTP/1.1",
            }
            for path in ("/read", "/readline", "/iter"):
                conn.request("POST", path, body=body)
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, body), path
            conn.request("POST", "/read", body=iter([b"chunked ", b"body"]))  # chunked
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"chunked body")
            conn.request("GET", "/write")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"written, then returned")
            conn.request("GET", "/stream")
            response = conn.getresponse()
            assert response.read() == b"".join(f"line {i}\n".encode() for i in range(5))
            conn.request("GET", "/file")
            response = conn.getresponse()
            assert response.read() == Path(TESTS_DIR, "apps_wsgi.py").read_bytes()
            conn.request("HEAD", "/info")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"")
        finally:
            conn.close()
        server.wait_for_line(r"conformance request /file")  # wsgi.errors: the error log
        assert server.stop() == 0
    for fault in ("Traceback", "AssertionError", "WSGIWarning", "Exception ignored"):
        assert fault not in server.stderr


# --- streaming and back-pressure ---------------------------------------------------


def test_a_slow_client_never_makes_the_worker_buffer_the_response() -> None:
    pieces = 256  # of 1 MiB
    with _serve("raw_app") as server:
        server.wait_ready()
        (worker,) = server.wait_workers(1)
        before = _vm_hwm_kib(worker)
        host, port = server.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.settimeout(10.0)
            sock.connect((host, port))
            sock.sendall(f"GET /big?{pieces} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            wait_until(lambda: _get_json(server, "/state")["produced"] >= 2)
            # The client reads nothing for a while; unbounded, the app would
            # run through all 256 MiB in a fraction of this window.
            produced = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                produced.append(_get_json(server, "/state")["produced"])
            assert max(produced) <= 16, produced
            received = 0
            while chunk := sock.recv(MIB):
                received += len(chunk)
                if received > pieces * MIB and chunk.endswith(b"0\r\n\r\n"):
                    break
        finally:
            sock.close()
        assert received > pieces * MIB
        assert _get_json(server, "/state")["produced"] == pieces
        grew_mib = (_vm_hwm_kib(worker) - before) / 1024
        assert grew_mib < 64, f"the worker's peak memory grew by {grew_mib:.0f} MiB"
        assert server.stop() == 0


def test_close_is_called_when_the_client_disconnects() -> None:
    with _serve("raw_app") as server:
        server.wait_ready()
        host, port = server.address
        with socket.create_connection((host, port), timeout=10.0) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
            got = b""
            while len(got) < 200_000:
                got += sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 200 OK")
        wait_until(lambda: _get_json(server, "/state")["closed"] == 1)
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_a_large_upload_is_streamed_not_buffered() -> None:
    block = os.urandom(MIB)
    total = 128 * MIB
    bound = _kernel_buffers() + 8 * MIB  # the kernel's buffers, and a little for the worker
    assert total > 2 * bound, "the kernel buffers too much here for this test to tell"
    with _serve("raw_app") as server:
        server.wait_ready()
        host, port = server.address
        with socket.create_connection((host, port), timeout=10.0) as sock:
            sock.sendall(
                f"POST /gate HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n".encode()
            )
            sock.setblocking(False)
            view = memoryview(block)
            sent = 0

            def push(window: float) -> None:
                """Send until the socket takes nothing for ``window`` seconds (or all is sent)."""
                nonlocal sent
                while sent < total:
                    _, writable, _ = select.select([], [sock], [], window)
                    if not writable:
                        return
                    offset = sent % MIB
                    try:
                        sent += sock.send(view[offset:])
                    except BlockingIOError:
                        continue

            push(1.0)  # the app has not read a byte: only buffers fill
            assert sent < bound, f"{sent / MIB:.0f} MiB went in while the app read nothing"
            assert _get_json(server, "/open-gate") == {"open": True}
            push(10.0)
            assert sent == total
            sock.setblocking(True)
            response = b""
            while not response.endswith(b"}"):
                response += sock.recv(65536)
        digest = hashlib.sha256()
        for _ in range(total // MIB):
            digest.update(block)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(body) == {"size": total, "sha256": digest.hexdigest()}
        assert server.stop() == 0


# --- errors --------------------------------------------------------------------------


def test_app_errors_before_and_after_start_response() -> None:
    with _serve("raw_app") as server:
        server.wait_ready()
        for path in ("/before", "/between"):
            status, body = server.request(path)
            assert status == 500, body
        conn = _connection(server)
        try:
            conn.request("GET", "/after")
            response = conn.getresponse()
            assert response.status == 200  # the head went out with the first part
            with pytest.raises(http.client.IncompleteRead) as info:
                response.read()
            assert info.value.partial == b"first part\n"
        finally:
            conn.close()
        assert _get_json(server, "/pid")  # the worker serves on
        for number in (4711, 4712, 4713):
            server.wait_for_line(rf"app error .* \(test {number}\)")
        assert server.count_lines("Exception in WSGI application") == 3
        assert server.stop() == 0


# --- the process manager --------------------------------------------------------------


def test_max_requests_recycles_a_wsgi_worker() -> None:
    with _serve("raw_app", "--max-requests", "5") as server:
        server.wait_ready()
        (first,) = server.wait_workers(1)
        pids: set[int] = set()

        def successor_answers() -> bool:
            pids.add(_get_json(server, "/pid")["pid"])
            return len(pids) >= 2

        wait_until(successor_answers, timeout=15)
        assert first in pids
        server.wait_for_line(r"served \d+ requests \(--max-requests\): recycling it")
        assert server.stop() == 0


def test_blocked_app_threads_do_not_look_like_a_stuck_loop() -> None:
    # --timeout 1 aborts a worker whose loop misses its beats for a second;
    # both app threads block for 2.5 s while the loop beats on.
    with _serve("raw_app", "--threads", "2", "--timeout", "1") as server:
        server.wait_ready()
        control = server.wait_for_line(_CONTROL)[1]
        (worker,) = server.wait_workers(1)
        socks = send_requests(server.address, 2, "/block?2.5")
        try:
            wait_until(lambda: query(control)["workers"][0]["in_flight"] == 2)
            answers = read_responses(socks, timeout=15.0)
        finally:
            for sock in socks:
                sock.close()
        assert [(status, body["pid"]) for status, body in answers] == [(200, worker)] * 2
        assert server.worker_pids() == [worker]
        assert server.count_lines("is stuck") == 0
        # The scoreboard row follows with the next beat.
        wait_until(lambda: query(control)["workers"][0]["requests"] == 2)
        assert query(control)["workers"][0]["in_flight"] == 0
        assert server.stop() == 0


def test_graceful_stop_waits_for_a_running_app_thread() -> None:
    with _serve("raw_app") as server:
        server.wait_ready()
        control = server.wait_for_line(_CONTROL)[1]
        socks = send_requests(server.address, 1, "/block?1.0")
        try:
            wait_until(lambda: query(control)["workers"][0]["in_flight"] == 1)
            server.send_signal(signal.SIGTERM)
            answers = read_responses(socks, timeout=15.0)
        finally:
            for sock in socks:
                sock.close()
        assert answers[0][0] == 200
        assert server.wait(15.0) == 0


def test_an_app_thread_that_never_returns_does_not_hold_the_worker() -> None:
    with _serve("raw_app", "--graceful-timeout", "1") as server:
        server.wait_ready()
        control = server.wait_for_line(_CONTROL)[1]
        socks = send_requests(server.address, 1, "/forever")
        try:
            wait_until(lambda: query(control)["workers"][0]["in_flight"] == 1)
            server.send_signal(signal.SIGTERM)
            assert server.wait(15.0) == 0
            # The connection was closed at the graceful deadline, unanswered.
            readable, _, _ = select.select(socks, [], [], 5.0)
            assert readable
            assert socks[0].recv(100) == b""
        finally:
            for sock in socks:
                sock.close()
    assert "a WSGI app thread still runs GET /forever after the graceful timeout" in (server.stderr)
