"""systemd's notify protocol: the decisions, the datagrams, a real master and a fake systemd.

Rules: the fake ``NOTIFY_SOCKET`` is a datagram socket this test binds (a
path in a temporary folder, or an abstract name); what arrives is read with
a timeout, never slept for.  The decisions (``SystemdState``) are checked
with a fake clock and no socket.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest
from support import Server, wait_until

from reuseport.sdnotify import Notifier, SystemdState, View


def _view(**kw: object) -> View:
    fields: dict[str, object] = {
        "ready": False,
        "reloading": False,
        "stopping": False,
        "status": "0 of 2 workers ready (reuseport mode)",
    }
    fields.update(kw)
    return View(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ decisions
def test_ready_once_then_reloading_then_ready_again_then_stopping() -> None:
    state = SystemdState(watchdog_interval=None)
    assert state.decide(_view(), 0.0) == ["STATUS=0 of 2 workers ready (reuseport mode)"]
    assert state.decide(_view(), 0.1) == []  # nothing changed
    assert state.decide(_view(ready=True, status="2 of 2"), 0.2) == ["READY=1\nSTATUS=2 of 2"]
    assert state.decide(_view(ready=True, status="2 of 2"), 0.3) == []
    (reloading,) = state.decide(_view(ready=True, reloading=True, status="2 of 2"), 0.4)
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
    assert state.decide(_view(ready=True, reloading=True, status="2 of 2"), 0.5) == []
    assert state.decide(_view(ready=True, status="2 of 2"), 0.6) == ["READY=1"]
    assert state.decide(_view(ready=True, stopping=True, status="x"), 0.7) == [
        "STOPPING=1\nSTATUS=x"
    ]
    assert state.decide(_view(ready=True, stopping=True, status="x"), 0.8) == []


def test_a_reload_before_the_first_ready_waits_for_its_end() -> None:
    state = SystemdState(watchdog_interval=None)
    state.decide(_view(), 0.0)
    assert state.decide(_view(ready=True, reloading=True), 0.1)[0].startswith("RELOADING=1")
    assert state.decide(_view(ready=True, reloading=True), 0.2) == []
    assert state.decide(_view(ready=True), 0.3) == ["READY=1"]


def test_watchdog_every_interval_and_time_left() -> None:
    state = SystemdState(watchdog_interval=1.0)
    assert "WATCHDOG=1" in state.decide(_view(), 10.0)
    assert state.time_left(10.4) == pytest.approx(0.6)
    assert state.decide(_view(), 10.5) == []
    assert state.decide(_view(), 11.0) == ["WATCHDOG=1"]
    assert SystemdState(watchdog_interval=None).time_left(3.0) is None


def test_a_muted_master_says_nothing() -> None:
    state = SystemdState(watchdog_interval=1.0)
    assert state.decide(_view(ready=True, muted=True), 0.0) == []
    assert state.decide(_view(ready=True), 0.1)[0].startswith("READY=1")


# ------------------------------------------------------------------ the variables
class _Receiver:
    """A fake systemd: the datagram socket ``NOTIFY_SOCKET`` names."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # what goes into NOTIFY_SOCKET
        self.messages: list[str] = []

    def drain(self, timeout: float = 0.0) -> list[str]:
        """Read what arrived (waiting up to ``timeout`` for the first datagram)."""
        self.sock.settimeout(timeout if timeout > 0 else None)
        self.sock.setblocking(timeout > 0)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
                self.sock.setblocking(False)
        except (BlockingIOError, TimeoutError):
            pass
        return self.messages

    def fields(self) -> list[str]:
        return [line for message in self.drain() for line in message.split("\n")]


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Iterator[_Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        try:
            if request.param == "path":
                path = os.path.join(directory, "notify")
                sock.bind(path)
                yield _Receiver(sock, path)
            else:
                name = f"reuseport-test-{os.getpid()}-{id(sock)}"
                sock.bind(b"\0" + name.encode())
                yield _Receiver(sock, "@" + name)
        finally:
            sock.close()


def test_notifier_sends_to_the_socket_and_hides_the_variables(receiver: _Receiver) -> None:
    environ = {"NOTIFY_SOCKET": receiver.name, "WATCHDOG_USEC": "2000000", "OTHER": "x"}
    notifier = Notifier(environ, pid=123)
    assert environ == {"OTHER": "x"}  # the workers and the app do not see them
    assert notifier.enabled
    assert notifier.state.watchdog_interval == 1.0  # half of WATCHDOG_USEC
    assert notifier.send("READY=1")
    assert receiver.drain(timeout=2.0) == ["READY=1"]
    assert notifier.child_environment() == {
        "NOTIFY_SOCKET": receiver.name,
        "WATCHDOG_USEC": "2000000",
    }


def test_watchdog_for_another_pid_is_not_ours() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}, 2)
    assert notifier.state.watchdog_interval is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({}, pid=1)
    assert not notifier.enabled
    assert not notifier.send("READY=1")


def test_a_gone_systemd_costs_nothing() -> None:
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        notifier = Notifier({"NOTIFY_SOCKET": os.path.join(directory, "nobody")}, pid=1)
        assert not notifier.send("READY=1")
        assert not notifier.send("READY=1")


# ------------------------------------------------------------------ a real master
@pytest.mark.e2e
def test_master_reports_ready_reload_watchdog_and_stop(receiver: _Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.name, "WATCHDOG_USEC": "400000"}
    with Server("-w", "2", "--mode", "shared", env=env) as server:
        server.wait_ready()
        wait_until(lambda: "READY=1" in receiver.fields(), timeout=10)
        fields = receiver.fields()
        assert any(f.startswith("STATUS=2 of 2 workers ready (shared mode)") for f in fields)
        # The watchdog pings go on while the loop runs: two more within a second.
        count = fields.count("WATCHDOG=1")
        wait_until(lambda: receiver.fields().count("WATCHDOG=1") >= count + 2, timeout=5)
        # A rolling reload: RELOADING=1 with the clock, then READY=1 again.
        mark = len(receiver.fields())
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: "READY=1" in receiver.fields()[mark:], timeout=20)
        after = receiver.fields()[mark:]
        reloading = after.index("RELOADING=1")
        assert after[reloading + 1].startswith("MONOTONIC_USEC=")
        assert reloading < after.index("READY=1")
        assert server.stop() == 0
    assert "STOPPING=1" in receiver.fields()


# The master, with _terminate_all made to return only once every worker it
# signalled has exited (is a zombie): the loop then finds no worker before it
# tends systemd, as it can when idle workers win the race for the CPU.
_SLOW_MASTER = """
import os, sys, time
import reuseport.arbiter as arbiter
from reuseport.cli import main

signal_all = arbiter.Arbiter._terminate_all

def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"

def terminate_all_then_wait(self, sig):
    signal_all(self, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_state(p) != "Z" for p in list(self.workers)):
        time.sleep(0.01)

arbiter.Arbiter._terminate_all = terminate_all_then_wait
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.e2e
def test_stopping_is_sent_even_when_every_worker_exits_at_once(receiver: _Receiver) -> None:
    server = Server("-w", "2", "--mode", "shared", env={"NOTIFY_SOCKET": receiver.name})
    server.argv = [server.argv[0], "-c", _SLOW_MASTER, *server.argv[3:]]  # (drops "-m reuseport")
    with server:
        server.wait_ready()
        wait_until(lambda: "READY=1" in receiver.fields(), timeout=10)
        assert server.stop() == 0
    # Sent when the loop found no worker left: after them, the last word.
    assert receiver.fields()[-2:] == [
        "STOPPING=1",
        "STATUS=0 of 2 workers ready (shared mode); stopping",
    ]
