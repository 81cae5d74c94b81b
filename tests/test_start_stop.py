"""Start and stop, as a new user meets them: what is logged when, exit codes, boot failures.

- one report per boot failure, however many workers fail the same way;
- a stop while workers boot is prompt: nothing is in flight yet;
- a stop signal that comes early (the master before its loop, a worker
  before its event loop) is a clean, logged stop, never a silent death;
- "Listening at" only once a worker is ready ("Bound" at bind time).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from apps_lifecycle import FAILURE, IMPORT_BEGUN, STARTUP_BEGUN
from features import requires_reuseport
from support import REPO_ROOT, Server, child_env, children_of, wait_until

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
MODES = [pytest.param("reuseport", marks=requires_reuseport), "shared"]
GATED_UVLOOP = os.path.join(TESTS_DIR, "shadow_gated_uvloop")


def _serve(app: str, *extra: str, env: dict[str, str] | None = None) -> Server:
    return Server(app, "--app-dir", TESTS_DIR, *extra, env=env)


# ------------------------------------------------------------------ one report per failure
@pytest.mark.parametrize("mode", MODES)
def test_a_lifespan_failure_in_four_workers_is_reported_once(mode: str) -> None:
    with _serve("apps_lifecycle:failing_startup", "-w", "4", "--mode", mode) as server:
        assert server.wait(20) == 5  # ExitCode.BOOT_ERROR
    text = server.stderr
    assert text.count("Traceback (most recent call last)") == 1, text
    assert text.count(f"RuntimeError: {FAILURE}") == 1, text
    assert re.search(r"Worker \d failed to boot: the ASGI app.s lifespan startup failed:\n", text)
    # The others stopped while booting, or failed the same way and were counted.
    same = re.search(r"(\d+) more workers? failed the same way \(not shown again\)", text)
    counted = int(same[1]) if same else 0
    stopped = server.count_lines(r"stopped while booting, before it served")
    assert counted + stopped >= 1, text
    assert "Listening at" not in text  # no worker was ever ready


# ------------------------------------------------------------------ prompt stop while booting
@pytest.mark.parametrize("mode", MODES)
def test_sigterm_while_the_lifespan_startup_hangs_stops_at_once(mode: str) -> None:
    args = ("-w", "2", "--mode", mode, "--graceful-timeout", "30")
    with _serve("apps_lifecycle:hanging_startup", *args) as server:
        server.wait_for_line(STARTUP_BEGUN)
        assert "Listening at" not in server.stderr  # bound, but nothing serves yet
        assert server.count_lines(r"^\S+ \S+ \[\d+\] INFO Bound http://") == 1
        # Far less than --graceful-timeout: nothing was in flight.
        assert server.stop(signal.SIGTERM, timeout=10) == 0
    text = server.stderr
    assert "still booting, with nothing in flight: they stop at once" in text
    assert server.count_lines(r"stopped while booting, before it served") >= 1
    assert "Traceback" not in text
    assert "killed" not in text


def test_a_worker_stuck_in_a_blocking_import_is_killed_after_a_short_grace() -> None:
    args = ("-w", "1", "--mode", "shared", "--graceful-timeout", "30")
    with _serve("apps_blocking_import:app", *args) as server:
        server.wait_for_line(IMPORT_BEGUN)
        assert server.stop(signal.SIGTERM, timeout=12) == 0
    assert re.search(
        r"Worker 0 \(pid \d+\) was still booting and did not stop within 3\.0s; killing it",
        server.stderr,
    ), server.stderr


# ------------------------------------------------------------------ early signals
def _catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except FileNotFoundError:
        pass
    return False


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_as_soon_as_the_master_catches_it_is_a_clean_stop(mode: str) -> None:
    argv = [sys.executable, "-m", "reuseport", "serve", "-b", "127.0.0.1:0", "--mode", mode]
    proc = subprocess.Popen(
        argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _catches(proc.pid, signal.SIGTERM) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, stderr
    assert "SIGTERM while starting: stopped before binding anything or starting a worker" in (
        stderr
    )
    assert "Bound" not in stderr
    assert "Listening at" not in stderr
    assert "Traceback" not in stderr


def test_a_stop_signal_before_the_worker_loop_runs_stops_it_cleanly(tmp_path: Path) -> None:
    """The worker is held in its boot before its event loop exists (see shadow_gated_uvloop)."""
    marker = tmp_path / "worker.pid"
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = {
        "PYTHONPATH": os.pathsep.join([GATED_UVLOOP, REPO_ROOT]),
        "LIFECYCLE_GATE_MARKER": str(marker),
        "LIFECYCLE_GATE": str(gate),
    }
    with Server("-w", "1", "--mode", "shared", env=env) as server:
        wait_until(lambda: marker.exists() and marker.read_text(), message=server.stderr)
        worker = int(marker.read_text())
        assert worker in children_of(server.pid)
        # The worker's signal is pending before the gate opens, so it is seen
        # before its loop starts; the master's stop follows.
        os.kill(worker, signal.SIGTERM)
        server.send_signal(signal.SIGTERM)
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: nobody waits
        except OSError:
            pass
        else:
            os.close(fd)
        assert server.wait(10) == 0
    text = server.stderr
    assert f"Worker 0 (pid {worker}) stopped while booting, before it served" in text
    assert "killed by SIGTERM" not in text


# ------------------------------------------------------------------ "Listening at"
@pytest.mark.parametrize("mode", MODES)
def test_listening_is_logged_once_a_worker_is_ready(mode: str) -> None:
    with Server("-w", "2", "--mode", mode) as server:
        server.wait_ready()
        lines = server.lines
        bound = next(i for i, line in enumerate(lines) if " Bound http://127.0.0.1:" in line)
        listening = next(i for i, line in enumerate(lines) if " Listening at http://" in line)
        ready = next(i for i, line in enumerate(lines) if " Ready: 2 workers" in line)
        assert bound < listening <= ready
        assert server.addresses == [server.address]  # one bind, named by both lines
        assert server.count_lines("Listening at") == 1
        assert server.stop() == 0


def test_no_listening_line_when_the_app_cannot_be_imported() -> None:
    with Server("no_such_module_4242:app", "-w", "2", "--mode", "shared") as server:
        assert server.wait(15) == 4
    assert server.count_lines(r"INFO Bound http://127\.0\.0\.1:\d+ \(shared mode\)") == 1
    assert "Listening at" not in server.stderr


@pytest.mark.parametrize("mode", MODES)
def test_an_ondemand_pool_listens_from_the_start(mode: str) -> None:
    with Server("--pm", "ondemand", "--max-workers", "2", "--mode", mode) as server:
        server.wait_ready()
        assert server.count_lines("Listening at") == 1
        assert not server.worker_pids()
        status, body = server.request("/")  # waits in the queue for the worker it starts
        assert (status, body["mode"]) == (200, mode)
        assert server.stop() == 0
