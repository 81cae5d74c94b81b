"""The master's signals: recorded from the first moment, dispatched by its loop.

Rules: a handler only appends the signal's number to a queue; Python writes
a byte to the wake-up pipe, which wakes the master's ``poll()``.  The
arbiter's loop takes the numbers out and calls ``handle_<name>()``.  Cheap
to import (``os``, ``signal``, ``collections``): ``reuseport serve``
installs the handlers before anything else runs.

Why so early.  A signal's default action ends the process, and the master
spends a while before its loop starts: importing the CLI, reading the
configuration, the kernel probe of ``--mode auto``, binding.  A ``SIGTERM``
in that window (a supervisor stopping a service it just started, a test)
used to kill the master silently with exit 143.  Installed first, a stop
signal is merely recorded: the arbiter sees it before it binds anything
and stops cleanly, logging why, with exit 0.  The queue is handed over to
the arbiter (``Arbiter(..., signals=queue)``), so no signal is lost between
the two.

After ``fork`` a child holds copies of the handlers and of the wake-up
pipe: ``forget_in_child`` puts the defaults back and closes the copies.
A worker is forked with the stop signals blocked (``blocked``), so none is
lost or fatal before its event loop handles them (see ``worker.py``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType

__all__ = [
    "MASTER_SIGNALS",
    "STOP_SIGNALS",
    "SignalQueue",
    "blocked",
    "install_early",
    "serving",
    "take_early",
]

MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})

_Handler = Callable[[int, FrameType | None], object] | int | None


class SignalQueue:
    """Handlers that record signals, a queue of them, and the wake-up pipe."""

    def __init__(self, signals: Sequence[int] = MASTER_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.pending: collections.deque[int] = collections.deque()
        self.wake_r = -1
        self.wake_w = -1
        self._previous: dict[int, _Handler] = {}
        self._previous_wakeup = -1

    @property
    def installed(self) -> bool:
        return self.wake_r >= 0

    def install(self) -> None:
        """Record every signal of ``signals`` from now on (again: nothing to do)."""
        if self.installed:
            return
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        pending = self.pending

        def record(signum: int, _frame: FrameType | None) -> None:
            pending.append(signum)

        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, record)

    def stop_requested(self) -> int | None:
        """The first stop signal (TERM, INT, QUIT) waiting in the queue, if any."""
        return next((sig for sig in self.pending if sig in STOP_SIGNALS), None)

    def clear_wakeups(self) -> None:
        """Empty the wake-up pipe (the signals themselves stay queued)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def restore(self) -> None:
        """Put back the handlers and wake-up fd found at ``install``; close the pipe."""
        if not self.installed:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup)
        self._close()

    def forget_in_child(self) -> None:
        """In a freshly forked child: default handlers, no wake-up fd, no copy of the pipe."""
        signal.set_wakeup_fd(-1)
        for sig in self.signals:
            signal.signal(sig, signal.SIG_DFL)
        self.pending.clear()
        self._previous.clear()
        self._close()

    def _close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1


@contextlib.contextmanager
def blocked(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Block ``signals`` in this thread for the ``with`` block; they wait, pending.

    Around ``fork``: a child inherits the mask, so a signal sent the moment
    it exists waits for it to unblock (Python would otherwise drop one its
    handler caught in the child before its after-fork cleanup).  The parent
    gets any that came meanwhile when the block ends.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


_early: SignalQueue | None = None


def serving(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (without the program name) runs ``reuseport serve``.

    Read before argparse (whose parser imports half the package): the
    command is the first word that is not an option.
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return command == "serve"


def install_early() -> SignalQueue:
    """The master's handlers, installed once per process, as early as possible."""
    global _early
    if _early is None:
        _early = SignalQueue()
        _early.install()
    return _early


def take_early() -> SignalQueue | None:
    """Hand the early queue over (to the arbiter, or to ``restore`` it); None if none."""
    global _early
    queue, _early = _early, None
    return queue
