"""Signals recorded from the first moment (``signals.py``), and a worker's boot report.

In process: the handlers go into the test process for the length of a test
and are put back after it (``restore``); a signal is sent to ourselves.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest

from reuseport import signals
from reuseport import worker as worker_mod
from reuseport.config import Config, Mode
from reuseport.scoreboard import Scoreboard
from reuseport.signals import SignalQueue


@pytest.fixture
def queue() -> Iterator[SignalQueue]:
    before = signal.getsignal(signal.SIGTERM)
    queue = SignalQueue((signal.SIGTERM, signal.SIGUSR1))
    queue.install()
    yield queue
    queue.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_recorded_signal_waits_in_the_queue_and_wakes_the_pipe(queue: SignalQueue) -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert list(queue.pending) == [signal.SIGUSR1, signal.SIGTERM]
    assert queue.stop_requested() == signal.SIGTERM
    assert os.read(queue.wake_r, 16)  # Python wrote the signal numbers
    queue.clear_wakeups()
    with pytest.raises(BlockingIOError):
        os.read(queue.wake_r, 16)


def test_install_twice_keeps_one_pipe(queue: SignalQueue) -> None:
    fds = (queue.wake_r, queue.wake_w)
    queue.install()
    assert (queue.wake_r, queue.wake_w) == fds


def test_restore_puts_the_previous_wakeup_fd_back() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    try:
        queue = SignalQueue((signal.SIGUSR1,))
        queue.install()
        assert signal.set_wakeup_fd(queue.wake_w) == queue.wake_w
        queue.restore()
        assert signal.set_wakeup_fd(w) == w
        assert queue.wake_r == queue.wake_w == -1
    finally:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)


def test_forget_in_child_puts_the_defaults_back() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    queue = SignalQueue((signal.SIGUSR2,))
    queue.install()
    try:
        queue.pending.append(signal.SIGTERM)  # the parent's, not the child's
        queue.forget_in_child()
        assert not queue.pending
        assert not queue.installed
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_blocked_signals_wait_and_arrive_when_the_block_ends(queue: SignalQueue) -> None:
    # The mask is this thread's: a signal sent to the process could go to
    # another thread of the test run, so this one is sent to this thread.
    with signals.blocked((signal.SIGUSR1,)):
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        assert signal.SIGUSR1 in signal.sigpending()
        assert not queue.pending
    assert list(queue.pending) == [signal.SIGUSR1]
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize(
    ("argv", "serving"),
    [
        (["serve", "web:app"], True),
        (["serve"], True),
        (["probe", "--json"], False),
        (["--version"], False),
        ([], False),
        (["bench", "serve"], False),
    ],
)
def test_serving_reads_the_command_before_argparse(argv: list[str], serving: bool) -> None:
    assert signals.serving(argv) is serving


def test_main_puts_the_handlers_back_when_serve_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from reuseport.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["serve", "--workers", "0"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before
    assert signals.take_early() is None
    assert "invalid --workers 0" in capsys.readouterr().err


def _worker(channel: socket.socket) -> worker_mod._Worker:
    spec = worker_mod.WorkerSpec(
        slot=3,
        generation=1,
        row=0,
        mode=Mode.SHARED,
        config=Config(),
        binds=(),
        listen_fds=(),
        channel=channel,
        scoreboard=Scoreboard(1),
        master_pid=os.getppid(),
    )
    return worker_mod._Worker(spec)


def test_a_boot_error_goes_to_the_master_and_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with master, child:
        master.setblocking(False)
        with caplog.at_level(logging.DEBUG, logger="reuseport.worker"):
            assert _worker(child)._boot_failed(5, "Traceback ...\nRuntimeError: boom") == 5
        [(message, fds)] = list(worker_mod.recv_messages(master))
    assert message == {
        "type": "boot_error",
        "code": 5,
        "message": "Traceback ...\nRuntimeError: boom",
    }
    assert fds == []
    assert not caplog.records


def test_a_boot_error_with_no_master_to_hear_it_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master.close()  # the master is gone
    with child, caplog.at_level(logging.ERROR, logger="reuseport.worker"):
        assert _worker(child)._boot_failed(5, "RuntimeError: boom") == 5
    assert [r.getMessage() for r in caplog.records] == [
        "Worker 3 could not boot: RuntimeError: boom"
    ]


def test_a_huge_boot_error_fits_one_datagram() -> None:
    text = "x" * 50_000 + "\nRuntimeError: the end"
    fitted = worker_mod._fit_message(text)
    assert len(fitted) < 11_000
    assert fitted.startswith("x" * 100)
    assert fitted.endswith("\nRuntimeError: the end")
    assert "characters cut" in fitted
    assert worker_mod._fit_message("short") == "short"
