"""The master's traffic tick without processes: which steering runs, the fallback, rescues.

Real listeners on 127.0.0.1 port 0; this test process plays the workers (it
opens each slot's socket and hands the master the fd, as a worker does).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Iterator

import pytest
from features import requires_p2c, requires_reuseport

import reuseport.traffic as traffic_mod
from reuseport.config import Config, Mode, SteeringKind, parse_bind
from reuseport.listeners import Listeners
from reuseport.loadboard import LoadBoard
from reuseport.sockets import bind_reuseport
from reuseport.traffic import Traffic

pytestmark = requires_reuseport

BACKLOG = 64


@contextlib.contextmanager
def traffic(steering: str, *, rescue: bool = True, slots: int = 2) -> Iterator[Traffic]:
    listeners = Listeners(Mode.REUSEPORT, (parse_bind("127.0.0.1:0"),), BACKLOG)
    listeners.bind()
    try:
        config = Config(steering=SteeringKind(steering), rescue=rescue)
        t = Traffic(config, Mode.REUSEPORT, listeners)
        t.setup(capacity=8)
        for slot in range(slots):
            listeners.will_open(slot)
            sock = bind_reuseport(listeners.slot_binds[0], BACKLOG)
            assert listeners.slot_opened(slot, [sock.detach()])
        yield t
    finally:
        listeners.close()
        if listeners.board is not None:
            listeners.board.close()


def test_hash_without_rescue_needs_no_tick_and_no_board() -> None:
    with traffic("hash", rescue=False) as t:
        assert t.kind is SteeringKind.HASH
        assert not t.ticking
        assert t.listeners.board is None


def test_rescue_alone_gets_an_anonymous_board_and_the_tick() -> None:
    with traffic("hash", rescue=True) as t:
        assert t.ticking
        assert t.listeners.board is not None
        assert t.listeners.board.map_fd is None  # not eBPF: only the lanes are read
        assert t.listeners.kernel is None


@requires_p2c
def test_auto_takes_p2c_where_the_kernel_loads_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reuseport.master"), traffic("auto") as t:
        assert t.kind is SteeringKind.P2C
        assert t.listeners.kernel is not None
        assert t.status().active is SteeringKind.P2C
    assert "Steering: p2c (eBPF" in caplog.text


@pytest.mark.parametrize(("asked", "level"), [("auto", logging.INFO), ("p2c", logging.WARNING)])
def test_without_privilege_it_falls_back_to_load_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, asked: str, level: int
) -> None:
    boards: list[bool] = []

    class NoEbpfBoard(LoadBoard):
        def __init__(self, capacity: int, *, ebpf: bool) -> None:
            boards.append(ebpf)
            if ebpf:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            super().__init__(capacity, ebpf=ebpf)

    monkeypatch.setattr(traffic_mod, "LoadBoard", NoEbpfBoard)
    with caplog.at_level(logging.INFO, logger="reuseport.master"), traffic(asked) as t:
        assert t.kind is SteeringKind.LOAD
        assert t.steering.load_aware
        assert t.listeners.kernel is None
        assert t.status().active is SteeringKind.LOAD
    assert boards == [True, False]  # then an anonymous board for rescue
    (record,) = [r for r in caplog.records if "refused the eBPF program" in r.getMessage()]
    assert record.levelno == level
    assert "EPERM: it needs CAP_BPF or CAP_SYS_ADMIN" in record.getMessage()
    assert "Steering: load (cBPF" in caplog.text


def test_a_slot_whose_queue_stands_still_is_rescued_until_it_accepts() -> None:
    """The tick's answer: started once the queue stood still for stall_after, ended on an accept."""
    with traffic("hash") as t:
        board = t.listeners.board
        assert board is not None
        (running,) = t.listeners.for_slot(0)
        (stalled,) = t.listeners.for_slot(1)
        port = stalled.getsockname()[1]
        clients = []

        def tick(now: float) -> traffic_mod.RescueChanges:
            _accept_all(running)  # slot 0's worker keeps up
            return t.tick({0, 1}, {}, now)

        try:
            while not t.sample()[1]:  # until one hashes into slot 1's queue
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert tick(100.0).started == ()
            assert tick(100.0 + t.decision.stall_after).started == (1,)
            assert t.status().rescuing == (1,)
            assert tick(101.0).started == ()  # still on: nothing new
            board.lane(1, 0).publish(accepted=1, open_=0)  # its worker accepts again
            assert tick(101.1).ended == (1,)
            assert t.rescuing == set()
        finally:
            for client in clients:
                client.close()


def _accept_all(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return
        conn.close()


def test_a_starved_machine_raises_the_rescue_threshold_and_it_decays_back() -> None:
    """Waits that end 50 ms late: nobody is rescued for missing 10 ms."""
    with traffic("hash") as t:
        t.woke_late(0.05)
        assert t.decision.stall_after >= 0.15
        for _ in range(60):  # on time again: the lateness fades
            t.woke_late(0.0)
        assert t.decision.stall_after == traffic_mod.RESCUE_STALL
