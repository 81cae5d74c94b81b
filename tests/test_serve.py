"""``reuseport serve`` end to end: real masters, real workers, real sockets.

Every server binds port 0 and the test reads the real port from the
``Listening at`` line.  ``support.Server`` bounds every wait and fails a test
that leaves a process behind; the conftest fixture checks the same for the
test process's own children.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from features import requires_ipv6, requires_reuseport, requires_reuseport_ipv6
from support import (
    Server,
    alive,
    assert_closed_by_peer,
    listening_inodes,
    read_responses,
    send_requests,
    socket_inodes_of,
    wait_until,
)

pytestmark = pytest.mark.e2e  # every test runs a real server

TESTS_DIR = str(Path(__file__).resolve().parent)

# Shared mode runs anywhere; reuseport mode only where the probe found SO_REUSEPORT.
REUSEPORT = pytest.param("reuseport", marks=requires_reuseport)
MODES = [REUSEPORT, "shared"]


def _serves_demo(server: Server, mode: str) -> None:
    workers = set(server.worker_pids())
    status, body = server.request("/")
    assert status == 200
    assert body["mode"] == mode
    assert body["pid"] in workers
    assert body["slot"] in range(len(workers))


def _title(pid: int) -> str:
    """The process title (setproctitle rewrites /proc/<pid>/cmdline)."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().split(b"\0")[0].decode().strip()


# ------------------------------------------------------------------ modes
@pytest.mark.parametrize("mode", [*MODES, "auto"])
def test_each_mode_serves_requests(mode: str) -> None:
    with Server("-w", "2", "--mode", mode) as server:
        ready = server.wait_ready()
        effective = ready["mode"]
        assert effective == mode if mode != "auto" else effective in {"reuseport", "shared"}
        assert ready["workers"] == "2"
        assert ready["app"] == "demo"
        assert server.count_lines(r"Listening at http://127\.0\.0\.1:\d+ ") == 1
        workers = server.wait_workers(2)
        assert _title(server.pid) == "reuseport: master [demo]"
        assert {_title(pid) for pid in workers} == {
            "reuseport: worker 0 [demo]",
            "reuseport: worker 1 [demo]",
        }
        for _ in range(5):
            _serves_demo(server, effective)
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@requires_ipv6
@pytest.mark.parametrize(
    "mode", [pytest.param("reuseport", marks=requires_reuseport_ipv6), "shared"]
)
def test_ipv6_bind(mode: str) -> None:
    with Server("-b", "[::1]:0", "-w", "2", "--mode", mode) as server:
        server.wait_ready()
        assert server.count_lines(r"Listening at http://\[::1\]:\d+ ") == 1
        host, port = server.address
        assert host == "::1"
        assert port > 0
        server.wait_workers(2)
        _serves_demo(server, mode)
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("mode", MODES)
def test_two_binds_at_once(mode: str) -> None:
    args = ("-b", "127.0.0.1:0", "-b", "127.0.0.1:0", "-w", "2", "--mode", mode)
    with Server(*args) as server:
        server.wait_ready()
        addresses = server.addresses
        assert len(addresses) == 2
        assert addresses[0][1] != addresses[1][1]
        workers = set(server.wait_workers(2))
        for address in addresses:
            for _ in range(3):
                status, body = server.request("/", address=address)
                assert status == 200
                assert body["pid"] in workers
            if mode == "reuseport":  # one listener per worker per address
                assert len(listening_inodes(address[1])) == 2
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


# ------------------------------------------------------------------ sockets
@requires_reuseport
def test_reuseport_mode_gives_each_worker_its_own_listener() -> None:
    with Server("-w", "3", "--mode", "reuseport", "--no-rescue") as server:
        server.wait_ready()
        workers = server.wait_workers(3)
        listeners = listening_inodes(server.port)
        assert len(listeners) == 3, listeners
        held = {pid: socket_inodes_of(pid) & listeners for pid in workers}
        for pid, inodes in held.items():
            assert len(inodes) == 1, f"worker {pid} holds listeners {inodes} of {listeners}"
        assert set().union(*held.values()) == listeners  # no two workers share one
        # The master keeps a duplicate of every worker's socket (for respawns).
        assert listeners <= socket_inodes_of(server.pid)
        assert server.stop() == 0


@requires_reuseport
def test_with_sibling_rescue_every_worker_also_holds_its_siblings_listeners() -> None:
    """Still one listener per worker, but each worker holds a copy of every other."""
    with Server("-w", "3", "--mode", "reuseport") as server:
        server.wait_ready()
        workers = server.wait_workers(3)
        listeners = listening_inodes(server.port)
        assert len(listeners) == 3, listeners
        for pid in workers:
            assert socket_inodes_of(pid) & listeners == listeners
        assert server.stop() == 0


def test_shared_mode_has_one_listener_held_by_everyone() -> None:
    with Server("-w", "3", "--mode", "shared") as server:
        server.wait_ready()
        workers = server.wait_workers(3)
        listeners = listening_inodes(server.port)
        assert len(listeners) == 1, listeners
        for pid in [server.pid, *workers]:
            assert listeners <= socket_inodes_of(pid), f"pid {pid} lacks the shared listener"
        assert server.stop() == 0


@requires_reuseport
def test_reuseport_spreads_connections_over_workers() -> None:
    with Server("-w", "2", "--mode", "reuseport") as server:
        server.wait_ready()
        workers = set(server.wait_workers(2))
        pids: collections.Counter[int] = collections.Counter()
        for _ in range(4):  # 4 x 50 fresh connections
            socks = send_requests(server.address, 50)
            try:
                for status, body in read_responses(socks, timeout=10):
                    assert status == 200
                    pids[body["pid"]] += 1
            finally:
                for sock in socks:
                    sock.close()
        print(f"200 connections per worker pid: {dict(pids)}")
        assert set(pids) <= workers
        assert len(pids) >= 2, f"the kernel sent every connection to one worker: {dict(pids)}"
        assert server.stop() == 0


# ------------------------------------------------------------------ crashes
@requires_reuseport
def test_killed_worker_is_replaced() -> None:
    with Server("-w", "2", "--mode", "reuseport") as server:
        server.wait_ready()
        old = server.wait_workers(2)
        victim = old[0]
        os.kill(victim, signal.SIGKILL)
        server.wait_for_line(
            rf"Worker \d+ \(pid {victim}\) was killed by SIGKILL.*starting a replacement"
        )
        wait_until(lambda: not alive(victim), message=f"pid {victim} still alive")
        new = wait_until(
            lambda: (p := server.worker_pids()) and len(p) == 2 and victim not in p and p
        )
        (replacement,) = set(new) - set(old)
        answered = set()
        for _ in range(20):
            status, body = server.request("/")
            assert status == 200
            answered.add(body["pid"])
        assert victim not in answered
        assert answered <= set(new)
        assert server.stop() == 0
    assert replacement not in server.leftovers()


@requires_reuseport
@pytest.mark.parametrize("count", [60])
def test_queued_connections_of_a_killed_worker_are_served_by_its_replacement(count: int) -> None:
    """The master's duplicate keeps a dead worker's accept queue for its successor."""
    # Hash steering and no rescue: the queue behind the stopped worker must fill.
    with Server("-w", "2", "--mode", "reuseport", "--steering", "hash", "--no-rescue") as server:
        server.wait_ready()
        stopped, other = server.wait_workers(2)
        os.kill(stopped, signal.SIGSTOP)
        try:
            socks = send_requests(server.address, count)
        except BaseException:
            os.kill(stopped, signal.SIGKILL)
            raise
        try:
            os.kill(stopped, signal.SIGKILL)
            responses = read_responses(socks, timeout=20)
        finally:
            for sock in socks:
                sock.close()
        statuses = collections.Counter(status for status, _ in responses)
        by_pid = collections.Counter(body["pid"] for _, body in responses)
        print(f"statuses {dict(statuses)}, answered by {dict(by_pid)}")
        assert statuses == {200: count}
        assert stopped not in by_pid
        replacements = set(by_pid) - {other}
        # Connections queued for the stopped worker were answered by its successor.
        assert len(replacements) == 1, by_pid
        assert replacements <= set(server.worker_pids())
        assert server.stop() == 0


@requires_reuseport
def test_master_sigkill_leaves_no_worker_behind(tmp_path: Path) -> None:
    # A SIGKILLed master cannot remove its control socket: keep it out of /tmp.
    control = str(tmp_path / "control.sock")
    with Server("-w", "2", "--mode", "reuseport", "--control", control) as server:
        server.wait_ready()
        workers = server.wait_workers(2)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        wait_until(
            lambda: not any(alive(pid) for pid in workers),
            timeout=10,
            message=lambda: f"orphaned workers still alive: {[p for p in workers if alive(p)]}",
        )


# ------------------------------------------------------------------ graceful stop
def _hold_request(server: Server) -> socket.socket:
    """Open a connection to the ``hold``/``stubborn`` app and wait until it is in flight."""
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(b"first\n")
    assert sock.makefile("rb").readline() == b"WAITING\n"
    return sock


@pytest.mark.parametrize("mode", MODES)
def test_graceful_stop_finishes_an_in_flight_request(mode: str) -> None:
    args = ("apps_plain:hold", "--app-dir", TESTS_DIR, "-w", "1", "--mode", mode)
    with Server(*args, "--graceful-timeout", "20") as server:
        server.wait_ready()
        (worker,) = server.wait_workers(1)
        listener = socket_inodes_of(worker) & listening_inodes(server.port)
        assert len(listener) == 1
        with _hold_request(server) as sock:
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait_for_line(r"SIGTERM: graceful stop")
            # The worker closes its listener once it starts draining ...
            wait_until(lambda: not socket_inodes_of(worker) & listener)
            # ... yet stays alive for the request still in flight.
            assert alive(worker)
            assert server.returncode is None
            sock.sendall(b"second\n")
            reader = sock.makefile("rb")
            assert reader.readline() == b"DONE second\n"
            assert reader.read() == b""  # then the worker closes the connection
        assert server.wait(10) == 0
        assert time.monotonic() - started < 10  # did not wait out the graceful timeout
    assert "Traceback" not in server.stderr


def test_second_stop_signal_kills_at_once() -> None:
    args = ("apps_plain:hold", "--app-dir", TESTS_DIR, "-w", "1", "--mode", "shared")
    with Server(*args, "--graceful-timeout", "30") as server:
        server.wait_ready()
        (worker,) = server.wait_workers(1)
        with _hold_request(server) as sock:
            server.send_signal(signal.SIGTERM)
            server.wait_for_line(r"SIGTERM: graceful stop")
            started = time.monotonic()
            code = server.stop(signal.SIGTERM, timeout=10)
            assert time.monotonic() - started < 5  # did not wait out the graceful timeout
            assert_closed_by_peer(sock)
        assert code == 0
        server.wait_for_line(r"SIGTERM again: stopping now, killing the workers")
        assert not alive(worker)


@requires_reuseport
def test_graceful_timeout_kills_a_worker_that_does_not_finish() -> None:
    args = ("apps_plain:stubborn", "--app-dir", TESTS_DIR, "-w", "1", "--mode", "reuseport")
    with Server(*args, "--graceful-timeout", "1") as server:
        server.wait_ready()
        (worker,) = server.wait_workers(1)
        with _hold_request(server) as sock:
            started = time.monotonic()
            code = server.stop(signal.SIGTERM, timeout=10)
            elapsed = time.monotonic() - started
            assert_closed_by_peer(sock)  # the killed worker's connection is not left hanging
        assert code == 0
        assert 1.0 <= elapsed < 8, elapsed
        server.wait_for_line(rf"graceful timeout expired; killing worker\(s\) {worker}")
        server.wait_for_line(rf"Worker 0 \(pid {worker}\) was killed by SIGKILL")
        assert not alive(worker)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name)
def test_other_stop_signals_stop_gracefully(sig: signal.Signals) -> None:
    with Server("-w", "2") as server:
        server.wait_ready()
        server.wait_workers(2)
        assert server.stop(sig) == 0
        server.wait_for_line(rf"{sig.name}: graceful stop")
        assert server.count_lines(r"Worker \d+ \(pid \d+\) exited with code 0") == 2
    assert "Traceback" not in server.stderr


# ------------------------------------------------------------------ boot errors
@requires_reuseport
def test_port_guard_refuses_a_foreign_reuseport_listener() -> None:
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        with Server("-b", f"127.0.0.1:{port}", "-w", "2", "--mode", "reuseport") as server:
            assert server.wait(10) == 3
        text = server.stderr
        assert f"refusing to start: something already listens on 127.0.0.1:{port}" in text
        assert f"pid {os.getpid()}" in text
        assert "Traceback" not in text
        assert not server.worker_pids()


def test_shared_mode_reports_address_in_use() -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        with Server("-b", f"127.0.0.1:{port}", "--mode", "shared") as server:
            assert server.wait(10) == 3
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in server.stderr
        assert "Traceback" not in server.stderr


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module_xyz:app", r"no module named 'no_such_module_xyz'"),
        ("apps_plain:no_such_attribute", r"has no attribute 'no_such_attribute'"),
    ],
)
def test_bad_app_exits_4_and_says_so_once(app: str, message: str) -> None:
    with Server(app, "--app-dir", TESTS_DIR, "-w", "2") as server:
        assert server.wait(15) == 4
    assert len(re.findall(message, server.stderr, re.IGNORECASE)) == 1, server.stderr
    assert "Traceback" not in server.stderr


def test_app_raising_at_import_exits_4_with_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "boom_app.py").write_text(
        "def helper():\n    raise RuntimeError('boom at import 4242')\n\nhelper()\n"
    )
    with Server("boom_app:app", "--app-dir", str(tmp_path), "-w", "2") as server:
        assert server.wait(15) == 4
    text = server.stderr
    assert "Traceback" in text
    assert "RuntimeError: boom at import 4242" in text
    assert "in helper" in text
    assert text.count("RuntimeError: boom at import 4242") == 1, text


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:99999", "[::1]8000", "example.com:80"])
def test_bad_bind_exits_2(bind: str) -> None:
    with Server("-b", bind) as server:
        assert server.wait(10) == 2
    assert "reuseport: error: cannot parse bind" in server.stderr
    assert bind in server.stderr
    assert "Traceback" not in server.stderr


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(("flag", "loop"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_loop_flag_chooses_the_event_loop(flag: str, loop: str) -> None:
    args = ("apps_plain:stream_handler", "--app-dir", TESTS_DIR, "-w", "1", "--loop", flag)
    with Server(*args) as server:
        server.wait_ready()
        status, body = server.request("/")
        assert (status, body["loop"]) == (200, loop)
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


@requires_reuseport
def test_demo_app_with_asyncio_loop() -> None:
    with Server("-w", "2", "--loop", "asyncio", "--mode", "reuseport") as server:
        server.wait_ready()
        server.wait_workers(2)
        _serves_demo(server, "reuseport")
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_broken_protocol_connection_is_closed_not_left_hanging() -> None:
    args = ("apps_plain:BrokenProtocol", "--app-dir", TESTS_DIR, "-w", "1")
    with Server(*args, "--graceful-timeout", "30") as server:
        server.wait_ready()
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert_closed_by_peer(sock)
        server.wait_for_line("BrokenProtocol refuses the connection")
        started = time.monotonic()
        assert server.stop(timeout=10) == 0
        assert time.monotonic() - started < 5  # nothing held the graceful stop
