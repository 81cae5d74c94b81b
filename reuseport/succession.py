"""SIGUSR2 as the master lives it: starting a new master, handing over, or taking over.

Rules: ``upgrade.py`` has the sequence and the records (``Handover``, the old
master's ``Attempt``, the new master's ``Inheritance``); this module carries
them out and keeps the state of the one upgrade under way.  The arbiter
stays the only module that forks, reaps and calls ``kill``: it hands this
class a ``kill`` function, reaps the new master with its workers and says
how it exited (``exited``).  The new master is started with
``posix_spawn``, never ``fork``: it is a fresh interpreter from the same
command line.

What ``Succession`` needs from the master: the listeners (the holdings to
hand over, taken back on failure), the operations endpoints (the control
and metrics sockets, systemd), the pid file, the clock (each call takes
``now``) and, on the new master's side, which slots its workers serve.
What it tells the master, as an ``Outcome``: ``HAND_OVER`` (the new master
is ready: stop every worker, then exit) and ``RESUME`` (the new master died
after the hand-over began: serve again); an upgrade that fails or is
cancelled earlier just ends (``upgrading`` turns false and the pool, frozen
meanwhile, runs again).  Keeping the pool frozen is the master's part: a
new slot or a drain would change the group order the new master was given.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
from collections.abc import Callable, Set

from . import upgrade
from .config import Config
from .errors import BootError, errno_name
from .listeners import Listeners
from .operations import Operations
from .pidfile import PidFile

__all__ = ["Outcome", "Succession"]

log = logging.getLogger("reuseport.master")

# A new master told to stop after --upgrade-timeout gets --graceful-timeout
# and this much more before SIGKILL: what the arbiter gives a stopping worker.
STOP_GRACE = 5.0
KILL_AGAIN_AFTER = 2.0  # SIGKILL again if it is still there after that long


class Outcome(enum.Enum):
    """What the master must do after a succession event."""

    HAND_OVER = "hand over"  # the new master is ready: stop every worker, then exit
    RESUME = "resume"  # the new master died after our hand-over began: serve again


class Succession:
    """Both sides of SIGUSR2: this master's upgrade (``attempt``), its take-over (``inheritance``).

    ``inheritance`` is set when this master was started by another one's
    SIGUSR2 (``handover``); once it is complete, this master may be upgraded
    in turn.
    """

    def __init__(
        self,
        config: Config,
        pid: int,
        listeners: Listeners,
        operations: Operations,
        pidfile: PidFile,
        *,
        kill: Callable[[int, int], None],
        handover: upgrade.Handover | None = None,
    ) -> None:
        self.config = config
        self.pid = pid
        self.listeners = listeners
        self.operations = operations
        self.pidfile = pidfile
        self._kill = kill  # (pid, signal); the arbiter's, which ignores a pid that is gone
        self.attempt: upgrade.Attempt | None = None  # our own SIGUSR2, under way
        self.inheritance = upgrade.Inheritance(handover) if handover is not None else None

    # ------------------------------------------------------------------ what the master asks
    @property
    def upgrading(self) -> bool:
        """An upgrade of this master is under way: its pool and steering stay frozen."""
        return self.attempt is not None

    @property
    def new_master(self) -> int | None:
        """The pid of the new master this one started, if it runs."""
        return self.attempt.pid if self.attempt is not None else None

    @property
    def starting(self) -> bool:
        """The new master runs and is not ready yet (systemd hears "reloading")."""
        return self.attempt is not None and self.attempt.phase is upgrade.Phase.STARTED

    @property
    def handing_over(self) -> bool:
        return self.attempt is not None and self.attempt.phase is upgrade.Phase.HANDING_OVER

    @property
    def taking_over(self) -> bool:
        """This master was started by SIGUSR2 and the old one has not exited yet."""
        return self.inheritance is not None and not self.inheritance.complete

    @property
    def handover(self) -> upgrade.Handover | None:
        """What this master inherited from the old one, if it was started by SIGUSR2."""
        return self.inheritance.handover if self.inheritance is not None else None

    def status_note(self) -> str | None:
        """For systemd's STATUS line."""
        if self.new_master is not None:
            return f"upgrading: new master pid {self.new_master}"
        return None

    def pollables(self) -> dict[int, int]:
        """The new master's ready pipe while it runs (fd -> events)."""
        if self.attempt is not None and self.attempt.ready_fd >= 0:
            return {self.attempt.ready_fd: select.POLLIN}
        return {}

    # ------------------------------------------------------------------ the old master's side
    def request(self, now: float, *, stopping: bool) -> None:
        """SIGUSR2: begin an upgrade, or say why not."""
        if stopping:
            log.warning("SIGUSR2 ignored: the server is stopping")
            return
        if self.inheritance is not None and not self.inheritance.complete:
            log.warning(
                "SIGUSR2 ignored: this master is still taking over from pid %d; try again once "
                "it has exited",
                self.inheritance.master,
            )
            return
        if self.attempt is not None:
            log.warning(
                "SIGUSR2 ignored: an upgrade is under way (new master pid %s)", self.attempt.pid
            )
            return
        self.attempt = upgrade.Attempt(requested=now)
        log.info(
            "SIGUSR2: upgrading the master: starting a new one from the same command line, "
            "handing it every listening socket"
        )

    def tend(self, now: float) -> None:
        """While an upgrade runs: start the new master once the groups are stable, time it out."""
        attempt = self.attempt
        assert attempt is not None
        if attempt.phase is upgrade.Phase.WANTED:
            if self.listeners.stable:
                self._start_new_master(now)
            elif not attempt.waited:
                attempt.waited = True
                log.info("SIGUSR2: waiting for a slot to finish draining or opening its socket")
            return
        if attempt.phase is not upgrade.Phase.STARTED or attempt.pid is None:
            return
        if attempt.kill_at is None and now >= attempt.deadline:
            log.error(
                "Upgrade failed: the new master (pid %d) was not ready within "
                "--upgrade-timeout %.0fs; stopping it. This master keeps serving.",
                attempt.pid,
                self.config.upgrade_timeout,
            )
            attempt.kill_at = now + self.config.graceful_timeout + STOP_GRACE
            self._signal_new_master(signal.SIGTERM)
        elif attempt.kill_at is not None and now >= attempt.kill_at:
            self._signal_new_master(signal.SIGKILL)
            attempt.kill_at = now + KILL_AGAIN_AFTER

    def _signal_new_master(self, sig: int) -> None:
        if self.attempt is not None and self.attempt.pid is not None:
            self._kill(self.attempt.pid, sig)

    def _start_new_master(self, now: float) -> None:
        attempt = self.attempt
        assert attempt is not None
        try:
            holdings = self.listeners.holdings()
        except RuntimeError as exc:
            log.error("SIGUSR2 ignored: cannot hand the sockets over (%s)", exc)
            self.attempt = None
            return
        control, metrics_fd = self.operations.handed_over()
        read_fd, write_fd = os.pipe()
        handover = upgrade.Handover(
            master=self.pid,
            ready_fd=write_fd,
            holdings=holdings,
            control=control,
            metrics_fd=metrics_fd,
            configured=tuple(str(b) for b in self.config.binds),
        )
        argv = upgrade.command()
        env = upgrade.environment(
            os.environ, handover, self.operations.notifier.child_environment()
        )
        fds = handover.fds()
        self.listeners.lend()
        try:
            for fd in fds:
                os.set_inheritable(fd, True)
            with upgrade.in_launch_dir():  # (--chdir: relative paths as at the start)
                pid = os.posix_spawn(argv[0], argv, env)
        except OSError as exc:
            log.error(
                "SIGUSR2: cannot start a new master (%s: %s); this master keeps serving",
                argv[0],
                exc,
            )
            os.close(read_fd)
            self.attempt = None
            self.listeners.retake()
            return
        finally:
            for fd in fds:
                if fd != write_fd:
                    with contextlib.suppress(OSError):
                        os.set_inheritable(fd, False)
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        os.set_inheritable(read_fd, False)
        attempt.started(
            pid, read_fd, deadline=now + self.config.upgrade_timeout, control=control is not None
        )
        log.info(
            "SIGUSR2: started the new master, pid %d (%d descriptor(s) handed over); it must "
            "be ready within %.0fs",
            pid,
            len(fds) - 1,
            self.config.upgrade_timeout,
        )

    def on_pipe(self) -> Outcome | None:
        """The new master's pipe is readable: ``HAND_OVER`` once it said "ready"."""
        attempt = self.attempt
        assert attempt is not None
        said_ready, _closed = attempt.read()
        if not (said_ready and attempt.phase is upgrade.Phase.STARTED and not attempt.cancelled):
            return None
        assert attempt.pid is not None
        # Stop answering and leave the socket files: they are the new master's.
        attempt.phase = upgrade.Phase.HANDING_OVER
        self.operations.notifier.send(
            f"MAINPID={attempt.pid}\nREADY=1\nSTATUS=handed over to the new master, pid "
            f"{attempt.pid}"
        )
        self.operations.stop_answering(control_handed=attempt.control_handed)
        self.listeners.keep_files()
        return Outcome.HAND_OVER

    def exited(self, how: str) -> Outcome | None:
        """The new master was reaped (``how``: its exit status in words); the upgrade is over."""
        attempt = self.attempt
        assert attempt is not None
        self.attempt = None
        attempt.close()
        if attempt.cancelled:
            log.info("The new master (pid %s) %s", attempt.pid, how)
            return None
        outcome = None
        if attempt.phase is upgrade.Phase.HANDING_OVER:
            log.error(
                "The new master (pid %s) %s after it took over; this master (pid %d) keeps "
                "its sockets and starts workers again",
                attempt.pid,
                how,
                self.pid,
            )
            outcome = Outcome.RESUME
            self.operations.answer_again(control_handed=attempt.control_handed)
            self.operations.notifier.send(f"MAINPID={self.pid}")
            self._write_pidfile()
        else:
            log.error(
                "Upgrade failed: the new master (pid %s) %s before it was ready (its output "
                "above says why); this master (pid %d) keeps serving",
                attempt.pid,
                how,
                self.pid,
            )
        self.listeners.retake()
        return outcome

    def cancel(self, why: str) -> None:
        """This master stops (``why``): a new master that has not taken over stops too."""
        attempt = self.attempt
        if attempt is None or attempt.phase is upgrade.Phase.HANDING_OVER:
            return
        if attempt.pid is None:
            self.attempt = None
            return
        log.info("%s: stopping the new master (pid %d) too", why, attempt.pid)
        attempt.cancelled = True
        self._signal_new_master(signal.SIGTERM)

    # ------------------------------------------------------------------ the new master's side
    def adopt(self, pool_limit: int) -> int:
        """Take the old master's sockets; return how many worker slots it had."""
        handover = self.handover
        assert handover is not None
        slots = len(handover.holdings.slots)
        if slots > pool_limit:
            for fd in handover.fds():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise BootError(
                f"the running master has {slots} worker slots and --max-workers allows "
                f"{pool_limit}; raise --max-workers, or restart the server"
            )
        self.listeners.adopt(handover.holdings)
        log.info(
            "Took over %d listening socket(s) from the master with pid %d (SIGUSR2)",
            len(handover.holdings.fds()),
            handover.master,
        )
        return slots

    def tend_inheritance(self, *, ready: bool, serving: Callable[[], Set[int]]) -> None:
        """Tell the old master once every adopted slot is served; take over once it is gone.

        ``ready``: the pool has announced it is ready; ``serving()``: the
        slots a ready worker of ours serves.
        """
        inheritance = self.inheritance
        assert inheritance is not None
        if not inheritance.told and ready and self._adopted_served(serving()):
            self._write_pidfile()
            try:
                inheritance.tell_ready()
            except OSError as exc:
                log.warning("could not tell the old master we are ready (%s)", errno_name(exc))
            else:
                log.info(
                    "Every worker is ready: told the old master (pid %d) to hand over",
                    inheritance.master,
                )
        if inheritance.parent_gone():
            if not inheritance.told:
                inheritance.close_pipe()
                self._write_pidfile()
            inheritance.complete = True
            self.listeners.own_files()
            if inheritance.handover.control is not None:
                self.operations.own_control()
            log.info(
                "Upgrade complete: the old master (pid %d) has exited; this master (pid %d) "
                "serves on",
                inheritance.master,
                self.pid,
            )

    def _adopted_served(self, serving: Set[int]) -> bool:
        """Every slot taken over from the old master has a serving worker of ours."""
        assert self.inheritance is not None
        adopted = range(len(self.inheritance.handover.holdings.slots))
        return all(slot in serving for slot in adopted if self.listeners.holds(slot))

    def _write_pidfile(self) -> None:
        try:
            self.pidfile.write()
        except BootError as exc:
            log.error("%s", exc)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """At exit, or in a freshly forked worker: close the pipes to the other master."""
        if self.attempt is not None:
            self.attempt.close()
        if self.inheritance is not None:
            self.inheritance.close_pipe()
