"""SIGUSR2: the hand-over record, the sockets and their group order, and a real upgrade under load.

Rules: the hand-over and ``Listeners.holdings``/``adopt`` are checked in
this process with real sockets on loopback (the group order is checked with
the kernel itself: a steering program that names one index must reach the
socket the adopting side put at that index).  End to end, a load client
runs through the upgrade (``Connection: close``, a new connection per
request) and must see no failure; the new master is not this process's
child (its parent, the old master, exits), so the test stops it by pid and
waits, bounded, until it and its workers are gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from features import requires_cbpf, requires_p2c, requires_reuseport
from support import (
    Server,
    alive,
    descendants_of,
    http_get,
    load,
    proc_info,
    still_running,
    wait_until,
)
from test_listeners import BACKLOG, connections_per_slot, held

from reuseport import upgrade
from reuseport.bpf import attach_cbpf, steering_program
from reuseport.config import FdBind, Mode, parse_bind
from reuseport.control import query
from reuseport.errors import ConfigError
from reuseport.listeners import Holdings, Listeners
from reuseport.sockets import bind_reuseport

# ------------------------------------------------------------------ the record


def _holdings() -> Holdings:
    return Holdings(
        mode=Mode.REUSEPORT,
        binds=(
            parse_bind("127.0.0.1:4000"),
            parse_bind("[::1]:4001"),
            parse_bind("unix:/run/app.sock"),
            FdBind(fd=3, name="web"),
        ),
        bind_fds=(10, 11, 12, 3),
        slots=((20, 21), (22, 23)),
        anchor=0,
        unix_files=(("/run/app.sock", 5, 99),),
    )


def test_the_hand_over_survives_its_trip_through_the_environment() -> None:
    handover = upgrade.Handover(
        master=77,
        ready_fd=9,
        holdings=_holdings(),
        control=("/run/c.sock", 13),
        metrics_fd=14,
        configured=("127.0.0.1:4000",),
    )
    assert upgrade.decode(upgrade.encode(handover)) == handover
    assert sorted(handover.fds()) == [3, 9, 10, 11, 12, 13, 14, 20, 21, 22, 23]


def test_take_reads_only_a_hand_over_from_the_parent_and_always_removes_it() -> None:
    text = upgrade.encode(upgrade.Handover(master=77, ready_fd=9, holdings=_holdings()))
    environ = {upgrade.ENV: text, "OTHER": "1"}
    assert upgrade.take(environ, parent=77) is not None
    assert environ == {"OTHER": "1"}
    environ = {upgrade.ENV: text}
    assert upgrade.take(environ, parent=78) is None  # a leftover, not from our parent
    assert environ == {}
    assert upgrade.take({}, parent=77) is None
    with pytest.raises(ConfigError, match="cannot be read"):
        upgrade.take({upgrade.ENV: '{"v": 99}'}, parent=77)
    with pytest.raises(ValueError, match="malformed"):
        upgrade.decode('{"v": 1}')


def test_the_new_master_runs_the_same_command_line() -> None:
    argv = upgrade.command()
    assert argv[0] == sys.executable
    assert argv[1:] == sys.orig_argv[1:]


# ------------------------------------------------------------------ the sockets
def _dup_holdings(holdings: Holdings) -> Holdings:
    """What a new process would inherit: its own descriptors for the same sockets."""
    return Holdings(
        mode=holdings.mode,
        binds=holdings.binds,
        bind_fds=tuple(os.dup(fd) if fd >= 0 else fd for fd in holdings.bind_fds),
        slots=tuple(tuple(os.dup(fd) for fd in fds) for fds in holdings.slots),
        anchor=holdings.anchor,
        unix_files=holdings.unix_files,
    )


@contextlib.contextmanager
def adopted(holdings: Holdings) -> Iterator[Listeners]:
    new = Listeners(holdings.mode, holdings.binds, BACKLOG)
    new.adopt(_dup_holdings(holdings))
    try:
        yield new
    finally:
        new.close()


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@requires_reuseport
@requires_cbpf
def test_adopted_slots_sit_at_their_group_index() -> None:
    with held(Mode.REUSEPORT, slots=3) as old:
        # Drain slot 0: the last member (slot 2) moves into its hole.
        old.begin_drain(0, allowed={1, 2})
        old.release(0)
        assert old.order == [2, 1]
        holdings = old.holdings()
        with adopted(holdings) as new:
            assert new.adopted
            assert new.order == [0, 1]
            assert _inode(new.for_slot(0)[0]) == _inode(old.for_slot(2)[0])
            assert _inode(new.for_slot(1)[0]) == _inode(old.for_slot(1)[0])
            assert new.binds == old.binds
            assert new.next_slot(busy=()) == 0  # held slots are filled first
            # The kernel agrees: a program that allows index 0 only reaches slot 0.
            attach_cbpf(new.for_slot(0)[0], steering_program([0]))
            got = connections_per_slot(new, 20)
            assert got == {0: 20, 1: 0}, got


@requires_reuseport
def test_adopting_detaches_the_old_program_and_keeps_the_reservation() -> None:
    with held(Mode.REUSEPORT, slots=2) as old:
        old.apply_steering({0})  # a program that keeps connections from slot 1
        with adopted(old.holdings()) as new:
            got = connections_per_slot(new, 40)
            assert min(got.values()) > 0, got  # no program: the kernel's hash
            assert new.queues() == [
                (str(new.binds[0]), 0, 0, BACKLOG),
                (str(new.binds[0]), 1, 0, BACKLOG),
            ]


@requires_reuseport
def test_a_udp_group_is_handed_over_in_its_slot_sockets() -> None:
    """A UDP bind's reservation is closed once a slot joins: only its slots go over."""
    binds = (parse_bind("127.0.0.1:0"), parse_bind("udp://127.0.0.1:0"))
    old = Listeners(Mode.REUSEPORT, binds, BACKLOG)
    old.bind()
    try:
        udp_port = old.binds[1].port  # type: ignore[union-attr]
        for slot in (0, 1):
            old.will_open(slot)
            socks = [bind_reuseport(addr, BACKLOG) for addr in old.binds]
            assert old.slot_opened(slot, [sock.detach() for sock in socks])
        holdings = old.holdings()
        assert holdings.bind_fds[1] == -1
        assert holdings.bind_fds[0] >= 0
        assert -1 not in holdings.fds()
        with adopted(holdings) as new:
            assert new.order == [0, 1]
            udp = {_inode(new.for_slot(slot)[1]) for slot in (0, 1)}
            assert udp == {_inode(old.for_slot(slot)[1]) for slot in (0, 1)}
            # A datagram to the port reaches one of the adopted slot sockets.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"ping", ("127.0.0.1", udp_port))
                readable, _, _ = select.select([new.for_slot(s)[1] for s in (0, 1)], [], [], 5)
                assert [sock.recv(16) for sock in readable] == [b"ping"]
    finally:
        old.close()


@requires_reuseport
def test_no_hand_over_while_the_order_changes() -> None:
    with held(Mode.REUSEPORT, slots=2) as old:
        old.will_open(2)
        assert not old.stable
        with pytest.raises(RuntimeError, match="later"):
            old.holdings()
        old.opener_gone(2)
        assert old.stable
        old.holdings()


def test_socket_files_belong_to_whoever_completes_the_hand_over() -> None:
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        path = os.path.join(directory, "a.sock")
        old = Listeners(Mode.SHARED, (parse_bind(f"unix:{path}"), parse_bind("127.0.0.1:0")), 16)
        old.bind()
        try:
            holdings = old.holdings()
            assert [f[0] for f in holdings.unix_files] == [path]
            new = Listeners(Mode.SHARED, holdings.binds, 16)
            new.adopt(_dup_holdings(holdings))
            assert new.binds[1].port != 0  # type: ignore[union-attr]
            new.close()  # a new master that fails: the file stays the old one's
            assert os.path.exists(path)
            old.keep_files()  # the old master hands over ...
            new = Listeners(Mode.SHARED, holdings.binds, 16)
            new.adopt(_dup_holdings(holdings))
            old.close()
            assert os.path.exists(path)  # ... and leaves the file to the new one
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)  # still listening: the new master holds it
            new.own_files()
            new.close()
            assert not os.path.exists(path)
        finally:
            old.close()


def test_a_failed_upgrade_gives_the_files_back() -> None:
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        path = os.path.join(directory, "a.sock")
        old = Listeners(Mode.SHARED, (parse_bind(f"unix:{path}"),), 16)
        old.bind()
        old.keep_files()
        old.retake()
        old.close()
        assert not os.path.exists(path)


# ------------------------------------------------------------------ end to end
APP = """
import asyncio, json, os

VERSION = "{version}"
if VERSION == "broken":
    raise ImportError("this version does not import")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if VERSION == "slow":
                    await asyncio.sleep(60)
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = json.dumps({{"pid": os.getpid(), "version": VERSION}}).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": body}})


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(VERSION.encode() + b" " + data, addr)
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A short private folder: the app, the pid file, the control socket."""
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        yield Path(directory)


def _write_app(place: Path, version: str) -> None:
    (place / "upgradable.py").write_text(APP.format(version=version))


def _serve(place: Path, *args: str) -> Server:
    _write_app(place, "one")
    return Server(
        "upgradable:app",
        "--app-dir",
        str(place),
        "-w",
        "2",
        "--pid",
        str(place / "pid"),
        "--control",
        str(place / "c.sock"),
        *args,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


def _pid_file(place: Path) -> int:
    return int((place / "pid").read_text())


@contextlib.contextmanager
def _stopped_at_the_end(server: Server, place: Path) -> Iterator[list[int]]:
    """Collects the new masters' pids; stops them (and their workers) on the way out.

    The pid file names one too, should a test fail before it noted the pid.
    """
    new: list[int] = []
    try:
        yield new
    finally:
        with contextlib.suppress(OSError, ValueError):
            new.append(_pid_file(place))
        for pid in sorted(set(new) - {server.pid}):
            info = proc_info(pid)
            if info is None:
                continue
            family = [(p, proc_info(p)) for p in [pid, *descendants_of(pid)]]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                wait_until(
                    lambda: not any(i and alive(p, i.start_time) for p, i in family),  # noqa: B023
                    timeout=20,
                    message=server._tail,
                )
            finally:
                for p, i in family:
                    if i is not None and alive(p, i.start_time):
                        os.kill(p, signal.SIGKILL)


def _upgrade_under_load(place: Path, server: Server, new: list[int]) -> int:
    """SIGUSR2 to ``server`` during a load; returns the new master's pid."""
    old = server.pid
    mark = len(server.lines)
    with load(server.port, duration=5.0, concurrency=8) as report:
        still_running(report, 1.0)
        server.send_signal(signal.SIGUSR2)
        pattern = r"SIGUSR2: started the new master, pid (\d+)"
        new.append(int(server.wait_for_line(pattern, timeout=10, start=mark)[1]))
        server.wait_for_line(r"Upgrade complete: the old master", timeout=30, start=mark)
    print(f"load through the upgrade: {report}")
    assert report["failed"] == 0, report["outcomes"]
    assert report["ok"] > 300, report
    pids = {int(pid) for pid in report["pids"]}
    assert server.wait(10) == 0  # the old master is gone, cleanly
    new_master = new[-1]
    assert _pid_file(place) == new_master != old
    # Both generations served the load: the old workers before, the new ones after.
    new_workers = set(descendants_of(new_master))
    assert pids & new_workers, (pids, new_workers)
    assert pids - new_workers, "the old workers served nothing?"
    return new_master


@pytest.mark.e2e
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(("reuseport", "p2c"), marks=[requires_reuseport, requires_p2c], id="p2c"),
        pytest.param(("reuseport", "load"), marks=[requires_reuseport, requires_cbpf], id="load"),
        pytest.param(("shared", "auto"), id="shared"),
    ],
)
def test_usr2_under_load_loses_nothing(place: Path, mode: tuple[str, str]) -> None:
    listen_mode, steering = mode
    with (
        _serve(
            place, "--mode", listen_mode, "--steering", steering, "--metrics", "127.0.0.1:0"
        ) as server,
        _stopped_at_the_end(server, place) as new,
    ):
        server.wait_ready()
        metrics_port = int(server.wait_for_line(r"Metrics at http://[^:]+:(\d+)/")[1])
        new_master = _upgrade_under_load(place, server, new)
        # The new master answers on the same control path, metrics port and address.
        snapshot = query(str(place / "c.sock"))
        assert snapshot["master"]["pid"] == new_master
        assert snapshot["master"]["mode"] == listen_mode
        if listen_mode == "reuseport":
            assert snapshot["steering"]["active"] == steering
        assert http_get("127.0.0.1", metrics_port, "/status")[1]["master"]["pid"] == new_master
        status, body = server.request("/")
        assert status == 200
        assert body["pid"] in descendants_of(new_master)
        os.kill(new_master, signal.SIGTERM)
        wait_until(lambda: proc_info(new_master) is None or not alive(new_master), timeout=20)
    assert not (place / "pid").exists()
    assert not (place / "c.sock").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "mode",
    [pytest.param("reuseport", marks=[requires_reuseport, requires_p2c]), "shared"],
)
def test_a_new_master_that_fails_leaves_the_old_one_serving(place: Path, mode: str) -> None:
    with _serve(place, "--mode", mode) as server, _stopped_at_the_end(server, place) as new:
        server.wait_ready()
        old = server.pid
        _write_app(place, "broken")
        with load(server.port, duration=4.0, concurrency=8) as report:
            still_running(report, 0.5)
            mark = len(server.lines)
            server.send_signal(signal.SIGUSR2)
            match = server.wait_for_line(r"started the new master, pid (\d+)", start=mark)
            new.append(int(match[1]))
            server.wait_for_line(r"Upgrade failed: the new master .* keeps serving", timeout=30)
        assert report["failed"] == 0, report["outcomes"]
        assert "this version does not import" in server.stderr
        assert server.returncode is None
        assert _pid_file(place) == old
        snapshot = query(str(place / "c.sock"))
        assert snapshot["master"]["pid"] == old
        if mode == "reuseport":
            # Its own p2c program is back, with every slot in its socket maps.
            server.wait_for_line(r"every slot is in this master's socket maps again", start=mark)
            assert query(str(place / "c.sock"))["steering"]["active"] == "p2c"
            assert "falling back to cBPF" not in server.stderr
        # Fixed on disk: the next SIGUSR2 goes through.
        _write_app(place, "two")
        new_master = _upgrade_under_load(place, server, new)
        assert new_master == new[-1]
        _status, body = server.request("/")
        assert body["version"] == "two"


@pytest.mark.e2e
@requires_reuseport
def test_usr2_hands_udp_binds_over(place: Path) -> None:
    udp = ("-b", "127.0.0.1:0", "-b", "udp://127.0.0.1:0", "--datagram-app", "upgradable:Echo")
    with _serve(place, *udp) as server, _stopped_at_the_end(server, place) as new:
        server.wait_ready()
        (address,) = server.udp_addresses
        assert _udp_answer(address, b"before") == b"one before"
        _write_app(place, "two")
        _upgrade_under_load(place, server, new)
        # The new master's workers read the same UDP group: same port, new code.
        assert _udp_answer(address, b"after") == b"two after"


def _udp_answer(address: tuple[str, int], data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(data, address)
        return client.recv(1024)


@pytest.mark.e2e
@requires_reuseport
def test_a_new_master_that_is_not_ready_in_time_is_stopped(place: Path) -> None:
    with (
        _serve(
            place, "--mode", "reuseport", "--upgrade-timeout", "1", "--graceful-timeout", "2"
        ) as server,
        _stopped_at_the_end(server, place) as new,
    ):
        server.wait_ready()
        _write_app(place, "slow")
        server.send_signal(signal.SIGUSR2)
        match = server.wait_for_line(r"started the new master, pid (\d+)")
        new.append(int(match[1]))
        server.wait_for_line(r"was not ready within --upgrade-timeout 1s", timeout=20)
        # Stopped: a clean exit once its signal handlers are in, or SIGTERM's
        # default action if it came before them (a slow interpreter start).
        server.wait_for_line(
            r"Upgrade failed: the new master .* (exited|was killed by signal 15)", timeout=30
        )
        assert server.returncode is None
        status, body = server.request("/")
        assert (status, body["version"]) == (200, "one")
        assert _pid_file(place) == server.pid


@pytest.mark.e2e
@requires_reuseport
def test_usr2_is_refused_while_one_is_under_way_and_stop_cancels_it(place: Path) -> None:
    with (
        _serve(place, "--mode", "reuseport", "--graceful-timeout", "2") as server,
        _stopped_at_the_end(server, place) as new,
    ):
        server.wait_ready()
        _write_app(place, "slow")
        server.send_signal(signal.SIGUSR2)
        match = server.wait_for_line(r"started the new master, pid (\d+)")
        new.append(int(match[1]))
        server.send_signal(signal.SIGUSR2)
        server.wait_for_line(r"SIGUSR2 ignored: an upgrade is under way")
        assert server.stop() == 0
        assert "stopping the new master" in server.stderr
        wait_until(lambda: not alive(new[0]), timeout=20)


@pytest.mark.e2e
def test_a_relative_chdir_means_the_same_folder_to_the_new_master(place: Path) -> None:
    # Started from place's parent with relative paths: the new master must be
    # started there too, or "--chdir rp-..." would be looked up inside itself.
    _write_app(place, "one")
    server = Server(
        "upgradable:app", "--chdir", place.name, "-w", "1", "--mode", "shared",
        "--pid", "pid", "--control", "c.sock",
        env={"PYTHONDONTWRITEBYTECODE": "1"}, cwd=str(place.parent),
    )  # fmt: skip
    with server, _stopped_at_the_end(server, place) as new:
        server.wait_ready()
        assert server.request("/")[1]["version"] == "one"
        _write_app(place, "two")
        mark = len(server.lines)
        server.send_signal(signal.SIGUSR2)
        pattern = r"SIGUSR2: started the new master, pid (\d+)"
        new.append(int(server.wait_for_line(pattern, timeout=10, start=mark)[1]))
        server.wait_for_line(r"Upgrade complete: the old master", timeout=30, start=mark)
        assert server.wait(10) == 0
        assert _pid_file(place) == new[-1]  # "pid" relative to --chdir's folder, as before
        status, body = server.request("/")
        assert status == 200
        assert body["version"] == "two"
        assert body["pid"] in descendants_of(new[-1])
