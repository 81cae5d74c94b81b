"""The master: forks workers, reaps them, dispatches signals, and runs the pool.

Rules (they keep a prefork master sane):
- no event loop and no thread, ever: the master sleeps in ``poll()`` on the
  signal wake-up pipe, the workers' channels and the control socket, with a
  short tick;
- signal handlers only append to a queue; the main loop dispatches each
  signal to ``handle_<name>()``;
- this is the only module that calls ``fork``, ``waitpid`` and ``kill``;
- what is decided elsewhere is only carried out here: pool sizes and crash
  backoff (``policy.py``), who may receive new connections (``steering.py``),
  the listening sockets and the group order (``listeners.py``), a worker's
  allowed moves (``lifecycle.py``), the status record (``status.py``).

A worker's path: ``_spawn`` forks it (BOOTING); its ``listening`` message
hands over new sockets (STARTING); ``ready`` makes it READY (and, for a reload
or recycle, stops the worker it replaces).  It leaves by ``_retire`` (drain or
stop), ``_stop`` (replaced, or the master stops) or ``_abort`` (stuck loop,
graceful timeout), or dies unasked; ``_reap`` collects it and ``_on_exit``
decides what follows.  Every step bumps the event counters in ``status``.

One child is not a worker: with ``--reload``, a file watcher
(``reloader.py``), forked first of all so it holds no socket, whose lines on
a pipe mean "reload" (``_on_watcher``).  SIGUSR1 reopens the log files here
(``logs.reopen``) and is relayed to every worker, which does the same.

Operations, with small hooks here: the control socket, the ``--metrics``
server and systemd's notify protocol (``operations.py``, polled beside the
channels; a reaped worker's last counts are folded into ``Lifetime``), and
SIGUSR2, the upgrade of the master itself (``succession.py``, which starts
the new master and holds the upgrade's state).  While an upgrade runs this
module freezes the pool (``_respawn_held``), reaps the new master with the
workers, and stops when told to hand over.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import select
import signal
import socket
import time
import traceback
from typing import Any

import setproctitle

from . import logs, reloader, sdnotify, upgrade
from . import succession as succession_mod
from . import worker as worker_mod
from .config import Config, Mode, ProcessManager, cpu_for_slot
from .connections import StopReason
from .errors import ExitCode, errno_name
from .lifecycle import BootFailures, ExitCause, SpawnCause, WorkerHandle, WorkerState
from .listeners import Listeners
from .metrics import Lifetime, Readiness
from .operations import Operations
from .pidfile import PidFile
from .policy import CrashBackoff, PoolPolicy, PoolView, Replacements, Resize
from .scoreboard import Scoreboard
from .signals import SignalQueue, blocked
from .status import (
    MasterEvents,
    MasterStatus,
    PoolStatus,
    Status,
    Totals,
    WorkerStatus,
)
from .traffic import TICK, Traffic

__all__ = ["Arbiter"]

# What a worker stopped for a cause tells its clients (WebSocket close codes).
_STOP_REASONS = {
    ExitCause.RELOAD: StopReason.RELOAD,
    ExitCause.RECYCLE: StopReason.RECYCLE,
    ExitCause.SCALE: StopReason.SCALE_DOWN,
}


log = logging.getLogger("reuseport.master")

_TICK = 0.5
_KILL_AFTER_ABORT = 2.0
_STOP_GRACE = 5.0  # on top of --graceful-timeout before a stopping worker is killed
# A worker that never became ready serves nothing: stopped, it gets this
# long (to cancel its boot, see worker.py) before it is killed, not the
# whole --graceful-timeout.
_BOOT_STOP_GRACE = 3.0


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"


class Arbiter:
    """The master process: ``Arbiter(config, mode, why).run()`` returns its exit code."""

    def __init__(
        self,
        config: Config,
        mode: Mode,
        mode_reason: str,
        *,
        handover: upgrade.Handover | None = None,
        signals: SignalQueue | None = None,
    ) -> None:
        """``handover``: this master takes over from another one (SIGUSR2).

        ``signals``: the queue the CLI installed first thing (else one is made
        in ``run``).
        """
        if mode is Mode.AUTO:
            raise ValueError("the arbiter needs a resolved mode")
        self.config = config
        self.mode = mode
        self.mode_reason = mode_reason
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.listeners = Listeners(mode, config.binds, config.backlog, uds_mode=config.uds_mode)
        self.workers: dict[int, WorkerHandle] = {}  # by pid
        self.policy = PoolPolicy(config)
        self.backoff = CrashBackoff()
        self.generation = 0
        self.replacements = Replacements()
        # Workers that reached --max-requests: they take no new requests
        # (paused, keep-alive off) until their replacement is ready, so
        # steering keeps new connections away from their slots.
        self.at_limit: set[int] = set()  # pids
        self.traffic = Traffic(config, mode, self.listeners)
        self.events = MasterEvents(initial=config.initial_workers)
        self._sigq = signals if signals is not None else SignalQueue()
        self.signals: collections.deque[int] = self._sigq.pending  # filled by handlers
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int = ExitCode.OK
        # Halting for a boot error: the one shown, and the others counted.
        self.boot_failures = BootFailures()
        self.announced_ready = False
        self.announced_listening = False
        self.scoreboard: Scoreboard | None = None
        self.pidfile = PidFile(config.pid_file, self.pid)
        self.uid, self.gid = worker_mod.resolve_user(config.user, config.group)
        self.watcher: reloader.Watcher | None = None
        # Operations: control, metrics, systemd; SIGUSR2.
        self.lifetime = Lifetime()  # what reaped workers counted
        self.operations = Operations(
            config,
            self.pid,
            self.listeners,
            status=self.status,
            readiness=lambda: Readiness(ready=self.announced_ready, stopping=self.stopping),
            lifetime=self.lifetime,
        )
        self.succession = succession_mod.Succession(
            config,
            self.pid,
            self.listeners,
            self.operations,
            self.pidfile,
            kill=self._signal_pid,
            handover=handover,
        )

    # ------------------------------------------------------------------ main
    def run(self) -> int:
        """Serve until stopped; returns the master's exit code."""
        self._sigq.install()  # done already when the CLI made the queue
        early = self._sigq.stop_requested()
        if early is not None:
            # Nothing bound, nothing forked: nothing to wind down.
            log.info(
                "%s while starting: stopped before binding anything or starting a worker",
                signal.Signals(early).name,
            )
            self._sigq.restore()
            return ExitCode.OK
        name = self.config.proc_name or self.config.app_label
        setproctitle.setproctitle(f"reuseport: master [{name}]")
        if self.config.reload:
            self._start_watcher()  # first: it must inherit no socket
        try:
            if self.succession.handover is not None:
                self._adopt()
            else:
                self.listeners.bind(anchor=self.config.pm is ProcessManager.ONDEMAND)
            for line in self._bind_lines():
                log.info("Bound %s", line)
            log.info("Mode %s: %s", self.mode.value, self.mode_reason)
            if self.config.cpu_affinity:
                self._log_cpu_affinity()
            if self.config.capture_output and self.config.error_logfile is not None:
                # After binding: an error before this still reaches the terminal.
                log.info("stdout and stderr go to %s (--capture-output)", self.config.error_logfile)
                logs.capture_output(self.config.error_logfile)
            if self.config.proxy_protocol:
                log.info(
                    "PROXY protocol: every connection must start with a PROXY header "
                    "from %s (--forwarded-allow-ips)%s",
                    ", ".join(self.config.forwarded_allow_ips),
                    "; the TLS handshake follows it" if self.config.tls else "",
                )
            if self.succession.handover is None:
                self.pidfile.write()  # an upgrade's new master writes it once it is ready
            self.operations.open(self.succession.handover)
            self.scoreboard = Scoreboard(self.config.pool_limit)
            if self.mode is Mode.REUSEPORT:
                self.traffic.setup(self.scoreboard.size)
            if self.config.pm is ProcessManager.ONDEMAND:
                # Connections wait in the queue until the worker they start is ready.
                self._announce_listening()
                log.info(
                    "Ready: 0 workers (ondemand pool: the first connection starts one, "
                    "up to %d) (%s mode)",
                    self.config.pool_limit,
                    self.mode.value,
                )
                self.announced_ready = True
            self._loop()
            summary = self.boot_failures.summary()
            if summary is not None:
                log.error("%s", summary)
        finally:
            self._stop_watcher()
            self._terminate_all(signal.SIGKILL)
            self._reap_blocking()
            self.operations.close()
            self.succession.close()
            self.listeners.close()
            self.pidfile.remove()
            self._sigq.restore()
        return self.exit_code

    def _bind_lines(self) -> list[str]:
        return self.listeners.describe("https" if self.config.tls else "http")

    def _announce_listening(self) -> None:
        """ "Listening at": once, when the first worker is ready (ondemand: at start).

        Not at bind time: until a worker has imported the app and run its
        startup, nothing serves (the "Bound" lines say what was bound).
        """
        if self.announced_listening:
            return
        self.announced_listening = True
        for line in self._bind_lines():
            log.info("Listening at %s", line)

    def _loop(self) -> None:
        poller = select.poll()
        wake_r = self._sigq.wake_r
        poller.register(wake_r, select.POLLIN)
        if self.watcher is not None:
            poller.register(self.watcher.fd, select.POLLIN)
        registered: dict[int, WorkerHandle] = {}
        watched_listeners: set[int] = set()
        extras: dict[int, int] = {}  # control, metrics, the upgrade pipe: fd -> events
        load_steering = self.traffic.ticking  # steering and rescue sample the queues
        while True:
            self._dispatch_signals()
            self._reap()
            if self.stopping:
                if not self.workers:
                    # Idle workers may all exit before this turn reaches
                    # _tend_operations: systemd still hears STOPPING=1.
                    self._tend_operations()
                    return
                self._enforce_stop_deadline()
            else:
                self._check_workers()
                if not self.succession.upgrading:
                    self._maintain_pool()
                    if load_steering:
                        self._traffic_tick()
                else:
                    self._tend_upgrade()
            self._tend_operations()
            # Keep the poll set in step with the live channels.
            live = {h.channel.fileno(): h for h in self.workers.values() if h.channel.fileno() >= 0}
            for fd in set(registered) - set(live):
                with contextlib.suppress(KeyError, ValueError):
                    poller.unregister(fd)
                del registered[fd]
            for fd, handle in live.items():
                if fd not in registered:
                    poller.register(fd, select.POLLIN)
                # A reaped worker's channel fd is often reused at once by the
                # next worker's channel: map the number to the current handle.
                registered[fd] = handle
            # With no worker at all (ondemand), wake on the first connection.
            wanted = (
                set()
                if (self.workers or self.stopping)
                else {s.fileno() for s in self.listeners.held()}
            )
            for fd in watched_listeners - wanted:
                poller.unregister(fd)
            for fd in wanted - watched_listeners:
                poller.register(fd, select.POLLIN)
            watched_listeners = wanted
            wanted_extras = self._pollables()
            for fd in set(extras) - set(wanted_extras):
                with contextlib.suppress(KeyError, ValueError):
                    poller.unregister(fd)
            for fd, mask in wanted_extras.items():
                if extras.get(fd) != mask:
                    poller.register(fd, mask)  # registering again modifies
            extras = wanted_extras
            tick = TICK if load_steering and self.workers else _TICK
            watchdog = self.operations.time_left(time.monotonic())
            if watchdog is not None:
                tick = min(tick, max(watchdog, 0.001))
            due = time.monotonic() + tick
            try:
                events = poller.poll(tick * 1000)
            except InterruptedError:
                continue
            if not events and tick == TICK:
                # How late the kernel woke us: the machine's scheduling delay.
                self.traffic.woke_late(max(0.0, time.monotonic() - due))
            for fd, mask in events:
                if fd == wake_r:
                    self._sigq.clear_wakeups()
                elif fd in registered:
                    self._read_channel(registered[fd])
                elif fd in extras:
                    self._on_pollable(fd, mask)
                elif self.watcher is not None and fd == self.watcher.fd and not self._on_watcher():
                    poller.unregister(fd)
                    self.watcher.close()

    # ------------------------------------------------------------------ signals
    def _dispatch_signals(self) -> None:
        queue = self.signals
        while queue:
            signum = queue.popleft()
            name = signal.Signals(signum).name.lower()
            handler = getattr(self, f"handle_{name}", None)
            if handler is not None:
                handler()

    def handle_sigterm(self) -> None:
        self._begin_stop("SIGTERM")

    def handle_sigint(self) -> None:
        self._begin_stop("SIGINT")

    def handle_sigquit(self) -> None:
        self._begin_stop("SIGQUIT")

    def handle_sigchld(self) -> None:
        pass  # reaping happens on every turn of the loop

    def handle_sigttin(self) -> None:
        if not self.stopping:
            self._log_resize(self.policy.more(len(self._live())))

    def handle_sigttou(self) -> None:
        if self.stopping:
            return
        if self.config.pm is ProcessManager.STATIC:
            self._log_resize(self.policy.fewer())
            return
        live = sorted(self._live(), key=lambda h: -h.slot)
        ready = [h for h in live if h.state is WorkerState.READY and h.pid not in self.at_limit]
        if len(live) <= 1:
            log.warning("SIGTTOU ignored: keeping the last worker")
        elif not ready or not self._retire(ready[0], "SIGTTOU"):
            log.warning("SIGTTOU ignored: a worker is starting or draining; try again")

    @staticmethod
    def _log_resize(resize: Resize) -> None:
        if resize.done:
            log.info("%s", resize.message)
        else:
            log.warning("%s", resize.message)

    def handle_sighup(self) -> None:
        if self.stopping:
            return
        added = self.replacements.reload(sorted({h.slot for h in self._live()}))
        log.info(
            "SIGHUP: rolling reload of %d worker(s); each new worker must be ready before "
            "the old one stops",
            added,
        )

    def handle_sigusr1(self) -> None:
        count = logs.reopen()
        for handle in list(self.workers.values()):
            self._kill(handle, signal.SIGUSR1)
        log.info(
            "SIGUSR1: reopened %d log file(s); asked %d worker(s) to do the same",
            count,
            len(self.workers),
        )

    def _log_cpu_affinity(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        config = self.config
        # A static pool's size (SIGTTIN may add more); a dynamic pool's upper bound.
        slots = config.workers if config.pm is ProcessManager.STATIC else config.pool_limit
        shown = ", ".join(f"{slot}->{cpu_for_slot(slot, cpus)}" for slot in range(min(slots, 8)))
        log.info(
            "CPU affinity: each worker runs on one CPU (slot->CPU: %s%s)",
            shown,
            ", ..." if slots > 8 else "",
        )
        if slots > len(cpus):
            log.warning(
                "--cpu-affinity: up to %d workers on %d CPUs, so some share a CPU while "
                "others may idle; give --workers/--max-workers %d or fewer",
                slots,
                len(cpus),
                len(cpus),
            )

    # ------------------------------------------------------------------ --reload
    def _start_watcher(self) -> None:
        """Fork the file watcher of --reload (see reloader.py)."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code: int = ExitCode.ERROR
            try:
                self._sigq.forget_in_child()
                os.close(read_fd)
                code = reloader.run_watcher(self.config, self.pid, write_fd)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        os.set_inheritable(read_fd, False)
        self.watcher = reloader.Watcher(pid, read_fd)
        for warning in reloader.warnings(self.config):
            log.warning("%s", warning)

    def _on_watcher(self) -> bool:
        """The watcher wrote: reload for each batch of changes; False once it is gone."""
        assert self.watcher is not None
        began, changed, gone = self.watcher.changes()
        if began:
            log.info("--reload: watching %s", ", ".join(reloader.watch_dirs(self.config)))
        if changed and not self.stopping:
            log.info("--reload: %s changed; reloading", "; ".join(changed))
            self.handle_sighup()
        return not gone

    def _stop_watcher(self) -> None:
        watcher = self.watcher
        if watcher is None:
            return
        if watcher.alive:  # not reaped yet, so the pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(watcher.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(watcher.pid, 0)
        watcher.close()
        self.watcher = None

    # ------------------------------------------------------------------ stopping
    def _begin_stop(self, why: str) -> None:
        self.succession.cancel(why)
        if self.stopping:
            log.warning("%s again: stopping now, killing the workers", why)
            self._terminate_all(signal.SIGKILL)
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout
        booting = sum(1 for h in self.workers.values() if h.ready_since is None)
        log.info(
            "%s: graceful stop, waiting up to %.1fs for %d worker(s)%s",
            why,
            self.config.graceful_timeout,
            len(self.workers),
            f" ({booting} still booting, with nothing in flight: they stop at once)"
            if booting
            else "",
        )
        self._terminate_all(signal.SIGTERM)

    def _enforce_stop_deadline(self) -> None:
        now = time.monotonic()
        for handle in list(self.workers.values()):
            overdue = handle.stop_deadline is not None and now >= handle.stop_deadline
            if handle.state is WorkerState.STOPPING and handle.ready_since is None and overdue:
                log.warning(
                    "Worker %d (pid %d) was still booting and did not stop within %.1fs; "
                    "killing it (it served nothing: nothing is lost)",
                    handle.slot,
                    handle.pid,
                    _BOOT_STOP_GRACE,
                )
                self._abort(handle, signal.SIGKILL, ExitCause.STOP)
        if now >= self.stop_deadline:
            alive = [h.pid for h in self.workers.values()]
            if alive:
                log.warning(
                    "graceful timeout expired; killing worker(s) %s", ", ".join(map(str, alive))
                )
                self._terminate_all(signal.SIGKILL)
                self.stop_deadline = time.monotonic() + _STOP_GRACE

    def _terminate_all(self, sig: int) -> None:
        booted = self.stop_deadline
        booting = min(booted, time.monotonic() + _BOOT_STOP_GRACE)
        for handle in list(self.workers.values()):
            if sig == signal.SIGKILL:
                self._abort(handle, sig, ExitCause.STOP)
            elif handle.leaving:
                self._kill(handle, sig)
            else:
                deadline = booted if handle.ready_since is not None else booting
                handle.leave(WorkerState.STOPPING, ExitCause.STOP, deadline=deadline)
                self._kill(handle, sig)

    def _stop(self, handle: WorkerHandle, cause: ExitCause) -> None:
        """SIGTERM: finish in-flight requests, then exit (killed after the graceful timeout).

        The worker first learns why (a WebSocket closes with 1012 on a reload
        or recycle, 1001 otherwise); the message is in its channel before the
        signal arrives.
        """
        deadline = time.monotonic() + self.config.graceful_timeout + _STOP_GRACE
        handle.leave(WorkerState.STOPPING, cause, deadline=deadline)
        reason = _STOP_REASONS.get(cause, StopReason.STOP)
        with contextlib.suppress(OSError):  # gone already: the signal finds out
            worker_mod.send_message(handle.channel, {"type": "stop", "reason": reason.value})
        self._kill(handle, signal.SIGTERM)

    def _abort(self, handle: WorkerHandle, sig: int, cause: ExitCause) -> None:
        """SIGABRT or SIGKILL; SIGKILL again if it is still there after a while."""
        self._kill(handle, sig)
        deadline = time.monotonic() + _KILL_AFTER_ABORT
        if handle.state is WorkerState.ABORTING:
            handle.stop_deadline = deadline
        else:
            handle.leave(WorkerState.ABORTING, cause, deadline=deadline)

    def _kill(self, handle: WorkerHandle, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, sig)

    # ------------------------------------------------------------------ pool
    def _live(self) -> list[WorkerHandle]:
        """Workers that count toward the pool: not leaving, not being replaced."""
        return [h for h in self.workers.values() if h.live]

    def _maintain_pool(self) -> None:
        now = time.monotonic()
        self._run_replacements()
        view = PoolView.of(
            self._live(),
            now=now,
            anchor=self.listeners.anchor,
            pending=self.config.pm is ProcessManager.ONDEMAND and self.listeners.queued() > 0,
            target=self.policy.target,
        )
        decision = self.policy.decide(view, now)
        if decision.warning:
            log.warning("%s", decision.warning)
        for slot in decision.retire:
            for handle in self._live():
                if handle.slot == slot:
                    self._retire(handle, "pool")
                    break
        self._spawn_some(decision.spawn, None, now)
        if self.policy.extra:
            self.policy.extra -= self._spawn_some(self.policy.extra, SpawnCause.SCALE, now)

    def _spawn_some(self, count: int, cause: SpawnCause | None, now: float) -> int:
        """Start up to ``count`` workers in free slots; return how many started.

        ``cause`` None: the pool's own spawn (initial start, respawn or growth).
        """
        started = 0
        for _ in range(count):
            busy = {h.slot for h in self.workers.values() if not h.leaving}
            slot = self.listeners.next_slot(busy)
            if not self.backoff.may_spawn(slot, now):
                break
            if len(self.workers) >= 2 * self.config.pool_limit:
                break
            if not self._spawn(slot, cause or self.events.pool_cause(slot)):
                break
            started += 1
        return started

    def _run_replacements(self) -> None:
        """Reload/recycle: new worker first, old one stopped once the new one is ready.

        A reload goes one slot at a time; recycles start as soon as there is
        room, several at once (``policy.Replacements``): at most
        ``--max-workers`` replacements boot together, and each needs a free
        scoreboard row.
        """
        booting = [h for h in self.workers.values() if h.replaces is not None and not h.leaving]
        reloading = any(h.cause is SpawnCause.RELOAD for h in booting)
        if not reloading and self.replacements.reload_complete():
            self.events.reloads += 1
            log.info("Reload complete: %d worker(s) of the new code", len(self._live()))
        assert self.scoreboard is not None
        room = min(self.config.pool_limit - len(booting), self.scoreboard.size - len(self.workers))
        if room <= 0:
            return
        ready = {h.slot: h for h in self.workers.values() if h.state is WorkerState.READY}
        jobs = self.replacements.take(
            {slot: h.pid for slot, h in ready.items()},
            replacing={h.slot for h in booting},
            reloading=reloading,
            room=room,
        )
        for index, job in enumerate(jobs):
            old = ready[job.slot]
            log.info(
                "%s: starting a new worker %d to replace pid %d",
                job.cause.value.capitalize(),
                job.slot,
                old.pid,
            )
            old.to(WorkerState.REPLACING)
            if not self._spawn(job.slot, job.cause, replaces=old.pid):
                old.to(WorkerState.READY)
                self.replacements.retry(*jobs[index:])
                return

    def _retire(self, handle: WorkerHandle, why: str) -> bool:
        """Stop a worker for good, losing nothing queued for it.

        Returns False when it cannot start now (the caller may ask again): a
        worker still booting may be replacing one (stopping it would fail the
        reload) or opening a socket the master does not hold yet (which could
        then not be drained); retire it once it serves.
        """
        if handle.state is not WorkerState.READY or handle.pid in self.at_limit:
            return False  # (at its limit: its replacement comes; the pool asks again)
        slot = handle.slot
        if self.listeners.drainable(slot):
            if not self.listeners.may_drain():
                return False  # the pool asks again
            try:
                serving = self._serving_slots()
                self.listeners.begin_drain(slot, self.traffic.allowed(serving, time.monotonic()))
            except OSError as exc:
                log.warning(
                    "could not steer connections away from worker %d (%s); its queued "
                    "connections may be reset",
                    slot,
                    errno_name(exc),
                )
            else:
                deadline = time.monotonic() + self.config.graceful_timeout + _STOP_GRACE
                handle.leave(WorkerState.DRAINING, ExitCause.SCALE, deadline=deadline)
                log.info(
                    "Retiring worker %d (pid %d, %s): draining its queue",
                    slot,
                    handle.pid,
                    why,
                )
                self._send_drain(handle)
                self._tell_siblings(slot, gone=True)
                return True
        log.info("Retiring worker %d (pid %d, %s)", slot, handle.pid, why)
        self._stop(handle, ExitCause.SCALE)
        return True

    def _send_drain(self, handle: WorkerHandle) -> None:
        try:
            worker_mod.send_message(handle.channel, {"type": "drain"})
        except OSError as exc:
            # Gone, or not reading its channel: either way it must not keep
            # the slot half-drained.  Reaping it releases the slot.
            log.warning(
                "Could not tell worker %d (pid %d) to drain (%s); stopping it instead, "
                "its socket closes once it has exited",
                handle.slot,
                handle.pid,
                errno_name(exc),
            )
            self._kill(handle, signal.SIGTERM)

    # ------------------------------------------------------------------ steering
    def _traffic_tick(self) -> None:
        """Steering and sibling rescue, every ``traffic.TICK`` (see ``traffic.py``)."""
        now = time.monotonic()
        beats: dict[int, float] = {}
        if self.scoreboard is not None:
            for handle in self.workers.values():
                if handle.serving and handle.pid not in self.at_limit:
                    beats[handle.slot] = now - self.scoreboard.read(handle.row).heartbeat
        changes = self.traffic.tick(beats.keys(), beats, now)
        self.events.rescues += len(changes.started)
        for slot in changes.started:
            self._tell_rescuers(slot, on=True)
        for slot in changes.ended:
            self._tell_rescuers(slot, on=False)

    def _tell_rescuers(self, slot: int, *, on: bool, only: WorkerHandle | None = None) -> None:
        message = {"type": "rescue", "slot": slot, "on": on}
        for handle in [only] if only is not None else list(self.workers.values()):
            if handle.slot == slot or (on and not handle.serving):
                continue
            with contextlib.suppress(OSError):  # gone: reaping finds out
                worker_mod.send_message(handle.channel, message)

    def _tell_siblings(self, slot: int, *, gone: bool = False) -> None:
        """Sibling rescue: hand every other worker ``slot``'s sockets, or take them back."""
        if not self.traffic.rescue:
            return
        socks = [] if gone else self.listeners.rescue_sockets(slot)
        message = {"type": "sibling_gone" if gone else "sibling", "slot": slot}
        for handle in list(self.workers.values()):
            if handle.slot == slot or handle.leaving:
                continue
            try:
                worker_mod.send_message(handle.channel, message, [s.fileno() for s in socks])
            except OSError as exc:
                log.debug("could not tell worker %d about slot %d (%s)", handle.slot, slot, exc)

    # ------------------------------------------------------------------ spawning
    def _spawn(self, slot: int, cause: SpawnCause, *, replaces: int | None = None) -> bool:
        """Fork a worker into ``slot``; False if it cannot now.

        It cannot while another new socket joins or a slot drains (if it
        would open new sockets), or with no free scoreboard row.
        """
        assert self.scoreboard is not None
        if not self.listeners.may_start(slot):
            return False
        now = time.monotonic()
        row = self.scoreboard.claim(slot=slot, generation=self.generation + 1, now=now)
        if row is None:
            log.error("no free scoreboard row for worker %d; will retry", slot)
            return False
        self.generation += 1
        parent_ch, child_ch = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inherited = self.listeners.for_slot(slot)
        lane = self._free_lane(slot)
        spec = worker_mod.WorkerSpec(
            slot=slot,
            generation=self.generation,
            row=row,
            mode=self.mode,
            config=self.config,
            binds=self.listeners.binds_to_open(slot),
            listen_fds=tuple(s.fileno() for s in inherited),
            channel=child_ch,
            scoreboard=self.scoreboard,
            master_pid=self.pid,
            max_requests=self._request_limit(),
            uid=self.uid,
            gid=self.gid,
            board=self.listeners.board,
            lane=lane,
            siblings=tuple(
                (other, tuple(sock.fileno() for sock in socks))
                for other, socks in self.listeners.siblings_of(slot).items()
            )
            if self.traffic.rescue
            else (),
        )
        # The child keeps the stop signals blocked until its event loop
        # handles them (worker.py): one sent the instant it exists waits.
        with blocked():
            pid = os.fork()
            if pid == 0:  # child
                code: int = ExitCode.ERROR
                try:
                    self._after_fork_in_child(parent_ch, slot)
                    code = worker_mod.run(spec)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
        child_ch.close()
        parent_ch.setblocking(False)
        opens_socket = self.listeners.needs_socket(slot)
        if opens_socket:
            self.listeners.will_open(slot)
        self.workers[pid] = WorkerHandle(
            pid=pid,
            slot=slot,
            generation=self.generation,
            row=row,
            channel=parent_ch,
            started=now,
            cause=cause,
            opens_socket=opens_socket,
            lane=lane,
            replaces=replaces,
            last_busy=now,
        )
        self.events.spawned(cause, slot)
        log.debug("spawned worker %d (pid %d, %s)", slot, pid, cause.value)
        return True

    def _free_lane(self, slot: int) -> int:
        """A load-board lane no other worker of ``slot`` writes.

        A slot has two: its serving worker and a replacement.  If a third
        worker overlaps (a replaced one still finishing), it shares the lane
        of the one on its way out, whose counts then matter least.
        """
        used = {h.lane: h for h in self.workers.values() if h.slot == slot}
        for lane in (0, 1):
            if lane not in used:
                return lane
        leaving = [lane for lane, h in used.items() if h.leaving]
        return leaving[0] if leaving else 0

    def _request_limit(self) -> int:
        limit = self.config.max_requests
        if limit and self.config.max_requests_jitter:
            limit += random.randint(0, self.config.max_requests_jitter)
        return limit

    def _after_fork_in_child(self, parent_ch: socket.socket, slot: int) -> None:
        # (The stop signals stay blocked until the worker's loop handles them.)
        self._sigq.forget_in_child()
        # Relayed to workers to reopen logs; its default action would kill a
        # worker that has not installed its handler yet.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if self.watcher is not None:
            self.watcher.close()
        parent_ch.close()
        for handle in self.workers.values():
            handle.channel.close()
        self.operations.close_in_child()
        self.succession.close()
        # Sent to the master alone; a worker that gets it anyway (a signal
        # to the process group) must not die of the default action.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        self.listeners.close_in_child(slot, siblings=self.traffic.rescue)

    # ------------------------------------------------------------------ messages
    def _read_channel(self, handle: WorkerHandle) -> None:
        for message, fds in worker_mod.recv_messages(handle.channel):
            self._on_message(handle, message, fds)

    def _on_message(self, handle: WorkerHandle, message: dict[str, Any], fds: list[int]) -> None:
        kind = message.get("type")
        if kind == "listening":
            # Whatever its state: its sockets joined the groups.
            if fds and self.listeners.slot_opened(handle.slot, fds):
                self._tell_siblings(handle.slot)
            if handle.state is WorkerState.BOOTING:
                handle.to(WorkerState.STARTING)
            return
        for fd in fds:
            os.close(fd)
        if kind == "ready":
            self._on_ready(handle, str(message.get("interface", "")))
        elif kind == "recycle" and not handle.leaving:
            # It has paused already; a worker being replaced (a reload) is not
            # recycled on top, but resumed if that replacement fails.
            self.at_limit.add(handle.pid)
            if handle.state is WorkerState.READY:
                log.info(
                    "Worker %d (pid %d) served %s requests (--max-requests): recycling it; "
                    "it takes no new requests meanwhile",
                    handle.slot,
                    handle.pid,
                    message.get("requests"),
                )
                self.replacements.recycle(handle.slot, handle.pid)
        elif kind == "boot_error":
            handle.boot_error = (
                int(message.get("code", ExitCode.BOOT_ERROR)),
                str(message.get("message", "")),
            )

    def _on_ready(self, handle: WorkerHandle, interface: str) -> None:
        now = time.monotonic()
        handle.interface = interface
        handle.ready_since = handle.last_busy = now
        if handle.state is not WorkerState.STARTING:
            return  # told to go meanwhile: it stays on its way out
        handle.to(WorkerState.READY)
        self._announce_listening()
        for slot in sorted(self.traffic.rescuing):  # join the rescues under way
            self._tell_rescuers(slot, on=True, only=handle)
        if handle.replaces is not None:
            old = self.workers.get(handle.replaces)
            handle.replaces = None
            if old is not None and old.state is WorkerState.REPLACING:
                log.info(
                    "Worker %d (pid %d) is ready; stopping pid %d (%s)",
                    handle.slot,
                    handle.pid,
                    old.pid,
                    handle.cause.value,
                )
                reload = handle.cause is SpawnCause.RELOAD
                self._stop(old, ExitCause.RELOAD if reload else ExitCause.RECYCLE)
                if not reload:
                    self.events.recycles += 1
        if not self.announced_ready and self._ready_count() >= self.policy.target:
            self.announced_ready = True
            log.info(
                "Ready: %d workers serving %s as %s (%s mode)",
                self._ready_count(),
                self.config.app_label,
                handle.interface,
                self.mode.value,
            )

    def _serving_slots(self) -> set[int]:
        """Slots a worker serves that may get new connections (not one at its limit)."""
        return {h.slot for h in self.workers.values() if h.serving and h.pid not in self.at_limit}

    def _ready_count(self) -> int:
        return sum(1 for h in self.workers.values() if h.serving)

    def _in_slot(self, slot: int, *, live: bool = False) -> bool:
        """Some worker (a live one, if asked) runs in ``slot``."""
        return any(h.slot == slot and (h.live or not live) for h in self.workers.values())

    # ------------------------------------------------------------------ reaping
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            handle = self.workers.pop(pid, None)
            if handle is None:
                if pid == self.succession.new_master:
                    self._new_master_exited(status)
                elif self.watcher is not None and pid == self.watcher.pid:
                    self.watcher.alive = False
                    log.warning(
                        "--reload: the file watcher (pid %d) %s; changes no longer reload",
                        pid,
                        _describe_status(status),
                    )
                continue
            self._read_channel(handle)  # a boot error or its sockets may still sit there
            handle.channel.close()
            self.at_limit.discard(pid)
            if self.scoreboard is not None:
                row = self.scoreboard.read(handle.row)
                if row.pid == handle.pid:  # its last beat: the counters survive it
                    self.lifetime.fold(
                        handle.slot,
                        requests=row.requests,
                        accepted=row.accepted,
                        rescued=row.rescued,
                    )
                self.scoreboard.clear(handle.row)
            if self.listeners.board is not None and handle.slot < self.listeners.board.capacity:
                self.listeners.board.lane_gone(handle.slot, handle.lane)
            self._on_exit(handle, status)

    def _reap_blocking(self) -> None:
        deadline = time.monotonic() + 10.0
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            handle = self.workers.pop(pid, None)
            if handle is not None:
                handle.channel.close()

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        slot = handle.slot
        code = os.waitstatus_to_exitcode(status)
        how = handle.describe_exit(code)
        cause = handle.why_gone()
        self.events.exited(cause)
        if handle.opens_socket:
            self.listeners.opener_gone(slot)
        if self.listeners.draining == slot and not self._in_slot(slot):
            # The drained slot's last worker is gone: only now may its socket close.
            self.listeners.release(slot)
            self.events.drains += 1
        if handle.replaces is not None:
            self._replacement_failed(handle, how)
            return
        if self._another_boot_failure(handle, code):
            return
        if cause not in (ExitCause.CRASH, ExitCause.HEARTBEAT, ExitCause.BOOT):
            log.info("Worker %d (pid %d) %s", slot, handle.pid, how)
            return
        if not self._in_slot(slot, live=True):
            self.events.orphaned(slot)
        if handle.failed_to_boot(code) and not self.stopping:
            exit_code, message = handle.boot_error or (code, f"worker {how} before it was ready")
            if self._ready_count() == 0:
                log.error("Worker %d failed to boot: %s", slot, message)
                log.error(
                    "Shutting down: a worker that cannot boot would only be respawned in a loop"
                )
                self.exit_code = exit_code
                self.boot_failures.halt(exit_code, message)
                self._begin_stop("boot error")
                return
            how = f"failed to boot: {message}"
        self._note_crash(handle, how)

    def _another_boot_failure(self, handle: WorkerHandle, code: int) -> bool:
        """While halting for a boot error: count or show a worker that failed to boot too.

        False if ``handle`` is no such worker (see ``lifecycle.BootFailures``).
        """
        if not self.boot_failures.halting or not handle.failed_to_boot(code):
            return False
        exit_code, message = handle.boot_error or (code, f"exited with code {code}")
        if not self.boot_failures.seen(exit_code, message):
            log.error("Worker %d failed to boot too, differently: %s", handle.slot, message)
        return True

    def _replacement_failed(self, handle: WorkerHandle, how: str) -> None:
        """A reload/recycle worker died before it was ready: keep the one it was to replace."""
        old = self.workers.get(handle.replaces or 0)
        if handle.exit_cause is not None:  # told to go (the master stops): no failure
            log.info("Worker %d (pid %d) %s", handle.slot, handle.pid, how)
            return
        if old is not None and old.state is WorkerState.REPLACING:
            old.to(WorkerState.READY)
            self._resume(old)
        message = handle.boot_error[1] if handle.boot_error else f"the new worker {how}"
        log.error(
            "%s of worker %d failed: %s. The running worker (pid %s) keeps serving.",
            handle.cause.value.capitalize(),
            handle.slot,
            message,
            handle.replaces,
        )
        if handle.cause is SpawnCause.RELOAD and self.replacements.reload_failed():
            self.events.reloads_failed += 1

    def _resume(self, handle: WorkerHandle) -> None:
        """A worker paused at its --max-requests serves on (its replacement failed)."""
        if handle.pid not in self.at_limit:
            return
        self.at_limit.discard(handle.pid)
        with contextlib.suppress(OSError):  # gone: reaping finds out
            worker_mod.send_message(handle.channel, {"type": "resume"})

    def _note_crash(self, handle: WorkerHandle, how: str) -> None:
        log.warning("Worker %d (pid %d) %s; starting a replacement", handle.slot, handle.pid, how)
        now = time.monotonic()
        in_a_row, delay = self.backoff.crashed(
            handle.slot,
            lived=now - handle.started,
            was_ready=handle.ready_since is not None,
            now=now,
        )
        if in_a_row > 1:
            log.warning(
                "Worker %d crashed %d times in a row right after start; next try in %.1fs",
                handle.slot,
                in_a_row,
                delay,
            )
        if (
            self.config.pm is not ProcessManager.STATIC
            and not self.stopping
            and self.listeners.holds(handle.slot)
            and self.backoff.may_spawn(handle.slot, now)
            and not self._in_slot(handle.slot, live=True)
        ):
            # Its socket is held and may hold connections: respawn into it now,
            # whatever the pool policy would say.
            self._spawn(handle.slot, SpawnCause.RESPAWN)

    # ------------------------------------------------------------------ heartbeat
    def _check_workers(self) -> None:
        """Heartbeats, stop deadlines and busy/idle bookkeeping."""
        if self.scoreboard is None:
            return
        timeout = self.config.timeout
        now = time.monotonic()
        for handle in list(self.workers.values()):
            overdue = handle.stop_deadline is not None and now >= handle.stop_deadline
            if handle.state is WorkerState.ABORTING:
                if overdue:
                    self._abort(handle, signal.SIGKILL, ExitCause.STOP)
                continue
            if handle.leaving and overdue:
                log.warning(
                    "Worker %d (pid %d) did not stop within the graceful timeout; killing it",
                    handle.slot,
                    handle.pid,
                )
                self._abort(handle, signal.SIGKILL, ExitCause.STOP)
                continue
            if handle.ready_since is None:
                continue
            row = self.scoreboard.read(handle.row)
            if row.pid != handle.pid:
                continue
            handle.saw(row.requests, row.in_flight, now)
            if timeout > 0 and now - row.heartbeat > timeout:
                log.error(
                    "Worker %d (pid %d) is stuck: its event loop has not run for %.1fs "
                    "(--timeout %.1f); sending SIGABRT",
                    handle.slot,
                    handle.pid,
                    now - row.heartbeat,
                    timeout,
                )
                self._abort(handle, signal.SIGABRT, ExitCause.HEARTBEAT)
                # It no longer counts toward the pool: the pool may start its
                # replacement right away, and that is a respawn.
                if not self._in_slot(handle.slot, live=True):
                    self.events.orphaned(handle.slot)

    # ------------------------------------------------------------------ operations
    def _pollables(self) -> dict[int, int]:
        """What the loop watches besides the wake-up pipe, the channels and the watcher."""
        return self.operations.pollables() | self.succession.pollables()

    def _on_pollable(self, fd: int, mask: int) -> None:
        if fd in self.succession.pollables():
            if self.succession.on_pipe() is succession_mod.Outcome.HAND_OVER:
                self._hand_over()
        else:
            self.operations.on_event(fd, mask)

    def _tend_operations(self) -> None:
        """Each turn: a hand-over in either role, metrics clients' deadlines, systemd."""
        if self.succession.taking_over and not self.stopping:
            self.succession.tend_inheritance(
                ready=self.announced_ready,
                serving=lambda: {h.slot for h in self.workers.values() if h.serving},
            )
        view = sdnotify.View(
            ready=self.announced_ready,
            reloading=self.replacements.reloading or self.succession.starting,
            stopping=self.stopping,
            status=self._status_text(),
            # Before an old master has gone, systemd takes it as the main
            # process; after its hand-over, the new one.
            muted=self.succession.handing_over or self.succession.taking_over,
        )
        self.operations.tend(view, time.monotonic())

    def _status_text(self) -> str:
        text = (
            f"{self._ready_count()} of {self.policy.target} workers ready ({self.mode.value} mode)"
        )
        if self.stopping:
            return text + "; stopping"
        note = self.succession.status_note()
        if note is not None:
            return f"{text}; {note}"
        if self.replacements.reloading:
            return text + "; reloading"
        return text

    # ------------------------------------------------------------------ SIGUSR2 (succession.py)
    def handle_sigusr2(self) -> None:
        self.succession.request(time.monotonic(), stopping=self.stopping)

    def _tend_upgrade(self) -> None:
        """While an upgrade runs: the pool frozen, the new master started and timed."""
        now = time.monotonic()
        self._respawn_held(now)
        self.succession.tend(now)

    def _respawn_held(self, now: float) -> None:
        """The pool during an upgrade: frozen, but a held slot is never left without a worker.

        In reuseport mode a new slot or a drain would change the group order
        the new master was given; in shared mode no pool move touches a
        socket, so the pool runs as usual.
        """
        if self.mode is Mode.SHARED:
            self._maintain_pool()
            return
        for slot in self.listeners.order:
            if not self._in_slot(slot, live=True) and self.backoff.may_spawn(slot, now):
                self._spawn(slot, SpawnCause.RESPAWN)

    def _hand_over(self) -> None:
        """The new master is ready: stop our workers gracefully, then exit; close no socket."""
        log.info(
            "The new master (pid %s) is ready: handing over; stopping this master's %d "
            "worker(s) gracefully",
            self.succession.new_master,
            len(self.workers),
        )
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout
        for handle in list(self.workers.values()):
            if not handle.leaving:
                self._stop(handle, ExitCause.RELOAD)

    def _new_master_exited(self, status: int) -> None:
        outcome = self.succession.exited(_describe_status(status))
        if outcome is succession_mod.Outcome.RESUME:
            self.stopping = False  # the pool starts workers again on the sockets we hold

    def _adopt(self) -> None:
        """A new master: take the old one's sockets; start a worker in every slot it had."""
        slots = self.succession.adopt(self.config.pool_limit)
        if self.config.pm is ProcessManager.STATIC:
            self.policy.target = max(self.policy.target, slots)
        else:
            self.policy.extra = max(0, slots - self.config.initial_workers)

    @staticmethod
    def _signal_pid(pid: int, sig: int) -> None:
        """The new master's signals (``succession.py`` decides them)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    # ------------------------------------------------------------------ status
    def status(self) -> Status:
        """What ``reuseport status`` shows."""
        now = time.monotonic()
        workers = []
        for handle in sorted(self.workers.values(), key=lambda h: (h.slot, h.generation)):
            row = self.scoreboard.read(handle.row) if self.scoreboard else None
            own = row if row is not None and row.pid == handle.pid else None
            depth = self.listeners.queue_depth(handle.slot)
            workers.append(WorkerStatus.of(handle, own, depth, now))
        config = self.config
        running = len(self._live())
        return Status(
            master=MasterStatus(
                pid=self.pid,
                uptime=now - self.started,
                mode=self.mode,
                app=config.app_label,
                binds=tuple(str(b) for b in self.listeners.binds),
                generation=self.generation,
            ),
            pool=PoolStatus.of(
                config,
                target=self.policy.target if config.pm is ProcessManager.STATIC else running,
                running=running,
            ),
            workers=tuple(workers),
            totals=Totals.of(workers, queue=self.listeners.queued()),
            steering=self.traffic.status(),
            events=self.events.snapshot(),
            udp=self.listeners.datagram_status(),
        )
