"""The control socket and `reuseport status`, against real Unix and TCP sockets.

The server side is driven the way the master drives it: the test calls
``handle()`` when the socket is readable, either inline (connect, send, then
``handle()``, then read the reply from the client's buffer) or from a small
poll loop in a thread while the code under test plays the client.  Unix
socket paths are limited to ~107 bytes, so every path lives in a short
directory under /tmp rather than pytest's deep tmp_path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from features import requires_linux
from hypothesis import given, settings
from hypothesis import strategies as st

from reuseport import cli
from reuseport.control import (
    HANDLE_BUDGET,
    MAX_CLIENTS_PER_HANDLE,
    ControlError,
    ControlServer,
    add_status_arguments,
    default_control_dir,
    default_control_path,
    find_control_sockets,
    listen_queue_depth,
    query,
    render_status,
    run_status,
)
from reuseport.errors import BootError

SNAPSHOT: dict[str, Any] = {
    "master": {
        "pid": 123,
        "uptime": 12.5,
        "mode": "reuseport",
        "app": "demo",
        "binds": ["127.0.0.1:8000"],
        "generation": 4,
    },
    "pool": {
        "pm": "dynamic",
        "target": 3,
        "running": 3,
        "max_workers": 8,
        "min_spare": 1,
        "max_spare": 3,
        "start_workers": 2,
        "idle_timeout": 10.0,
        "max_requests": 0,
        "timeout": 30.0,
    },
    "workers": [
        {
            "slot": 0,
            "pid": 130,
            "generation": 1,
            "state": "ready",
            "uptime": 12.1,
            "requests": 5012,
            "in_flight": 1,
            "connections": 3,
            "accepted": 40,
            "rescued": 6,
            "queue": 0,
            "queue_max": 2048,
            "heartbeat_age": 0.3,
        },
        {
            "slot": 1,
            "pid": 131,
            "generation": 4,
            "state": "busy",
            "uptime": 3725.0,
            "requests": 4988,
            "in_flight": 0,
            "connections": 2,
            "accepted": 40,
            "queue": None,
            "queue_max": 2048,
            "heartbeat_age": 0.05,
        },
        {
            "slot": 2,
            "pid": 132,
            "generation": 4,
            "state": "starting",
            "uptime": 0.4,
            "requests": 0,
            "in_flight": 0,
            "connections": 0,
            "accepted": 0,
            "queue": 0,
            "queue_max": 2048,
            "heartbeat_age": 0.1,
            "some_future_key": {"nested": True},
        },
    ],
    "totals": {
        "requests": 10000,
        "in_flight": 1,
        "connections": 5,
        "accepted": 80,
        "rescued": 6,
        "queue": 0,
    },
    "steering": {
        "kind": "auto",
        "steered_away": [2],
        "stalled": [],
        "active": "p2c",
        "rescue": True,
        "loads": [],
    },
    "another_future_section": [1, 2, 3],
}

WAIT = 5.0  # upper bound of any wait in these tests


def fake_snapshot() -> dict[str, Any]:
    return SNAPSHOT


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="rpc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def xdg(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private XDG_RUNTIME_DIR; returns the control directory inside it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    return os.path.join(short_dir, "reuseport")


@pytest.fixture
def server(short_dir: str) -> Iterator[ControlServer]:
    srv = ControlServer(os.path.join(short_dir, "c.sock"), fake_snapshot)
    try:
        yield srv
    finally:
        srv.close()


@contextlib.contextmanager
def serving(*servers: ControlServer) -> Iterator[None]:
    """Play the master: poll the servers and call handle() until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        poller = select.poll()
        by_fd = {srv.fileno(): srv for srv in servers}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not stop.is_set():
            for fd, _mask in poller.poll(20):
                by_fd[fd].handle()

    thread = threading.Thread(target=loop, name="fake-master", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT)
        assert not thread.is_alive()


def connect(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(WAIT)
    try:
        client.connect(path)
    except BaseException:
        client.close()
        raise
    return client


def read_all(client: socket.socket) -> bytes:
    """Everything until the server closes.  A Unix socket closed with our
    bytes still unread in it ends with ECONNRESET instead of EOF."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def ask(srv: ControlServer, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request``, let the server handle it inline, return the whole reply."""
    with connect(srv.path) as client:
        client.sendall(request)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        srv.handle()
        return read_all(client)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        select.select([], [], [], 0.01)


def status_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_status_arguments(parser)
    return parser.parse_args(list(argv))


def leave_stale_socket(path: str) -> None:
    """What a killed master leaves behind: a socket file nobody listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)
        dead.listen(1)


# ---------------------------------------------------------------- directories
def test_default_dir_is_under_xdg_runtime_dir(xdg: str) -> None:
    assert default_control_dir() == xdg
    assert default_control_path(4242) == os.path.join(xdg, "4242.sock")
    assert not os.path.exists(xdg), "looking the directory up must not create it"


@pytest.mark.parametrize("runtime", [None, "/nonexistent/xdg-runtime"])
def test_default_dir_falls_back_to_tmp(
    runtime: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if runtime is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    expected = f"/tmp/reuseport-{os.getuid()}"
    try:
        answer = default_control_dir()
    except BootError as exc:  # this machine's real directory may be unsafe: then it says so
        answer = str(exc)
    assert answer.startswith(expected) or f"directory {expected} " in answer


def test_server_creates_private_dir_and_0600_socket(xdg: str) -> None:
    path = default_control_path(os.getpid())
    with ControlServer(path, fake_snapshot) as srv:
        assert stat.S_IMODE(os.lstat(xdg).st_mode) == 0o700
        st_ = os.lstat(path)
        assert stat.S_ISSOCK(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o600
        # Workers must not inherit the control socket across exec.
        assert not os.get_inheritable(srv.fileno())
        assert find_control_sockets() == [path]
    assert not os.path.exists(path)
    assert find_control_sockets() == []


def test_group_writable_dir_is_refused(xdg: str) -> None:
    os.mkdir(xdg)
    os.chmod(xdg, 0o777)
    with pytest.raises(BootError, match=r"group- or world-writable .*chmod 700"):
        default_control_dir()
    with pytest.raises(BootError, match="chmod 700"):
        ControlServer(os.path.join(xdg, "1.sock"), fake_snapshot)


def test_dir_of_another_user_is_refused(xdg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkdir(xdg, 0o700)
    if os.getuid() == 0:
        os.chown(xdg, 65534, 65534)  # nobody
    else:
        me = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(BootError, match=r"owned by uid \d+, not by you.*--control PATH"):
        default_control_dir()


def test_unsafe_default_dir_does_not_block_explicit_path(xdg: str, short_dir: str) -> None:
    os.mkdir(xdg)
    os.chmod(xdg, 0o777)
    with ControlServer(os.path.join(short_dir, "c.sock"), fake_snapshot) as srv:
        assert json.loads(ask(srv, b"status\n")) == SNAPSHOT


def test_status_with_unsafe_default_dir(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkdir(xdg)
    os.chmod(xdg, 0o777)
    assert run_status(status_args()) == 1
    assert f"chmod 700 {xdg}" in capsys.readouterr().err


def test_symlinked_dir_is_refused(xdg: str, short_dir: str) -> None:
    target = os.path.join(short_dir, "elsewhere")
    os.mkdir(target, 0o700)
    os.symlink(target, xdg)
    with pytest.raises(BootError, match="not a directory"):
        default_control_dir()


# ---------------------------------------------------------------- server setup
def test_stale_socket_is_replaced(short_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(short_dir, "c.sock")
    leave_stale_socket(path)
    with (
        caplog.at_level(logging.INFO, "reuseport.control"),
        ControlServer(path, fake_snapshot) as srv,
    ):
        assert json.loads(ask(srv, b"status\n")) == SNAPSHOT
    assert "removed stale control socket" in caplog.text


def test_live_socket_is_refused(server: ControlServer) -> None:
    with pytest.raises(BootError, match="another server already uses the control socket") as info:
        ControlServer(server.path, fake_snapshot)
    assert server.path in str(info.value)
    assert "--control" in str(info.value)
    # The refused attempt must leave the live server's file alone.
    assert json.loads(ask(server, b"status\n")) == SNAPSHOT


def test_regular_file_is_refused(short_dir: str) -> None:
    path = os.path.join(short_dir, "c.sock")
    with open(path, "w") as fh:
        fh.write("not a socket")
    with pytest.raises(BootError, match="is not a socket"):
        ControlServer(path, fake_snapshot)
    assert os.path.isfile(path)


def test_missing_directory_names_errno_and_fix(short_dir: str) -> None:
    path = os.path.join(short_dir, "no", "such", "c.sock")
    with pytest.raises(BootError, match=r"ENOENT.*--control") as info:
        ControlServer(path, fake_snapshot)
    assert path in str(info.value)


def test_too_long_path_is_refused(short_dir: str) -> None:
    path = os.path.join(short_dir, "x" * 120 + ".sock")
    with pytest.raises(BootError, match=r"at most 107.*shorter path"):
        ControlServer(path, fake_snapshot)


def test_close_leaves_a_replaced_file_alone(short_dir: str) -> None:
    path = os.path.join(short_dir, "c.sock")
    srv = ControlServer(path, fake_snapshot)
    os.unlink(path)  # e.g. a new master judged it stale and took the path
    with ControlServer(path, fake_snapshot) as newer:
        srv.close()
        assert os.path.exists(path)
        assert json.loads(ask(newer, b"status\n")) == SNAPSHOT
    srv.close()  # idempotent
    assert srv.fileno() == -1


@pytest.mark.e2e
def test_forked_child_closes_fd_and_keeps_file(server: ControlServer) -> None:
    pid = os.fork()
    if pid == 0:  # child: what a worker does right after fork
        code = 1
        try:
            server.close_in_child()
            server.close()  # even a careless close() in a child must not unlink
            code = 0 if os.path.exists(server.path) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.exists(server.path)
    assert json.loads(ask(server, b"status\n")) == SNAPSHOT


# ---------------------------------------------------------------- handle()
@pytest.mark.parametrize(
    ("request_line", "half_close"),
    [(b"status\n", False), (b"status json\n", False), (b"status", True)],
)
def test_status_request_gets_snapshot(
    server: ControlServer, request_line: bytes, half_close: bool
) -> None:
    reply = ask(server, request_line, half_close=half_close)
    assert reply.endswith(b"\n")
    assert json.loads(reply) == SNAPSHOT


def test_handle_with_nothing_pending_returns(server: ControlServer) -> None:
    server.handle()


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe\x00garbage\n", b"GET / HTTP/1.1\r\n\r\n", b"x" * 5000]
)
def test_garbage_request_does_not_raise(server: ControlServer, garbage: bytes) -> None:
    assert "unknown request" in json.loads(ask(server, garbage))["error"]
    # The server still answers the next client.
    assert json.loads(ask(server, b"status\n")) == SNAPSHOT


def test_silent_client_is_dropped_in_bounded_time(server: ControlServer) -> None:
    with connect(server.path) as silent, connect(server.path) as good:
        good.sendall(b"status\n")
        started = time.monotonic()
        server.handle()  # the silent client first, then the good one
        elapsed = time.monotonic() - started
        assert elapsed < HANDLE_BUDGET + 0.5
        assert read_all(silent) == b""
        server.handle()  # in case the budget ran out before the good client
        assert json.loads(read_all(good)) == SNAPSHOT


def test_client_that_hangs_up_does_not_raise(server: ControlServer) -> None:
    for _ in range(3):
        client = connect(server.path)
        client.sendall(b"status\n")
        client.close()
    server.handle()
    assert json.loads(ask(server, b"status\n")) == SNAPSHOT


def test_liveness_probe_connect_and_close(server: ControlServer) -> None:
    connect(server.path).close()
    server.handle()


def test_handle_serves_a_bounded_number_of_clients(server: ControlServer) -> None:
    clients = [connect(server.path) for _ in range(MAX_CLIENTS_PER_HANDLE + 8)]
    try:
        for client in clients:
            client.sendall(b"status\n")
        server.handle()
        answered = [c for c in clients if select.select([c], [], [], 0)[0]]
        assert len(answered) == MAX_CLIENTS_PER_HANDLE
        server.handle()
        for client in clients:
            assert json.loads(read_all(client)) == SNAPSHOT
    finally:
        for client in clients:
            client.close()


def test_snapshot_failure_is_reported_not_raised(
    short_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("scoreboard gone")

    with ControlServer(os.path.join(short_dir, "c.sock"), broken) as srv:
        reply = json.loads(ask(srv, b"status\n"))
        assert "scoreboard gone" in reply["error"]
        with serving(srv), pytest.raises(ControlError, match="scoreboard gone"):
            query(srv.path)
    assert "cannot build the status snapshot" in caplog.text


# ---------------------------------------------------------------- query()
def test_query_round_trip(server: ControlServer) -> None:
    with serving(server):
        assert query(server.path) == SNAPSHOT
        assert query(server.path, timeout=1.0) == SNAPSHOT


def test_query_missing_file(short_dir: str) -> None:
    with pytest.raises(ControlError, match="no control socket at"):
        query(os.path.join(short_dir, "none.sock"))


def test_query_stale_file(short_dir: str) -> None:
    path = os.path.join(short_dir, "dead.sock")
    leave_stale_socket(path)
    with pytest.raises(ControlError, match="nothing listens on"):
        query(path)


def test_query_times_out_when_nobody_handles(server: ControlServer) -> None:
    started = time.monotonic()
    with pytest.raises(ControlError, match=r"did not answer within 0.3s"):
        query(server.path, timeout=0.3)
    assert time.monotonic() - started < 2.0


def test_query_rejects_a_foreign_reply(short_dir: str) -> None:
    path = os.path.join(short_dir, "other.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)

        def answer() -> None:
            conn, _ = other.accept()
            with conn:
                conn.sendall(b"220 hello\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(ControlError, match="did not answer with a reuseport status"):
            query(path)
        thread.join(WAIT)


# ---------------------------------------------------------------- run_status
def test_status_human_output(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with ControlServer(default_control_path(123), fake_snapshot) as srv, serving(srv):
        assert run_status(status_args()) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "reuseport master 123 — demo — reuseport mode — 127.0.0.1:8000 — up 12.5s"
    assert lines[1].startswith(
        "pool: dynamic, 3 running (target 3, max 8, spare 1..3), max-requests off, "
        "heartbeat timeout 30s"
    )
    assert lines[2] == (
        "steering: p2c (eBPF, per connection), sibling rescue on, kept from new connections: slot 2"
    )
    header = lines[3].split()
    assert header == [
        "SLOT", "PID", "GEN", "STATE", "UPTIME", "REQUESTS", "IN-FLIGHT", "CONNS", "RESCUED",
        "QUEUE", "BEAT",
    ]  # fmt: skip
    rows = [line.split() for line in lines[4:7]]
    assert rows[0] == ["0", "130", "1", "ready", "12.1s", "5012", "1", "3", "6", "0", "0.3s"]
    assert rows[1] == ["1", "131", "4", "busy", "1h02m", "4988", "0", "2", "-", "-", "0.1s"]
    assert rows[2][:4] == ["2", "132", "4", "starting"]
    assert lines[7].split() == ["total", "10000", "1", "5", "6", "0"]
    # Aligned: every row's REQUESTS value ends where the header's REQUESTS does.
    end = lines[3].index("REQUESTS") + len("REQUESTS")
    for line in lines[4:8]:
        assert line[end - 1].isdigit()
        assert line[end] == " "


def test_status_json_output(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with ControlServer(default_control_path(123), fake_snapshot) as srv, serving(srv):
        assert run_status(status_args("--json")) == 0
    assert json.loads(capsys.readouterr().out) == SNAPSHOT


def test_status_through_the_cli(short_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(short_dir, "c.sock")
    with ControlServer(path, fake_snapshot) as srv, serving(srv):
        assert cli.main(["status", "--json", "--control", path]) == 0
    assert json.loads(capsys.readouterr().out) == SNAPSHOT


def test_status_without_server(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_status(status_args()) == 1
    err = capsys.readouterr().err
    assert f"no running reuseport server found in {xdg}" in err
    assert "`reuseport serve`" in err
    assert "--control PATH" in err


def test_status_ignores_stale_sockets(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkdir(xdg, 0o700)
    leave_stale_socket(os.path.join(xdg, "77.sock"))
    assert run_status(status_args()) == 1
    assert "no running reuseport server" in capsys.readouterr().err


def test_status_with_several_servers(xdg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with (
        ControlServer(default_control_path(1001), fake_snapshot) as a,
        ControlServer(default_control_path(202), fake_snapshot) as b,
        serving(a, b),
    ):
        assert find_control_sockets() == [b.path, a.path]  # by master pid
        assert run_status(status_args()) == 2
    err = capsys.readouterr().err
    assert "2 reuseport servers are running" in err
    assert f"master 202: --control {b.path}" in err
    assert f"master 1001: --control {a.path}" in err


def test_status_with_missing_control_path(
    short_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(short_dir, "gone.sock")
    assert run_status(status_args("--control", path)) == 1
    assert f"no control socket at {path}" in capsys.readouterr().err


def test_status_with_refused_control_path(
    short_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(short_dir, "dead.sock")
    leave_stale_socket(path)
    assert run_status(status_args("--control", path)) == 1
    assert "nothing listens on" in capsys.readouterr().err


# ---------------------------------------------------------------- render_status
@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (
            {"pm": "static", "target": 4, "running": 4, "max_requests": 1000, "timeout": 0},
            "pool: static, 4 running (target 4), max-requests 1000, heartbeat off",
        ),
        (
            {"pm": "ondemand", "target": 0, "running": 0, "max_workers": 8, "idle_timeout": 10.0,
             "max_requests": 0, "timeout": 2.5},
            "pool: ondemand, 0 running (target 0, max 8, idle-timeout 10s), max-requests off, "
            "heartbeat timeout 2.5s",
        ),
    ],
)  # fmt: skip
def test_render_pool_line(pool: dict[str, Any], expected: str) -> None:
    assert render_status({"pool": pool}).splitlines()[1] == expected


def test_render_durations() -> None:
    workers = [
        {"slot": i, "uptime": uptime, "heartbeat_age": 0.04}
        for i, uptime in enumerate([0.04, 59.9, 61, 3599, 3725, 90000])
    ]
    lines = render_status({"workers": workers}).splitlines()[3:9]
    uptimes = [line.split()[4] for line in lines]
    assert uptimes == ["0.0s", "59.9s", "1m01s", "59m59s", "1h02m", "1d01h"]


EVENTS: dict[str, Any] = {
    "spawns": {"start": 2, "respawn": 1, "reload": 6, "recycle": 24, "scale": 0},
    "exits": {"crash": 1, "heartbeat": 0, "recycle": 24, "reload": 6, "scale": 0, "stop": 0,
              "boot": 0},
    "reloads": 3,
    "reloads_failed": 0,
    "recycles": 24,
    "drains": 0,
}  # fmt: skip


def test_render_events_line() -> None:
    lines = render_status({**SNAPSHOT, "events": EVENTS}).splitlines()
    assert lines[2] == (
        "events: 3 reloads, 24 recycles, 0 drains, "
        "spawns 33 (start 2, respawn 1, reload 6, recycle 24), "
        "exits 31 (crash 1, recycle 24, reload 6)"
    )
    assert lines[3].startswith("steering: ")  # then the steering line, then the table
    assert lines[4].split()[0] == "SLOT"


def test_render_events_line_counts_one_in_the_singular() -> None:
    events = {**EVENTS, "reloads": 1, "recycles": 1, "drains": True}
    line = render_status({"events": events}).splitlines()[2]
    assert line.startswith("events: 1 reload, 1 recycle, ? drains, ")


def test_render_events_line_shows_failed_reloads_and_unknown_causes() -> None:
    events = {
        **EVENTS,
        "reloads_failed": 1,
        "spawns": {"start": 0, "sibling": 2},  # a cause from a newer master
        "exits": "garbage",
    }
    line = render_status({"events": events}).splitlines()[2]
    assert line.startswith("events: 3 reloads (1 failed), 24 recycles, 0 drains, ")
    assert line.endswith("spawns 2 (sibling 2), exits -")


def test_render_without_events_has_no_events_line() -> None:
    text = render_status(SNAPSHOT)
    assert "events:" not in text
    assert text.splitlines()[3].split()[0] == "SLOT"


def test_render_has_no_steering_line_in_shared_mode_or_from_an_older_master() -> None:
    shared = {**SNAPSHOT, "master": {**SNAPSHOT["master"], "mode": "shared"}}
    assert "steering:" not in render_status(shared)
    older = {**SNAPSHOT, "steering": {"kind": "hash", "steered_away": [], "stalled": []}}
    assert "steering:" not in render_status(older)


def test_render_empty_snapshot() -> None:
    text = render_status({})
    assert "(no workers)" in text
    assert text.splitlines()[-1].split()[0] == "total"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_worker = st.dictionaries(
    st.sampled_from(["slot", "pid", "state", "uptime", "queue", "heartbeat_age", "x"]), _json
)


@settings(max_examples=200, deadline=None)
@given(
    master=st.dictionaries(st.sampled_from(["pid", "app", "mode", "binds", "uptime"]), _json)
    | _json,
    pool=st.dictionaries(st.sampled_from(["pm", "target", "max_requests", "timeout"]), _json)
    | _json,
    workers=st.lists(_worker, max_size=4) | _json,
    totals=st.dictionaries(st.sampled_from(["requests", "queue"]), _json) | _json,
    events=st.dictionaries(
        st.sampled_from(["spawns", "exits", "reloads", "reloads_failed", "drains"]), _json
    )
    | _json,
)
def test_render_never_raises_on_odd_snapshots(
    master: object, pool: object, workers: object, totals: object, events: object
) -> None:
    snapshot = {
        "master": master,
        "pool": pool,
        "workers": workers,
        "totals": totals,
        "events": events,
    }
    assert render_status(snapshot).startswith("reuseport master ")


# ---------------------------------------------------------------- listen queues
@requires_linux
def test_listen_queue_depth_counts_unaccepted_connections() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert listen_queue_depth(listener) == (0, 16)
        clients = []
        try:
            for _ in range(5):
                client = socket.create_connection(listener.getsockname(), timeout=WAIT)
                clients.append(client)
            wait_until(lambda: listen_queue_depth(listener) == (5, 16))
            listener.settimeout(WAIT)
            for _ in range(2):
                listener.accept()[0].close()
            assert listen_queue_depth(listener) == (3, 16)
        finally:
            for client in clients:
                client.close()


@requires_linux
def test_listen_queue_depth_of_other_sockets_is_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unbound:
        assert listen_queue_depth(unbound) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert listen_queue_depth(unix) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert listen_queue_depth(udp) is None
