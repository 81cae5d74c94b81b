"""``--max-requests`` holds under keep-alive load, and nobody sees an error.

A worker that reaches its limit stops taking requests at once: every
connection it has closes after its current response (``Connection:
close``, so the client reconnects, to another worker), it stops accepting,
steering keeps new connections from its slot, and its replacement boots
meanwhile (several at once when several workers reach their limits).  The
load client here reuses each connection until the server says close and
never retries, so a connection closed under a request counts as an error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from features import requires_reuseport
from support import Server, load, wait_until

from reuseport.control import query

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
LOADCLIENT = os.path.join(TESTS_DIR, "loadclient.py")
MODES = [pytest.param("reuseport", marks=requires_reuseport), "shared"]
LIMIT = 50


@pytest.fixture
def control() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        yield os.path.join(directory, "c.sock")


def _settled(control: str) -> dict[str, Any] | None:
    snapshot = query(control)
    workers = snapshot["workers"]
    if len(workers) == 2 and all(w["state"] == "ready" for w in workers):
        return dict(snapshot["events"])
    return None


@pytest.mark.parametrize("app", ["demo", "asgi", "wsgi"])
@pytest.mark.parametrize("mode", MODES)
def test_max_requests_holds_under_keep_alive_load(mode: str, app: str, control: str) -> None:
    args = ["-w", "2", "--mode", mode, "--max-requests", str(LIMIT), "--control", control]
    if app in ("asgi", "wsgi"):
        name = "keepalive_app" if app == "asgi" else "keepalive_wsgi"
        args = [f"apps_lifecycle:{name}", "--app-dir", TESTS_DIR, *args]
    with Server(*args) as server:
        server.wait_ready()
        with load(server.port, duration=3.0, concurrency=4, keep_alive=True) as report:
            pass
        print(f"load {report}")
        assert report["failed"] == 0, report["outcomes"]
        served = report["pids"]
        assert max(served.values()) <= LIMIT * 3 // 2, served  # within 1.5x of the limit
        assert len(served) >= 6, served  # recycled again and again
        # Connections were reused: far fewer than one per request.
        assert report["connections"] * 4 < report["ok"], report
        events = wait_until(lambda: _settled(control), timeout=20, message=server.stderr)
        print(f"events {events}")
        assert events["recycles"] >= 4
        assert events["exits"]["recycle"] == events["recycles"]
        assert events["exits"]["crash"] == events["exits"]["boot"] == 0
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_whose_replacement_fails_accepts_again(mode: str, tmp_path: Path) -> None:
    """Paused at its limit, the worker serves on when its new worker cannot boot."""
    marker = tmp_path / "broken"
    env = {"LIFECYCLE_FAIL_MARKER": str(marker)}
    args = ("apps_fail_later:app", "--app-dir", TESTS_DIR, "-w", "1", "--mode", mode)
    with Server(*args, "--max-requests", "5", env=env) as server:
        server.wait_ready()
        marker.write_text("new workers fail from now on")
        served = {server.request("/")[1]["pid"] for _ in range(5)}
        assert len(served) == 1
        # The failure and its traceback, then the verdict (on its own line).
        server.wait_for_line(r"Recycle of worker 0 failed: cannot load app")
        server.wait_for_line(r"The running worker \(pid \d+\) keeps serving")
        server.wait_for_line(r"its replacement failed; serving on past --max-requests")
        for _ in range(5):  # accepted again, by the same worker
            status, body = server.request("/")
            assert (status, body["pid"]) == (200, *served)
        assert server.stop() == 0
