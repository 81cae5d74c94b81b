"""``Listeners`` against the kernel: held sockets, the group order, drains, steering.

Rules: real sockets on 127.0.0.1 port 0, no processes.  This test process
plays the workers: it opens a slot's SO_REUSEPORT socket and hands the fd
over with ``slot_opened``, as a worker does over its channel.  Where a test
needs to know whether a steering program is attached, it asks the kernel:
detaching from a group with no program fails with ENOENT.  Failures of the
kernel are simulated by replacing ``attach_cbpf``/``detach`` in
``reuseport.listeners`` for one call.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from features import requires_cbpf, requires_cbpf_detach, requires_reuseport

import reuseport.listeners as listeners_mod
from reuseport.bpf import detach
from reuseport.config import Mode, parse_bind
from reuseport.listeners import Listeners
from reuseport.sockets import bind_reuseport

BACKLOG = 128
WAIT = 10.0


@contextlib.contextmanager
def held(mode: Mode, *, slots: int = 0, anchor: bool = False) -> Iterator[Listeners]:
    """Bound ``Listeners`` with ``slots`` slots opened in order (reuseport); closed on exit."""
    listeners = Listeners(mode, (parse_bind("127.0.0.1:0"),), BACKLOG)
    listeners.bind(anchor=anchor)
    try:
        for slot in range(anchor, anchor + slots):
            open_slot(listeners, slot)
        yield listeners
    finally:
        listeners.close()


def open_slot(listeners: Listeners, slot: int) -> None:
    """What a worker of a new slot does: listen, then hand the master its fd."""
    listeners.will_open(slot)
    sock = bind_reuseport(listeners.binds[0], BACKLOG)
    assert listeners.slot_opened(slot, [sock.detach()])


def connections_per_slot(listeners: Listeners, count: int) -> dict[int, int]:
    """Make ``count`` connections; accept each from whichever slot socket got it."""
    owner = {sock.fileno(): slot for slot in listeners.order for sock in listeners.for_slot(slot)}
    got = dict.fromkeys(listeners.order, 0)
    clients: list[socket.socket] = []
    with selectors.DefaultSelector() as sel:
        for slot in listeners.order:
            for sock in listeners.for_slot(slot):
                sel.register(sock, selectors.EVENT_READ)
        try:
            for _ in range(count):
                clients.append(socket.create_connection(("127.0.0.1", listeners.binds[0].port), 5))
            deadline = time.monotonic() + WAIT
            while sum(got.values()) < count:
                assert time.monotonic() < deadline, f"accepted {got} of {count}"
                for key, _ in sel.select(0.2):
                    server = key.fileobj
                    assert isinstance(server, socket.socket)
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = server.accept()
                        conn.close()
                        got[owner[server.fileno()]] += 1
        finally:
            for client in clients:
                client.close()
    return got


def program_attached(listeners: Listeners) -> bool:
    """Ask the kernel whether the group has a program, and leave none behind."""
    sock = listeners.for_slot(listeners.order[0])[0]
    try:
        detach(sock)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def failing(code: int) -> Callable[..., None]:
    def fail(*_args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


# ------------------------------------------------------------------ shared mode
def test_shared_mode_holds_one_socket_for_every_slot() -> None:
    with held(Mode.SHARED) as listeners:
        (sock,) = listeners.held()
        assert listeners.binds[0].port == sock.getsockname()[1] != 0
        assert listeners.for_slot(0) == listeners.for_slot(5) == [sock]
        assert not listeners.needs_socket(3)
        assert listeners.may_start(3)
        assert listeners.order == []
        assert listeners.queue_depth(0) is None  # one queue for all: not a slot's own
        assert not listeners.drainable(0)
        assert listeners.steered_away() == []
        client = socket.create_connection(("127.0.0.1", listeners.binds[0].port), 5)
        try:
            assert listeners.queued() == 1
        finally:
            client.close()
    assert sock.fileno() == -1


# ------------------------------------------------------------------ opening slots
@requires_reuseport
def test_reuseport_mode_reserves_the_port_and_holds_what_workers_open() -> None:
    with held(Mode.REUSEPORT) as listeners:
        assert listeners.binds[0].port != 0
        assert listeners.held() == []  # the reservation does not listen
        assert listeners.needs_socket(0)
        open_slot(listeners, 0)
        open_slot(listeners, 1)
        assert listeners.order == [0, 1]
        assert len(listeners.held()) == 2
        assert listeners.holds(1)
        assert not listeners.needs_socket(1)
        assert listeners.queue_depth(1) == (0, BACKLOG)
        assert sum(connections_per_slot(listeners, 20).values()) == 20


@requires_reuseport
def test_new_sockets_join_one_at_a_time() -> None:
    with held(Mode.REUSEPORT, slots=1) as listeners:
        assert listeners.may_start(1)
        listeners.will_open(1)
        assert not listeners.may_start(2), "a second socket may not join before the first"
        assert listeners.may_start(0), "a held slot needs no new socket"
        with pytest.raises(RuntimeError):
            listeners.will_open(2)
        assert not listeners.may_drain()
        listeners.opener_gone(1)  # its worker died before handing the socket over
        assert listeners.may_start(2)
        assert listeners.order == [0]


@requires_reuseport
def test_unexpected_sockets_are_closed_not_kept() -> None:
    with held(Mode.REUSEPORT, slots=1) as listeners:
        sock = bind_reuseport(listeners.binds[0], BACKLOG)
        fd = sock.detach()
        assert not listeners.slot_opened(4, [fd])
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
        assert listeners.order == [0]


@requires_reuseport
def test_a_slot_with_no_worker_is_taken_first() -> None:
    with held(Mode.REUSEPORT, slots=3) as listeners:
        assert listeners.next_slot(busy={0, 1, 2}) == 3
        assert listeners.next_slot(busy={0, 2}) == 1  # its socket may hold connections
        assert listeners.next_slot(busy=set()) == 0


@requires_reuseport
def test_the_ondemand_anchor_is_held_from_the_start_and_never_drained() -> None:
    with held(Mode.REUSEPORT, slots=1, anchor=True) as listeners:
        assert listeners.anchor == 0
        assert listeners.order == [0, 1]
        assert not listeners.drainable(0)
        assert listeners.drainable(1)


@requires_reuseport
def test_the_last_member_of_a_group_is_not_drainable() -> None:
    with held(Mode.REUSEPORT, slots=1) as listeners:
        assert not listeners.drainable(0)
        assert not listeners.drainable(7)  # not held at all


@requires_reuseport
def test_a_forked_worker_keeps_only_its_own_sockets() -> None:
    with held(Mode.REUSEPORT, slots=3) as listeners:
        mine = listeners.for_slot(1)
        others = listeners.for_slot(0) + listeners.for_slot(2)
        listeners.close_in_child(1)
        assert all(s.fileno() >= 0 for s in mine)
        assert all(s.fileno() == -1 for s in others)


# ------------------------------------------------------------------ draining
@requires_cbpf
def test_a_draining_slot_gets_no_new_connections_and_closes_on_release() -> None:
    with held(Mode.REUSEPORT, slots=3) as listeners:
        assert listeners.may_drain()
        listeners.begin_drain(1, allowed={0, 1, 2})
        assert listeners.draining == 1
        assert listeners.steered_away() == [1]
        assert not listeners.may_drain()
        assert not listeners.may_start(3), "no new socket joins while a slot drains"
        assert listeners.next_slot(busy={0, 2}) == 3
        got = connections_per_slot(listeners, 60)
        assert got[1] == 0, got
        assert min(got[0], got[2]) > 0, got
        (drained,) = listeners.for_slot(1)

        listeners.release(1)
        assert drained.fileno() == -1
        assert listeners.order == [0, 2]
        assert listeners.draining is None
        assert listeners.steered_away() == []
        assert listeners.may_start(3)
        got = connections_per_slot(listeners, 60)
        assert min(got[0], got[2]) > 0, got


@requires_cbpf
def test_a_drain_the_kernel_refuses_leaves_nothing_half_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with held(Mode.REUSEPORT, slots=2) as listeners:
        monkeypatch.setattr(listeners_mod, "attach_cbpf", failing(errno.ENOMEM))
        with pytest.raises(OSError, match="Cannot allocate memory"):
            listeners.begin_drain(1, allowed={0, 1})
        assert listeners.draining is None
        assert listeners.may_drain()
        assert listeners.steered_away() == []


@requires_cbpf
def test_steering_keeps_connections_from_excluded_slots() -> None:
    with held(Mode.REUSEPORT, slots=3) as listeners:
        listeners.apply_steering({0, 2})
        assert listeners.steered_away() == [1]
        got = connections_per_slot(listeners, 45)
        assert got[1] == 0, got
        listeners.apply_steering({0, 1, 2})
        assert listeners.steered_away() == []
        assert min(connections_per_slot(listeners, 60).values()) > 0


@requires_cbpf
def test_when_every_other_slot_is_held_back_the_drain_still_goes_somewhere() -> None:
    with held(Mode.REUSEPORT, slots=2) as listeners:
        listeners.apply_steering({1})  # slot 0 held back by load steering
        listeners.begin_drain(1, allowed={1})
        # Queueing somewhere beats refusing: slot 0 is allowed again.
        assert listeners.steered_away() == [1]
        assert connections_per_slot(listeners, 20) == {0: 20, 1: 0}


@requires_cbpf_detach
def test_release_detaches_when_the_new_program_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stale program would name sockets by their old places: hash rather than that."""
    with held(Mode.REUSEPORT, slots=4) as listeners:
        listeners.apply_steering({1, 2, 3})  # slot 0 held back
        listeners.begin_drain(1, allowed={1, 2, 3})
        # Closing slot 1 moves slot 3 into index 1; re-attaching must fail.
        monkeypatch.setattr(listeners_mod, "attach_cbpf", failing(errno.ENOMEM))
        with caplog.at_level(logging.WARNING, logger="reuseport.master"):
            listeners.release(1)
        assert listeners.order == [0, 3, 2]
        (record,) = caplog.records
        assert record.levelno == logging.WARNING
        assert "ENOMEM" in record.getMessage()
        assert "kernel's hash" in record.getMessage()
        assert listeners.steered_away() == []
        assert not program_attached(listeners), "the stale program is still attached"


@requires_cbpf_detach
def test_release_says_what_a_stale_program_means_when_even_detach_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with held(Mode.REUSEPORT, slots=3) as listeners:
        listeners.begin_drain(0, allowed={0, 1, 2})
        monkeypatch.setattr(listeners_mod, "attach_cbpf", failing(errno.ENOMEM))
        monkeypatch.setattr(listeners_mod, "detach", failing(errno.EPERM))
        with caplog.at_level(logging.WARNING, logger="reuseport.master"):
            listeners.release(0)
        levels = [r.levelno for r in caplog.records]
        assert levels == [logging.WARNING, logging.ERROR]
        error = caplog.records[1].getMessage()
        assert "ENOMEM" in error  # detach failed, then so did "allow every index"
        assert "may get no new connections" in error
        assert program_attached(listeners)  # the stale one (and detached by this check)
        monkeypatch.undo()
        # The next steering call puts things right.
        listeners.begin_drain(1, allowed={1, 2})
        assert connections_per_slot(listeners, 20) == {2: 20, 1: 0}
