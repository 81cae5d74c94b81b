"""``lifecycle.py``: the worker state table and the handle, without processes.

Rules: every allowed transition is exercised, and every forbidden one raises
(the table is small enough to check exhaustively, which also catches a move
added to the table by mistake).  The channel is a real socketpair, closed by
the fixture; nothing forks.
"""

from __future__ import annotations

import itertools
import signal
import socket
from collections.abc import Iterator

import pytest
from handles import handle_in

from reuseport.errors import ExitCode
from reuseport.lifecycle import (
    BUSY_WINDOW,
    LIVE,
    SERVING,
    TRANSITIONS,
    BootFailures,
    ExitCause,
    IllegalTransition,
    SpawnCause,
    WorkerHandle,
    WorkerState,
    failure_key,
)

S = WorkerState

# The table spelled out once more, by hand: a change to TRANSITIONS must be
# made here too, on purpose.
EXPECTED = {
    (S.BOOTING, S.STARTING),
    (S.BOOTING, S.STOPPING),
    (S.BOOTING, S.ABORTING),
    (S.STARTING, S.READY),
    (S.STARTING, S.STOPPING),
    (S.STARTING, S.ABORTING),
    (S.READY, S.REPLACING),
    (S.READY, S.DRAINING),
    (S.READY, S.STOPPING),
    (S.READY, S.ABORTING),
    (S.REPLACING, S.READY),
    (S.REPLACING, S.STOPPING),
    (S.REPLACING, S.ABORTING),
    (S.DRAINING, S.ABORTING),
    (S.STOPPING, S.ABORTING),
}
ALL_PAIRS = list(itertools.product(WorkerState, WorkerState))


@pytest.fixture
def channel() -> Iterator[socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a
    a.close()
    b.close()


def test_the_table_is_exactly_the_expected_one() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == EXPECTED
    assert set(TRANSITIONS) == set(WorkerState)


@pytest.mark.parametrize(("start", "end"), sorted(EXPECTED, key=str))
def test_every_allowed_transition_moves(
    start: WorkerState, end: WorkerState, channel: socket.socket
) -> None:
    handle = handle_in(start, channel)
    handle.to(end)
    assert handle.state is end


@pytest.mark.parametrize(
    ("start", "end"), [pair for pair in ALL_PAIRS if pair not in EXPECTED], ids=str
)
def test_every_forbidden_transition_raises(
    start: WorkerState, end: WorkerState, channel: socket.socket
) -> None:
    handle = handle_in(start, channel)
    with pytest.raises(IllegalTransition, match=f"{start.name} -> {end.name}"):
        handle.to(end)
    assert handle.state is start


def test_a_new_handle_is_booting_and_live(channel: socket.socket) -> None:
    handle = WorkerHandle(
        pid=1, slot=0, generation=1, row=0, channel=channel, started=0.0, cause=SpawnCause.RESPAWN
    )
    assert handle.state is S.BOOTING
    assert handle.live
    assert not handle.serving
    assert not handle.leaving


def test_state_groups() -> None:
    assert {S.BOOTING, S.STARTING, S.READY} == LIVE
    assert {S.READY, S.REPLACING} == SERVING


def test_the_usual_life_of_a_reloaded_worker(channel: socket.socket) -> None:
    handle = handle_in(S.BOOTING, channel)
    for state in (S.STARTING, S.READY, S.REPLACING):
        handle.to(state)
    handle.leave(S.STOPPING, ExitCause.RELOAD, deadline=10.0)
    assert handle.leaving
    assert not handle.live
    assert handle.stop_deadline == 10.0
    assert handle.why_gone() is ExitCause.RELOAD


def test_leave_keeps_the_first_cause(channel: socket.socket) -> None:
    handle = handle_in(S.READY, channel)
    handle.leave(S.DRAINING, ExitCause.SCALE, deadline=5.0)
    handle.leave(S.ABORTING, ExitCause.STOP, deadline=7.0)
    assert handle.state is S.ABORTING
    assert handle.exit_cause is ExitCause.SCALE
    assert handle.stop_deadline == 7.0


@pytest.mark.parametrize("state", [S.READY, S.REPLACING, S.BOOTING])
def test_leave_only_to_a_leaving_state(state: WorkerState, channel: socket.socket) -> None:
    handle = handle_in(S.STARTING, channel)
    with pytest.raises(IllegalTransition):
        handle.leave(state, ExitCause.STOP, deadline=1.0)
    assert handle.state is S.STARTING
    assert handle.exit_cause is None


def test_leave_by_a_forbidden_move_changes_nothing(channel: socket.socket) -> None:
    handle = handle_in(S.STOPPING, channel)
    with pytest.raises(IllegalTransition):
        handle.leave(S.DRAINING, ExitCause.SCALE, deadline=1.0)
    assert handle.exit_cause is None
    assert handle.stop_deadline is None


def test_unasked_exit_is_a_crash_after_ready_and_a_boot_failure_before(
    channel: socket.socket,
) -> None:
    handle = handle_in(S.STARTING, channel)
    assert handle.why_gone() is ExitCause.BOOT
    handle.ready_since = 3.0
    assert handle.why_gone() is ExitCause.CRASH


def test_describe_exit(channel: socket.socket) -> None:
    handle = handle_in(S.READY, channel)
    assert handle.describe_exit(3) == "exited with code 3"
    assert handle.describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    # Nobody here sent a SIGKILL: say what usually did.
    assert handle.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL (perhaps out of memory?)"
    handle.leave(S.ABORTING, ExitCause.HEARTBEAT, deadline=1.0)
    assert handle.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


@pytest.mark.parametrize(
    ("code", "boot_error", "ready", "expected"),
    [
        (ExitCode.APP_LOAD_ERROR, None, False, True),
        (ExitCode.BOOT_ERROR, None, False, True),
        (1, (5, "lifespan failed"), False, True),
        (1, None, False, False),  # a plain crash before ready: respawned with backoff
        (-signal.SIGKILL, None, False, False),
        (ExitCode.BOOT_ERROR, None, True, False),  # it was ready: not a boot failure
    ],
)
def test_failed_to_boot(
    code: int,
    boot_error: tuple[int, str] | None,
    ready: bool,
    expected: bool,
    channel: socket.socket,
) -> None:
    handle = handle_in(S.STARTING, channel)
    handle.boot_error = boot_error
    handle.ready_since = 1.0 if ready else None
    assert handle.failed_to_boot(code) is expected


def test_busy_means_seen_busy_within_the_window(channel: socket.socket) -> None:
    handle = handle_in(S.READY, channel)
    assert not handle.busy(100.0)  # never seen busy
    handle.saw(requests=0, in_flight=1, now=100.0)
    assert handle.busy(100.0)
    assert handle.busy(100.0 + BUSY_WINDOW - 0.01)
    assert not handle.busy(100.0 + BUSY_WINDOW)
    # Requests finished since the last look count as busy, an unchanged count does not.
    handle.saw(requests=5, in_flight=0, now=200.0)
    assert handle.last_busy == 200.0
    handle.saw(requests=5, in_flight=0, now=201.0)
    assert handle.last_busy == 200.0
    assert handle.last_requests == 5


def test_boot_failures_are_the_same_when_their_last_lines_are() -> None:
    one = "Traceback (most recent call last):\n  worker 1, pid 10\nRuntimeError: db down\n"
    two = "Traceback (most recent call last):\n  worker 2, pid 11\nRuntimeError: db down"
    assert failure_key(5, one) == failure_key(5, two) == (5, "RuntimeError: db down")
    assert failure_key(4, one) != failure_key(5, two)
    assert failure_key(5, "RuntimeError: db gone") != failure_key(5, two)


def test_boot_failures_show_the_first_count_the_same_and_let_others_show() -> None:
    failures = BootFailures()
    assert not failures.halting
    assert failures.summary() is None
    failures.halt(5, "Traceback ...\n  worker 1\nRuntimeError: db down\n")
    assert failures.halting
    assert failures.seen(5, "Traceback ...\n  worker 2\nRuntimeError: db down")
    assert failures.seen(5, "RuntimeError: db down")
    assert not failures.seen(5, "RuntimeError: disk full")  # shown: a different cause
    assert not failures.seen(4, "RuntimeError: db down")  # another exit code
    assert failures.same == 2
    assert failures.summary() == "2 more workers failed the same way (not shown again)"
    one = BootFailures()
    one.halt(5, "x")
    assert one.seen(5, "x")
    assert one.summary() == "1 more worker failed the same way (not shown again)"
