"""A worker's life as the master sees it: one state, and the moves allowed between states.

Rules: pure (no ``os`` calls, no clock, no I/O).  Every state change the
master makes goes through ``WorkerHandle.to``, which looks the move up in
``TRANSITIONS``, the one table of allowed moves; a move not in it raises
``IllegalTransition``, which is a bug in the master, never a user error.
What a worker *says* (``listening``, ``ready``) may arrive in any state (a
worker told to stop can still finish booting), so the arbiter checks the
state before it moves on a message instead of trusting the worker.

The states, in the order a worker usually passes them::

    BOOTING    forked; has not reported its listening sockets yet (in reuseport
               mode a worker of a new slot opens them itself)
    STARTING   has its sockets; importing the app, running its startup
    READY      serving; counts toward the pool
    REPLACING  serving while its successor boots (rolling reload, recycle);
               no longer counts toward the pool, but keeps serving if the
               successor fails
    DRAINING   steered out of its SO_REUSEPORT group; accepts what is still
               queued for it, then exits (scale-down in reuseport mode)
    STOPPING   asked to stop (SIGTERM): finishes in-flight requests and exits
    ABORTING   sent SIGABRT or SIGKILL; the reaper will see it go

Why a worker left is an ``ExitCause``, decided from the cause the master
recorded when it asked the worker to go (``exit_cause``), or, if it did not
ask, from whether the worker ever became ready (``BOOT`` before, ``CRASH``
after).  Why it was started is a ``SpawnCause``.  Both feed the master's
event counters (``status.py``).

``BootFailures`` keeps the master's report of workers that cannot boot to
one line per distinct failure, however many workers hit it.
"""

from __future__ import annotations

import enum
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ExitCode

__all__ = [
    "BUSY_WINDOW",
    "LIVE",
    "SERVING",
    "TRANSITIONS",
    "ExitCause",
    "IllegalTransition",
    "SpawnCause",
    "WorkerHandle",
    "WorkerState",
]


class WorkerState(enum.Enum):
    BOOTING = "booting"
    STARTING = "starting"
    READY = "ready"
    REPLACING = "replacing"
    DRAINING = "draining"
    STOPPING = "stopping"
    ABORTING = "aborting"


class SpawnCause(enum.Enum):
    START = "start"  # the initial pool
    RESPAWN = "respawn"  # in place of a worker that died unasked
    RELOAD = "reload"  # rolling reload (SIGHUP)
    RECYCLE = "recycle"  # --max-requests reached
    SCALE = "scale"  # SIGTTIN, or the dynamic/ondemand pool growing


class ExitCause(enum.Enum):
    CRASH = "crash"  # died unasked after it was ready (a signal we did not send, an exit)
    HEARTBEAT = "heartbeat"  # aborted by the master: its event loop stood still
    RECYCLE = "recycle"  # stopped once its --max-requests successor was ready
    RELOAD = "reload"  # stopped once its reloaded successor was ready
    SCALE = "scale"  # retired: SIGTTOU, or the pool shrinking
    STOP = "stop"  # the master is stopping
    BOOT = "boot"  # died before it was ready


_S = WorkerState
TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = {
    _S.BOOTING: frozenset({_S.STARTING, _S.STOPPING, _S.ABORTING}),
    _S.STARTING: frozenset({_S.READY, _S.STOPPING, _S.ABORTING}),
    _S.READY: frozenset({_S.REPLACING, _S.DRAINING, _S.STOPPING, _S.ABORTING}),
    # Back to READY when the successor fails; STOPPING once it is ready.
    _S.REPLACING: frozenset({_S.READY, _S.STOPPING, _S.ABORTING}),
    # A draining worker is already leaving: only a kill comes after it.
    _S.DRAINING: frozenset({_S.ABORTING}),
    _S.STOPPING: frozenset({_S.ABORTING}),
    _S.ABORTING: frozenset(),
}
LIVE = frozenset({_S.BOOTING, _S.STARTING, _S.READY})  # count toward the pool
SERVING = frozenset({_S.READY, _S.REPLACING})  # accept connections and are not leaving
_LEAVING = frozenset({_S.DRAINING, _S.STOPPING, _S.ABORTING})

# A worker that exits with one of these before it is ready cannot boot: the
# master halts instead of respawning it in a loop.
_BOOT_EXIT_CODES = frozenset(
    {
        ExitCode.APP_LOAD_ERROR,
        ExitCode.BOOT_ERROR,
        ExitCode.BIND_ERROR,
        ExitCode.PLATFORM_ERROR,
        ExitCode.USAGE,
    }
)
# A worker beats at least every 0.25 s (worker.py): seen busy within this
# window means busy now.
BUSY_WINDOW = 1.0


class IllegalTransition(RuntimeError):
    """The master tried a move that ``TRANSITIONS`` does not allow: a bug."""


@dataclass(slots=True, eq=False)
class WorkerHandle:
    """The master's record of one worker process."""

    pid: int
    slot: int
    generation: int
    row: int  # scoreboard row
    channel: socket.socket  # the master's end of the worker's channel
    started: float
    cause: SpawnCause
    opens_socket: bool = False  # a new reuseport slot: the worker opens its sockets
    lane: int = 0  # its cells in the slot's row of the load board (0 or 1)
    replaces: int | None = None  # pid of the worker it replaces, until it is ready
    state: WorkerState = WorkerState.BOOTING
    exit_cause: ExitCause | None = None  # why the master asked it to go; None: unasked
    ready_since: float | None = None  # when it reported ready; None: never
    # Leaving: SIGKILL it if it has not exited by then (again, when ABORTING).
    stop_deadline: float | None = None
    boot_error: tuple[int, str] | None = None  # (exit code, message) it reported
    interface: str = ""
    # Busy/idle bookkeeping for the pool (see policy.py): requests seen at the
    # last look, when it was last seen busy, and whether it ever was.
    last_requests: int = 0
    last_busy: float = 0.0
    seen_busy: bool = False

    def to(self, state: WorkerState) -> None:
        """Move to ``state``; raises ``IllegalTransition`` if the table forbids it."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"worker {self.slot} (pid {self.pid}): {self.state.name} -> {state.name} "
                "is not an allowed transition"
            )
        self.state = state

    def leave(self, state: WorkerState, cause: ExitCause, *, deadline: float) -> None:
        """The master asks it to go (``DRAINING``, ``STOPPING`` or ``ABORTING``).

        The first cause is kept: a worker stopped for a reload that is then
        killed at the graceful deadline still left because of the reload.
        """
        if state not in _LEAVING:
            raise IllegalTransition(f"{state.name} is not a way to leave")
        self.to(state)
        if self.exit_cause is None:
            self.exit_cause = cause
        self.stop_deadline = deadline

    @property
    def live(self) -> bool:
        """Counts toward the pool: neither leaving nor being replaced."""
        return self.state in LIVE

    @property
    def serving(self) -> bool:
        return self.state in SERVING

    @property
    def leaving(self) -> bool:
        return self.state in _LEAVING

    def saw(self, requests: int, in_flight: int, now: float) -> None:
        """Its scoreboard row at ``now``: busy if a request is in flight or one finished."""
        if in_flight > 0 or requests != self.last_requests:
            self.last_busy = now
            self.seen_busy = True
        self.last_requests = requests

    def busy(self, now: float) -> bool:
        return self.seen_busy and now - self.last_busy < BUSY_WINDOW

    def describe_exit(self, code: int) -> str:
        """``code`` as ``os.waitstatus_to_exitcode`` gives it, in words for the log."""
        if code >= 0:
            return f"exited with code {code}"
        how = f"was killed by {signal.Signals(-code).name}"
        if -code == signal.SIGKILL and self.exit_cause is None:
            how += " (perhaps out of memory?)"  # nobody here sent it
        return how

    def failed_to_boot(self, code: int) -> bool:
        """It died before it was ready, saying it cannot boot (a respawn would fail too)."""
        return self.ready_since is None and (
            self.boot_error is not None or code in _BOOT_EXIT_CODES
        )

    def why_gone(self) -> ExitCause:
        """Why it exited, once reaped."""
        if self.exit_cause is not None:
            return self.exit_cause
        return ExitCause.CRASH if self.ready_since is not None else ExitCause.BOOT


def failure_key(code: int, message: str) -> tuple[int, str]:
    """What makes two boot failures "the same": the exit code and the message's last line.

    The last line of a traceback is the exception; earlier lines may differ
    by worker (a pid, a slot) without the cause differing.
    """
    lines = [line for line in message.splitlines() if line.strip()]
    return code, lines[-1].strip() if lines else ""


class BootFailures:
    """While the master halts for a boot error: one report per failure, however many workers.

    The first failure is shown (``halt``); the same failure again, from
    another worker, is only counted (``same``) and summed up once at the end
    (``summary``); a different one is shown too (``seen`` returns False).
    """

    def __init__(self) -> None:
        self.first: tuple[int, str] | None = None
        self.same = 0

    @property
    def halting(self) -> bool:
        return self.first is not None

    def halt(self, code: int, message: str) -> None:
        self.first = failure_key(code, message)

    def seen(self, code: int, message: str) -> bool:
        """Another worker failed to boot: True (and counted) if the same way as the first."""
        if failure_key(code, message) == self.first:
            self.same += 1
            return True
        return False

    def summary(self) -> str | None:
        """The line for the failures counted and not shown, or None if there were none."""
        if not self.same:
            return None
        workers = "worker" if self.same == 1 else "workers"
        return f"{self.same} more {workers} failed the same way (not shown again)"
