"""The arbiter's bookkeeping, driven by hand: no master process, no fork.

Rules: an ``Arbiter`` is built but never ``run()``; a test calls the step it
is about (spawning, a message, a reaped exit) on handles it made itself, with
a real socketpair as the channel.  Where a signal must reach a process, the
process is a ``python -c`` child that only waits, reaped by the test.  The
end-to-end behaviour is in ``test_pool.py`` and ``test_serve.py``; these
tests pin down the paths those cannot reach on purpose (a full scoreboard, a
channel that refuses the drain message).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from features import requires_cbpf
from handles import handle_in

from reuseport.arbiter import Arbiter
from reuseport.config import Config, Mode, ProcessManager
from reuseport.lifecycle import ExitCause, SpawnCause, WorkerHandle, WorkerState
from reuseport.scoreboard import Scoreboard
from reuseport.sockets import bind_reuseport


@pytest.fixture
def channels() -> Iterator[list[socket.socket]]:
    """Master ends of channels; a test appends pairs through ``channel_pair``."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def channel_pair(opened: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    opened += [a, b]
    return a, b


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that waits for a signal: it stands in for a worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    yield proc
    proc.kill()
    proc.wait(10)


def add_handle(
    arbiter: Arbiter,
    channel: socket.socket,
    *,
    pid: int,
    slot: int,
    state: WorkerState,
    cause: SpawnCause = SpawnCause.START,
) -> WorkerHandle:
    handle = handle_in(state, channel, pid=pid, slot=slot, started=time.monotonic(), cause=cause)
    arbiter.workers[pid] = handle
    return handle


def full_scoreboard(slots: int) -> Scoreboard:
    board = Scoreboard(slots)
    while board.claim(slot=0, generation=1, now=0.0) is not None:
        pass
    return board


# ------------------------------------------------------------------ spawning
def test_a_spawn_without_a_scoreboard_row_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    arbiter = Arbiter(Config(workers=2), Mode.SHARED, "test")
    arbiter.scoreboard = full_scoreboard(2)
    with caplog.at_level(logging.ERROR, logger="reuseport.master"):
        started = arbiter._spawn_some(2, SpawnCause.SCALE, time.monotonic())
    assert started == 0
    assert arbiter.workers == {}
    assert arbiter.events.spawns[SpawnCause.SCALE] == 0
    assert "no free scoreboard row for worker 0" in caplog.text


def test_a_sigttin_spawn_that_could_not_start_stays_owed() -> None:
    config = Config(pm=ProcessManager.DYNAMIC, max_workers=4, start_workers=1)
    arbiter = Arbiter(config, Mode.SHARED, "test")
    arbiter.scoreboard = full_scoreboard(4)
    assert arbiter.policy.more(live=1).done
    arbiter._maintain_pool()
    assert arbiter.policy.extra == 1  # asked again on the next turn
    assert arbiter.workers == {}


# ------------------------------------------------------------------ messages
def test_listening_then_ready_moves_a_worker_to_ready(channels: list[socket.socket]) -> None:
    arbiter = Arbiter(Config(workers=1), Mode.SHARED, "test")
    master_end, _ = channel_pair(channels)
    handle = add_handle(arbiter, master_end, pid=11, slot=0, state=WorkerState.BOOTING)
    arbiter._on_message(handle, {"type": "listening"}, [])
    assert handle.state is WorkerState.STARTING
    arbiter._on_message(handle, {"type": "ready", "interface": "asgi"}, [])
    assert handle.state is WorkerState.READY
    assert handle.ready_since is not None
    assert arbiter.announced_ready


@pytest.mark.parametrize("state", [WorkerState.STOPPING, WorkerState.ABORTING])
def test_a_worker_told_to_go_may_still_report_ready(
    state: WorkerState, channels: list[socket.socket]
) -> None:
    arbiter = Arbiter(Config(workers=1), Mode.SHARED, "test")
    master_end, _ = channel_pair(channels)
    handle = add_handle(arbiter, master_end, pid=12, slot=0, state=state)
    arbiter._on_message(handle, {"type": "listening"}, [])
    arbiter._on_message(handle, {"type": "ready", "interface": "asgi"}, [])
    assert handle.state is state  # no illegal move, no exception: it keeps leaving
    assert handle.why_gone() is not ExitCause.BOOT  # it did become ready


# ------------------------------------------------------------------ draining
@pytest.mark.e2e
def test_a_drain_message_that_cannot_be_sent_stops_the_worker(
    channels: list[socket.socket],
    sleeper: subprocess.Popen[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    arbiter = Arbiter(Config(workers=2), Mode.REUSEPORT, "test")
    master_end, worker_end = channel_pair(channels)
    worker_end.close()  # the worker's end is gone: send fails with EPIPE
    handle = add_handle(arbiter, master_end, pid=sleeper.pid, slot=1, state=WorkerState.DRAINING)
    with caplog.at_level(logging.WARNING, logger="reuseport.master"):
        arbiter._send_drain(handle)
    assert sleeper.wait(10) == -signal.SIGTERM
    assert "Could not tell worker 1" in caplog.text
    assert "EPIPE" in caplog.text


@requires_cbpf
def test_the_drained_slot_closes_when_its_last_worker_is_reaped(
    channels: list[socket.socket],
) -> None:
    arbiter = Arbiter(Config(workers=3), Mode.REUSEPORT, "test")
    listeners = arbiter.listeners
    listeners.bind()
    try:
        for slot in range(3):
            listeners.will_open(slot)
            sock = bind_reuseport(listeners.binds[0], 64)
            listeners.slot_opened(slot, [sock.detach()])
        listeners.begin_drain(2, allowed={0, 1, 2})
        # Slot 2 has its draining worker and an older one still stopping (a reload).
        older = add_handle(
            arbiter, channel_pair(channels)[0], pid=21, slot=2, state=WorkerState.READY
        )
        older.leave(WorkerState.STOPPING, ExitCause.RELOAD, deadline=0.0)
        drainer = add_handle(
            arbiter, channel_pair(channels)[0], pid=22, slot=2, state=WorkerState.READY
        )
        drainer.leave(WorkerState.DRAINING, ExitCause.SCALE, deadline=0.0)

        arbiter.workers.pop(22)
        arbiter._on_exit(drainer, 0)
        assert listeners.draining == 2, "the older worker still holds the socket"
        assert listeners.order == [0, 1, 2]

        arbiter.workers.pop(21)
        arbiter._on_exit(older, 0)
        assert listeners.draining is None
        assert listeners.order == [0, 1]
        assert arbiter.events.drains == 1
        assert arbiter.events.exits[ExitCause.SCALE] == 1
        assert arbiter.events.exits[ExitCause.RELOAD] == 1
    finally:
        listeners.close()
