"""The scoreboard: shared rows written by forked children, read by the parent.

Rules: a child forked here does nothing but write rows and ``os._exit``; the
parent reaps it with a bounded wait, so no test leaves a process behind.
"""

from __future__ import annotations

import os
import time

import pytest
from support import wait_until

from reuseport.scoreboard import Row, Scoreboard, SlotState


def fork_and_run(child: object, *args: object) -> None:
    """Run ``child(*args)`` in a forked process; fail unless it exits 0 within 10 s."""
    assert callable(child)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            child(*args)
            code = 0
        finally:
            os._exit(code)
    status: list[int] = []

    def reaped() -> bool:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(raw)
        return bool(done)

    try:
        wait_until(reaped, timeout=10.0, message=f"child {pid} did not exit")
    except AssertionError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    assert os.waitstatus_to_exitcode(status[0]) == 0


def test_a_new_board_is_empty() -> None:
    board = Scoreboard(3)
    try:
        assert board.size == 6  # two rows per slot: old and new worker during a reload
        rows = board.rows()
        assert [r.index for r in rows] == list(range(6))
        assert all(r.state is SlotState.EMPTY and r.pid == 0 for r in rows)
        assert board.free_index() == 0
    finally:
        board.close()


def test_zero_slots_still_has_rows() -> None:
    board = Scoreboard(0)
    try:
        assert board.size == 2
    finally:
        board.close()


def test_round_trip_in_one_process() -> None:
    board = Scoreboard(2)
    try:
        board.write(
            1,
            pid=4321,
            slot=1,
            generation=7,
            state=SlotState.READY,
            started=12.5,
            heartbeat=13.25,
            requests=2**40,
            in_flight=3,
            connections=4,
            accepted=2**35,
        )
        assert board.read(1) == Row(1, 4321, 1, 7, SlotState.READY, 12.5, 13.25, 2**40, 3, 4, 2**35)
        assert board.read(0).state is SlotState.EMPTY
    finally:
        board.close()


def test_negative_counters_are_clamped() -> None:
    """A worker's counters may dip below zero for a moment; the row never wraps."""
    board = Scoreboard(1)
    try:
        board.write(
            0,
            pid=1,
            slot=0,
            generation=1,
            state=SlotState.READY,
            started=0.0,
            heartbeat=0.0,
            in_flight=-1,
            connections=-2,
        )
        row = board.read(0)
        assert (row.in_flight, row.connections) == (0, 0)
    finally:
        board.close()


def _child_writes(board: Scoreboard, index: int, slot: int, beats: int) -> None:
    pid = os.getpid()
    started = time.monotonic()
    for beat in range(1, beats + 1):
        board.write(
            index,
            pid=pid,
            slot=slot,
            generation=slot + 100,
            state=SlotState.READY,
            started=started,
            heartbeat=time.monotonic(),
            requests=beat,
            in_flight=beat % 5,
            connections=2,
            accepted=beat * 2,
        )


@pytest.mark.e2e
def test_rows_written_by_forked_children_are_seen_by_the_parent() -> None:
    board = Scoreboard(2)
    try:
        before = time.monotonic()
        fork_and_run(_child_writes, board, 0, 0, 50)
        fork_and_run(_child_writes, board, 3, 1, 7)
        first, fourth = board.read(0), board.read(3)
        assert first.pid != os.getpid()
        assert first.pid != fourth.pid
        assert (first.slot, first.generation, first.requests, first.accepted) == (0, 100, 50, 100)
        assert (fourth.slot, fourth.generation, fourth.requests) == (1, 101, 7)
        assert first.state is SlotState.READY
        # time.monotonic() is one clock for the whole machine: the master can age a beat.
        assert before <= first.started <= first.heartbeat <= time.monotonic()
        assert [r.index for r in board.rows() if r.state is SlotState.EMPTY] == [1, 2]
    finally:
        board.close()


@pytest.mark.e2e
def test_parent_sees_a_live_child_beat() -> None:
    """The parent reads a row while the child still runs and writes it."""
    board = Scoreboard(1)
    go = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(go[1])
                _child_writes(board, 1, 0, 3)
                os.read(go[0], 1)  # wait for the parent's go (EOF if it dies)
                _child_writes(board, 1, 0, 9)
                code = 0
            finally:
                os._exit(code)
        os.close(go[0])
        try:
            wait_until(lambda: board.read(1).requests == 3, timeout=10.0)
            assert board.read(1).pid == pid
            os.write(go[1], b"g")
            wait_until(lambda: board.read(1).requests == 9, timeout=10.0)
        finally:
            os.close(go[1])
            _, status = os.waitpid(pid, 0)  # the child ends on its own once go is written/closed
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        board.close()


def test_free_index_and_clear() -> None:
    board = Scoreboard(2)
    try:
        for index in range(board.size):
            assert board.free_index() == index
            board.write(
                index,
                pid=100 + index,
                slot=index,
                generation=1,
                state=SlotState.STARTING,
                started=1.0,
                heartbeat=1.0,
            )
        assert board.free_index() is None
        board.clear(2)
        assert board.free_index() == 2
        cleared = board.read(2)
        assert cleared == Row(2, 0, 0, 0, SlotState.EMPTY, 0.0, 0.0, 0, 0, 0, 0)
        board.clear(0)
        assert board.free_index() == 0
        assert board.read(1).pid == 101  # neighbours untouched
    finally:
        board.close()


@pytest.mark.e2e
def test_master_clearing_a_row_a_child_wrote() -> None:
    """After reaping, the master clears the row; the next worker gets it."""
    board = Scoreboard(1)
    try:
        fork_and_run(_child_writes, board, 0, 0, 5)
        assert board.free_index() == 1
        board.clear(0)
        assert board.free_index() == 0
        assert board.read(0).pid == 0
    finally:
        board.close()


@pytest.mark.parametrize("state", list(SlotState))
def test_every_state_round_trips(state: SlotState) -> None:
    board = Scoreboard(1)
    try:
        board.write(0, pid=1, slot=0, generation=0, state=state, started=0.0, heartbeat=0.0)
        assert board.read(0).state is state
        assert (board.free_index() == 0) is (state is SlotState.EMPTY)
    finally:
        board.close()


def _child_hammers(board: Scoreboard, index: int, writes: int) -> None:
    pid = os.getpid()
    for beat in range(writes):
        board.write(
            index,
            pid=pid,
            slot=1,
            generation=9,
            state=SlotState.READY,
            started=1.0,
            heartbeat=2.0 + beat,
            requests=beat + 1,
        )


@pytest.mark.e2e
def test_a_reader_never_sees_a_half_written_row() -> None:
    """The master reads rows while workers rewrite them, with no lock.

    A read may mix fields of two consecutive writes, but must never see a
    field that neither write had: a zero heartbeat would look like a loop
    stuck since boot (the master would SIGABRT a healthy worker) and a zero
    state would make a live worker's row look free.
    """
    board = Scoreboard(1)
    try:
        board.write(
            0, pid=1, slot=1, generation=9, state=SlotState.READY, started=1.0, heartbeat=1.0
        )
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child_hammers(board, 0, 300_000)
                code = 0
            finally:
                os._exit(code)
        torn: list[Row] = []
        reads = 0
        deadline = time.monotonic() + 20.0
        try:
            while time.monotonic() < deadline:
                row = board.read(0)
                reads += 1
                if row.state is not SlotState.READY or row.heartbeat == 0.0 or row.started == 0.0:
                    torn.append(row)
                if reads % 1000 == 0 and os.waitpid(pid, os.WNOHANG)[0]:
                    pid = 0
                    break
        finally:
            if pid:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        assert pid == 0, "the writer did not finish in time"
        assert not torn, f"{len(torn)} of {reads} reads saw a half-written row: {torn[0]}"
    finally:
        board.close()


def test_claim_takes_a_free_row_as_starting() -> None:
    board = Scoreboard(1)
    try:
        assert board.claim(slot=0, generation=1, now=5.0) == 0
        assert board.claim(slot=1, generation=2, now=6.0) == 1
        assert board.read(1) == Row(1, 0, 1, 2, SlotState.STARTING, 6.0, 6.0, 0, 0, 0, 0)
        assert board.claim(slot=2, generation=3, now=7.0) is None  # full: nothing written
        board.clear(0)
        assert board.claim(slot=2, generation=3, now=7.0) == 0
    finally:
        board.close()
