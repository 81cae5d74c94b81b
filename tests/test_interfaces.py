"""Every plain asyncio interface, end to end through ``reuseport serve``.

The apps live in ``tests/apps_plain.py`` and are loaded with ``--app-dir``.
Each answers with the interface that served it and the worker pid, so a test
can tell the adapter really hosted the app (and which worker answered).
"""

from __future__ import annotations

from pathlib import Path

import apps_plain
import pytest
from support import Server, wait_until

from reuseport import apps
from reuseport.config import Interface

TESTS_DIR = str(Path(__file__).resolve().parent)

CASES = [
    ("apps_plain:stream_handler", "stream"),
    ("apps_plain:HttpProtocol", "protocol"),
    ("apps_plain:protocol_factory", "protocol"),
    ("apps_plain:serve_socket", "socket"),
]


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
@pytest.mark.parametrize(("app", "interface"), CASES)
@pytest.mark.e2e
def test_interface_detected_and_served(app: str, interface: str, mode: str) -> None:
    with Server(app, "--app-dir", TESTS_DIR, "-w", "2", "--mode", mode) as server:
        ready = server.wait_ready()
        assert ready["app"] == app
        assert ready["interface"] == interface, ready.group(0)
        workers = set(server.wait_workers(2))
        for path in ("/", "/echo/me?x=1"):
            status, body = server.request(path)
            assert status == 200
            assert body["interface"] == interface
            assert body["path"] == path
            assert body["pid"] in workers
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.e2e
def test_interface_flag_overrides_a_wrong_guess() -> None:
    # One required positional parameter: detection takes it for `serve(sock)`.
    guess, _reason = apps.detect(apps_plain.looks_like_socket_app)
    assert guess is Interface.SOCKET
    app = "apps_plain:looks_like_socket_app"
    with Server(app, "--app-dir", TESTS_DIR, "-w", "1", "--interface", "stream") as server:
        assert server.wait_ready()["interface"] == "stream"
        status, body = server.request("/override")
        assert (status, body["interface"], body["path"]) == (200, "stream", "/override")
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (apps_plain.stream_handler, Interface.STREAM),
        (apps_plain.HttpProtocol, Interface.PROTOCOL),
        (apps_plain.protocol_factory, Interface.PROTOCOL),
        (apps_plain.serve_socket, Interface.SOCKET),
    ],
)
def test_detect_names_a_reason(obj: object, expected: Interface) -> None:
    interface, reason = apps.detect(obj)
    assert interface is expected
    assert reason


@pytest.mark.parametrize("app", ["apps_plain:stream_handler", "apps_plain:HttpProtocol"])
@pytest.mark.e2e
def test_max_requests_counts_connections_for_plain_interfaces(app: str) -> None:
    """A stream or protocol app has no visible requests: each connection counts as one."""
    with Server(app, "--app-dir", TESTS_DIR, "-w", "1", "--max-requests", "10") as server:
        server.wait_ready()
        first = server.wait_workers(1)[0]
        pids: set[int] = set()

        def successor_answers() -> bool:
            status, body = server.request("/")
            assert status == 200
            pids.add(body["pid"])
            return len(pids) >= 2

        wait_until(successor_answers, timeout=15)
        assert first in pids
        server.wait_for_line(r"served \d+ requests \(--max-requests\): recycling it")
        assert server.stop() == 0
