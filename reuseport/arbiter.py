"""The master: binds, forks workers, reaps them, and runs the pool.

Rules (they keep a prefork master sane):
- no event loop and no thread, ever: the master sleeps in ``poll()`` on the
  signal wake-up pipe, the workers' channels and the control socket, with a
  short tick;
- signal handlers only append to a queue; the main loop dispatches each
  signal to ``handle_<name>()``;
- this is the only module that calls ``fork``, ``waitpid`` and ``kill``;
- pool decisions come from ``policy.py``; this module only carries them out.

Sockets and the zero-loss rules.  Shared mode: the master binds one
SO_REUSEADDR socket per address before forking and keeps it; workers come and
go, the queue stays.  Reuseport mode: the master binds, without listening, one
SO_REUSEPORT socket per address (the *reservation*: it fixes the port when
port 0 was asked for and keeps the port ours while no worker listens).  The
first worker of a *slot* opens its own listening socket, before it even
imports the app, and hands the master a duplicate over its channel
(SCM_RIGHTS).  The master keeps that duplicate as long as the slot exists, so:

- a worker that crashes, hangs or is SIGKILLed loses nothing queued: its
  replacement inherits the very same socket (nginx does the same);
- a rolling reload or a max-requests recycle starts the new worker *in the
  same slot*, on the same socket, and stops the old one once the new one is
  ready: the queue never closes;
- a slot that goes away for good (scale-down, ondemand idle-out) is first
  steered out of the group with a classic BPF program, its worker accepts
  until its queue stays empty, and only then is the socket closed.  One slot
  drains at a time, and new slots open their sockets one at a time, so the
  master always knows which slot sits at which index of the group
  (``bpf.Group``).

With ``--pm ondemand`` in reuseport mode the master itself opens slot 0's
socket at start (the *anchor*), because something must listen while no
worker exists; slot 0's worker inherits it and the anchor is never drained.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import random
import select
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

from . import worker as worker_mod
from .bpf import Group, attach_cbpf, detach, steering_program
from .config import BindAddress, Config, Mode, ProcessManager, SteeringKind
from .control import ControlServer, default_control_path
from .errors import BootError, ConfigError, ExitCode
from .policy import PoolPolicy, PoolView, WorkerView
from .scoreboard import Scoreboard, SlotState
from .sockets import (
    bind_reuseport,
    bind_shared,
    check_port_guard,
    listen_queue_depth,
    reserve_port,
)
from .steering import SlotLoad, Steering

__all__ = ["Arbiter"]

log = logging.getLogger("reuseport.master")

_TICK = 0.5
_STEER_TICK = 0.02  # --steering load samples the accept queues this often
_STALE_AFTER = 1.0  # a loop that has not beaten for this long is behind
_STALL_AFTER = 0.1  # a queue that has not gone down for this long is stalled
# A worker beats every 0.25 s at most (worker.py); seen busy within this
# window means busy now.
_BUSY_WINDOW = 1.0
_KILL_AFTER_ABORT = 2.0
_BOOT_EXIT_CODES = {
    ExitCode.APP_LOAD_ERROR,
    ExitCode.BOOT_ERROR,
    ExitCode.BIND_ERROR,
    ExitCode.PLATFORM_ERROR,
    ExitCode.USAGE,
}
_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)


@dataclass(slots=True, eq=False)
class WorkerHandle:
    pid: int
    slot: int
    generation: int
    row: int
    channel: socket.socket
    started: float
    opens_socket: bool  # a new slot: the worker opens the listening socket itself
    replaces: int | None = None  # pid of the worker this one replaces (reload/recycle)
    reason: str = "start"
    got_socket: bool = False
    ready: bool = False
    stopping: bool = False
    draining: bool = False
    replaced: bool = False  # a replacement is on its way or ready
    stop_deadline: float | None = None
    abort_sent_at: float | None = None
    boot_error: tuple[int, str] | None = None
    interface: str = ""
    last_requests: int = 0
    last_busy: float = 0.0  # last time seen busy, or when it became ready
    seen_busy: bool = False  # busy at least once since it became ready


@dataclass(slots=True)
class _SlotHistory:
    """Crash-loop bookkeeping for one slot."""

    quick_failures: int = 0
    not_before: float = 0.0


@dataclass(slots=True)
class _Replacement:
    slot: int
    reason: str  # "reload" or "recycle"
    pid: int | None = None  # recycle: the worker that asked (not its successor)


def resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """Turn --user/--group into ids, refusing what cannot work."""
    import grp
    import pwd

    uid = gid = None
    if user is not None:
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise ConfigError(f"--user {user!r}: no such user on this machine") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            gid = (
                grp.getgrnam(group).gr_gid
                if not group.isdigit()
                else grp.getgrgid(int(group)).gr_gid
            )
        except KeyError:
            raise ConfigError(f"--group {group!r}: no such group on this machine") from None
    wants_change = (uid is not None and uid != os.geteuid()) or (
        gid is not None and gid != os.getegid()
    )
    if wants_change and os.geteuid() != 0:
        raise ConfigError(
            "--user/--group need the server to be started as root (it drops to them in "
            "each worker after opening the sockets)"
        )
    return uid, gid


class Arbiter:
    def __init__(self, config: Config, mode: Mode, mode_reason: str) -> None:
        if mode is Mode.AUTO:
            raise ValueError("the arbiter needs a resolved mode")
        self.config = config
        self.mode = mode
        self.mode_reason = mode_reason
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.binds: tuple[BindAddress, ...] = config.binds
        self.shared_socks: list[socket.socket] = []
        self.reservations: list[socket.socket] = []
        self.slot_socks: dict[int, list[socket.socket]] = {}
        self.groups: list[Group] = []
        self.draining_slot: int | None = None
        self.anchor_slot: int | None = None
        self.workers: dict[int, WorkerHandle] = {}  # by pid
        self.history: dict[int, _SlotHistory] = {}
        self.policy = PoolPolicy(config)
        self.target = config.initial_workers
        self.generation = 0
        self.replacements: collections.deque[_Replacement] = collections.deque()
        self.extra_spawns = 0  # SIGTTIN in a dynamic/ondemand pool
        self.steering = Steering(load_aware=config.steering is SteeringKind.LOAD)
        self.attached: tuple[int, ...] | None = None  # group indices the program allows
        self._steer_warned = False
        self.steered_away: list[int] = []  # slots new connections are kept from
        self.stalled: list[int] = []  # slots whose loop or accept queue stands still
        self._queue_trend: dict[int, tuple[int, float]] = {}  # slot: (queue, last went down)
        self.signals: collections.deque[int] = collections.deque()  # filled by handlers
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int = ExitCode.OK
        self.announced_ready = False
        self.scoreboard: Scoreboard | None = None
        self.control: ControlServer | None = None
        self.uid, self.gid = resolve_user(config.user, config.group)
        self._wake_r = -1
        self._wake_w = -1

    # ------------------------------------------------------------------ setup
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        queue = self.signals

        def enqueue(signum: int, _frame: object) -> None:
            queue.append(signum)

        for sig in _SIGNALS:
            signal.signal(sig, enqueue)

    def _bind(self) -> None:
        resolved: list[BindAddress] = []
        try:
            for addr in self.config.binds:
                if self.mode is Mode.SHARED:
                    sock = bind_shared(addr, self.config.backlog)
                    self.shared_socks.append(sock)
                else:
                    check_port_guard(addr)
                    sock = reserve_port(addr)
                    self.reservations.append(sock)
                resolved.append(addr.with_port(sock.getsockname()[1]))
            self.binds = tuple(resolved)
            if self.mode is Mode.REUSEPORT:
                self.groups = [Group() for _ in self.binds]
                if self.config.pm is ProcessManager.ONDEMAND:
                    self._open_anchor()
        except BaseException:
            self._close_sockets()
            raise

    def _open_anchor(self) -> None:
        socks = [bind_reuseport(addr, self.config.backlog) for addr in self.binds]
        self.slot_socks[0] = socks
        for group in self.groups:
            group.joined(0)
        self.anchor_slot = 0

    def _close_sockets(self) -> None:
        for sock in [*self.shared_socks, *self.reservations]:
            sock.close()
        for socks in self.slot_socks.values():
            for sock in socks:
                sock.close()
        self.shared_socks.clear()
        self.reservations.clear()
        self.slot_socks.clear()

    def _start_control(self) -> None:
        path = self.config.control or default_control_path(self.pid)
        self.control = ControlServer(path, self.snapshot)
        log.info("Control socket at %s (reuseport status --control %s)", path, path)

    # ------------------------------------------------------------------ main
    def run(self) -> int:
        try:
            import setproctitle

            name = self.config.proc_name or self.config.app_label
            setproctitle.setproctitle(f"reuseport: master [{name}]")
        except ImportError:
            pass
        self._install_signals()
        try:
            self._bind()
            for addr in self.binds:
                log.info("Listening at http://%s (%s mode)", addr, self.mode.value)
            log.info("Mode %s: %s", self.mode.value, self.mode_reason)
            self._write_pid_file()
            self._start_control()
            self.scoreboard = Scoreboard(self.config.pool_limit)
            if self.config.pm is ProcessManager.ONDEMAND:
                log.info(
                    "Ready: 0 workers (ondemand pool: the first connection starts one, "
                    "up to %d) (%s mode)",
                    self.config.pool_limit,
                    self.mode.value,
                )
                self.announced_ready = True
            self._loop()
        finally:
            self._terminate_all(signal.SIGKILL)
            self._reap_blocking()
            if self.control is not None:
                self.control.close()
            self._close_sockets()
            self._remove_pid_file()
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
        return self.exit_code

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self.control is not None:
            poller.register(self.control.fileno(), select.POLLIN)
        registered: dict[int, WorkerHandle] = {}
        watched_listeners: set[int] = set()
        load_steering = self.steering.load_aware and self.mode is Mode.REUSEPORT
        while True:
            self._dispatch_signals()
            self._reap()
            if self.stopping:
                if not self.workers:
                    return
                self._enforce_stop_deadline()
            else:
                self._check_workers()
                self._maintain_pool()
                if load_steering:
                    self._steer_quietly()
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
                else {s.fileno() for s in self._held_listeners()}
            )
            for fd in watched_listeners - wanted:
                poller.unregister(fd)
            for fd in wanted - watched_listeners:
                poller.register(fd, select.POLLIN)
            watched_listeners = wanted
            tick = _STEER_TICK if load_steering and self.workers else _TICK
            try:
                events = poller.poll(tick * 1000)
            except InterruptedError:
                continue
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                elif fd in registered:
                    self._read_channel(registered[fd])
                elif self.control is not None and fd == self.control.fileno():
                    self.control.handle()

    def _held_listeners(self) -> list[socket.socket]:
        """Every listening socket the master holds (the shared one, or each slot's)."""
        if self.mode is Mode.SHARED:
            return list(self.shared_socks)
        return [s for socks in self.slot_socks.values() for s in socks]

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
        if self.stopping:
            return
        if self.config.pm is not ProcessManager.STATIC:
            if len(self._live()) + self.extra_spawns >= self.config.pool_limit:
                log.warning("SIGTTIN ignored: at --max-workers (%d)", self.config.pool_limit)
            else:
                log.info("SIGTTIN: starting one more worker")
                self.extra_spawns += 1
            return
        if self.target >= self.config.pool_limit:
            log.warning(
                "SIGTTIN ignored: already at --max-workers (%d); raise it to grow further",
                self.config.pool_limit,
            )
            return
        self.target += 1
        log.info("SIGTTIN: workers %d -> %d", self.target - 1, self.target)

    def handle_sigttou(self) -> None:
        if self.stopping:
            return
        if self.config.pm is not ProcessManager.STATIC:
            live = sorted(self._live(), key=lambda h: -h.slot)
            ready = [h for h in live if h.ready]
            if len(live) <= 1:
                log.warning("SIGTTOU ignored: keeping the last worker")
            elif not ready or not self._retire(ready[0], "SIGTTOU"):
                log.warning("SIGTTOU ignored: a worker is starting or draining; try again")
            return
        if self.target <= 1:
            log.warning("SIGTTOU ignored: keeping the last worker")
            return
        self.target -= 1
        log.info("SIGTTOU: workers %d -> %d", self.target + 1, self.target)

    def handle_sighup(self) -> None:
        if self.stopping:
            return
        slots = sorted({h.slot for h in self._live()})
        # A queued recycle may be skipped (its worker replaced meanwhile): only
        # a queued reload makes a slot's reload already pending.
        queued = {r.slot for r in self.replacements if r.reason == "reload"}
        added = [s for s in slots if s not in queued]
        self.replacements.extend(_Replacement(slot=s, reason="reload") for s in added)
        log.info(
            "SIGHUP: rolling reload of %d worker(s); each new worker must be ready before "
            "the old one stops",
            len(added),
        )

    def handle_sigusr1(self) -> None:
        log.info("SIGUSR1: logs go to stderr; nothing to reopen")

    def _begin_stop(self, why: str) -> None:
        if self.stopping:
            log.warning("%s again: stopping now, killing the workers", why)
            self._terminate_all(signal.SIGKILL)
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout
        log.info(
            "%s: graceful stop, waiting up to %.1fs for %d worker(s)",
            why,
            self.config.graceful_timeout,
            len(self.workers),
        )
        self._terminate_all(signal.SIGTERM)

    def _enforce_stop_deadline(self) -> None:
        if time.monotonic() >= self.stop_deadline:
            alive = [h.pid for h in self.workers.values()]
            if alive:
                log.warning(
                    "graceful timeout expired; killing worker(s) %s", ", ".join(map(str, alive))
                )
                self._terminate_all(signal.SIGKILL)
                self.stop_deadline = time.monotonic() + 5.0

    def _terminate_all(self, sig: int) -> None:
        for handle in list(self.workers.values()):
            self._kill(handle, sig)
            handle.stopping = True

    def _kill(self, handle: WorkerHandle, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, sig)

    # ------------------------------------------------------------------ pool
    def _live(self) -> list[WorkerHandle]:
        """Workers that count toward the pool: not stopping, not replaced."""
        return [h for h in self.workers.values() if not h.stopping and not h.replaced]

    def _free_slot(self) -> int:
        used = {h.slot for h in self.workers.values() if not h.stopping}
        draining = {h.slot for h in self.workers.values() if h.draining}
        # A slot whose socket the master holds but no worker serves comes first:
        # connections may be waiting in it.
        for slot in sorted(self.slot_socks):
            if slot not in used and slot not in draining:
                return slot
        slot = 0
        while slot in used or slot in draining or slot in self.slot_socks:
            slot += 1
        return slot

    def _opening_socket(self) -> bool:
        return any(h.opens_socket and not h.got_socket for h in self.workers.values())

    def _maintain_pool(self) -> None:
        now = time.monotonic()
        self._run_replacements()
        view = self._pool_view(now)
        decision = self.policy.decide(view, now)
        if decision.warning:
            log.warning("%s", decision.warning)
        for slot in decision.retire:
            for handle in self._live():
                if handle.slot == slot:
                    self._retire(handle, "pool")
                    break
        self._spawn_some(decision.spawn, "pool", now)
        if self.extra_spawns:
            self.extra_spawns -= self._spawn_some(self.extra_spawns, "SIGTTIN", now)

    def _spawn_some(self, count: int, reason: str, now: float) -> int:
        """Start up to ``count`` workers in free slots; return how many started."""
        started = 0
        for _ in range(count):
            slot = self._free_slot()
            history = self.history.setdefault(slot, _SlotHistory())
            if now < history.not_before:
                break
            # New sockets join the group one at a time, so the master knows
            # each one's index.
            new_socket = self.mode is Mode.REUSEPORT and slot not in self.slot_socks
            if new_socket and (self._opening_socket() or self.draining_slot is not None):
                break
            if len(self.workers) >= 2 * self.config.pool_limit:
                break
            self._spawn(slot, reason=reason)
            started += 1
        return started

    def _pool_view(self, now: float) -> PoolView:
        views = []
        live = self._live()
        for handle in live:
            busy = handle.seen_busy and now - handle.last_busy < _BUSY_WINDOW
            if self.anchor_slot is not None and handle.slot == self.anchor_slot and len(live) > 1:
                busy = True  # the anchor's worker goes last (see module docstring)
            views.append(
                WorkerView(
                    slot=handle.slot,
                    ready=handle.ready,
                    busy=busy,
                    idle_for=now - handle.last_busy,
                )
            )
        return PoolView(
            workers=tuple(views), pending=self._connections_waiting(), target=self.target
        )

    def _connections_waiting(self) -> bool:
        if self.config.pm is not ProcessManager.ONDEMAND:
            return False
        return self._queued() > 0

    def _queued(self) -> int:
        """Connections waiting in every queue the master holds."""
        depths = (listen_queue_depth(sock) for sock in self._held_listeners())
        return sum(depth[0] for depth in depths if depth is not None)

    def _run_replacements(self) -> None:
        """Reload/recycle: one slot at a time, new worker first, old one after it is ready."""
        if any(h.replaces is not None for h in self.workers.values() if not h.stopping):
            return  # one in progress
        while self.replacements:
            job = self.replacements.popleft()
            old = next((h for h in self._live() if h.slot == job.slot), None)
            if old is None or not old.ready:
                continue
            if job.pid is not None and old.pid != job.pid:
                continue  # a reload already replaced the worker that asked to be recycled
            old.replaced = True
            log.info(
                "%s: starting a new worker %d to replace pid %d",
                job.reason.capitalize(),
                job.slot,
                old.pid,
            )
            self._spawn(job.slot, reason=job.reason, replaces=old.pid)
            return

    def _retire(self, handle: WorkerHandle, why: str) -> bool:
        """Stop a worker for good, losing nothing queued for it.

        Returns False when it cannot start now (the caller may ask again).
        """
        if handle.stopping:
            return False
        if not handle.ready:
            # Still booting: it may be replacing a worker (stopping it would
            # fail the reload and leave the slot to the old worker) or be
            # opening a socket the master does not hold yet (which could then
            # not be drained).  Retire it once it serves.
            return False
        slot = handle.slot
        if self.mode is Mode.REUSEPORT and slot in self.slot_socks and slot != self.anchor_slot:
            others = [g for g in self.groups if len(g.order) > 1]
            if others and len(others) == len(self.groups):
                if self.draining_slot is not None or self._opening_socket():
                    # One drain at a time, and never while a new socket joins the
                    # group (its index must be known when the drained one leaves);
                    # the pool asks again.
                    return False
                self.draining_slot = slot
                try:
                    self._steer(force=True)
                except OSError as exc:
                    self.draining_slot = None
                    log.warning(
                        "could not steer connections away from worker %d (%s); its queued "
                        "connections may be reset",
                        slot,
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                    )
                else:
                    handle.draining = True
                    handle.stopping = True
                    handle.stop_deadline = time.monotonic() + self.config.graceful_timeout + 5.0
                    self._send(handle, {"type": "drain"})
                    log.info(
                        "Retiring worker %d (pid %d, %s): draining its queue", slot, handle.pid, why
                    )
                    return True
        log.info("Retiring worker %d (pid %d, %s)", slot, handle.pid, why)
        handle.stopping = True
        handle.stop_deadline = time.monotonic() + self.config.graceful_timeout + 5.0
        self._kill(handle, signal.SIGTERM)
        return True

    def _release_slot(self, slot: int) -> None:
        """The drained slot's worker is gone: close its socket, forget its index."""
        socks = self.slot_socks.pop(slot, [])
        for sock in socks:
            sock.close()
        for group in self.groups:
            if slot in group.order:
                group.left(slot)
        if self.draining_slot == slot:
            self.draining_slot = None
        # The indices moved (the last member took the hole): the program
        # attached for the old layout is stale.
        with contextlib.suppress(OSError):
            self._steer(force=True)

    # ------------------------------------------------------------------ steering
    def _slot_ready(self, slot: int) -> bool:
        return any(h.slot == slot and h.ready and not h.stopping for h in self.workers.values())

    def _slot_loads(self, now: float) -> list[SlotLoad]:
        load_aware = self.steering.load_aware
        rows = {}
        if load_aware and self.scoreboard is not None:
            for handle in self.workers.values():
                if handle.ready and not handle.stopping:
                    rows[handle.slot] = self.scoreboard.read(handle.row)
        loads = []
        behind: list[int] = []
        for slot in self.groups[0].order:
            queue = 0
            stale = False
            if load_aware:
                for sock in self.slot_socks.get(slot, []):
                    depth = listen_queue_depth(sock)
                    queue += depth[0] if depth else 0
                row = rows.get(slot)
                stale = row is not None and now - row.heartbeat > _STALE_AFTER
                # A queue that holds connections and does not go down is not
                # being accepted from: a stalled worker, whatever its length.
                last_queue, moved_at = self._queue_trend.get(slot, (0, now))
                if queue == 0 or queue < last_queue:
                    moved_at = now
                self._queue_trend[slot] = (queue, moved_at)
                if queue > self.steering.queue_limit and now - moved_at > _STALL_AFTER:
                    stale = True
                if stale:
                    behind.append(slot)
            loads.append(
                SlotLoad(
                    slot=slot,
                    ready=(self._slot_ready(slot) if load_aware else True),
                    draining=slot == self.draining_slot,
                    queue=queue,
                    stale=stale,
                )
            )
        self.stalled = behind
        return loads

    def _steer_quietly(self) -> None:
        try:
            self._steer()
        except OSError as exc:
            if not self._steer_warned:
                self._steer_warned = True
                log.warning(
                    "--steering load: attaching the steering program failed (%s); new "
                    "connections follow the kernel's hash",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                )

    def _steer(self, *, force: bool = False) -> None:
        """Attach (or detach) the group program that matches who may receive.

        Raises OSError if the kernel refuses; callers decide what that costs.
        """
        if self.mode is not Mode.REUSEPORT or not self.groups or not self.groups[0].order:
            return
        order = self.groups[0].order
        allowed = self.steering.allowed(self._slot_loads(time.monotonic()))
        self.steered_away = sorted(set(order) - allowed)
        wanted: tuple[int, ...] | None = None
        if allowed != set(order):
            wanted = tuple(self.groups[0].indices_except(set(order) - allowed))
        if wanted == self.attached and not force:
            return
        for group in self.groups:
            if group.order != order:
                raise OSError(errno.EINVAL, "the groups of the binds disagree")
        holders = [self.slot_socks[s] for s in order if s in self.slot_socks]
        if not holders:
            return
        for sock in holders[0]:
            if wanted is None:
                try:
                    detach(sock)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # nothing attached
                        continue
                    # Linux < 5.3 cannot detach: allow every index instead.
                    attach_cbpf(sock, steering_program(list(range(len(order)))))
            else:
                attach_cbpf(sock, steering_program(wanted))
        self.attached = wanted

    def _send(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            handle.channel.send(json.dumps(message).encode())

    def _spawn(self, slot: int, *, reason: str, replaces: int | None = None) -> None:
        assert self.scoreboard is not None
        row = self.scoreboard.free_index()
        if row is None:
            log.error("no free scoreboard row for worker %d; will retry", slot)
            return
        self.generation += 1
        parent_ch, child_ch = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        keep = self.shared_socks if self.mode is Mode.SHARED else self.slot_socks.get(slot, [])
        spec = worker_mod.WorkerSpec(
            slot=slot,
            generation=self.generation,
            row=row,
            mode=self.mode,
            config=self.config,
            binds=self.binds,
            listen_fds=tuple(s.fileno() for s in keep),
            channel=child_ch,
            scoreboard=self.scoreboard,
            master_pid=self.pid,
            max_requests=self._request_limit(),
            uid=self.uid,
            gid=self.gid,
        )
        now = time.monotonic()
        self.scoreboard.write(
            row,
            pid=0,
            slot=slot,
            generation=self.generation,
            state=SlotState.STARTING,
            started=now,
            heartbeat=now,
        )
        pid = os.fork()
        if pid == 0:  # child
            code: int = ExitCode.ERROR
            try:
                self._after_fork_in_child(parent_ch, keep)
                code = worker_mod.run(spec)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        child_ch.close()
        parent_ch.setblocking(False)
        handle = WorkerHandle(
            pid=pid,
            slot=slot,
            generation=self.generation,
            row=row,
            channel=parent_ch,
            started=now,
            opens_socket=self.mode is Mode.REUSEPORT and not keep,
            replaces=replaces,
            reason=reason,
            last_busy=now,
        )
        self.workers[pid] = handle
        log.debug("spawned worker %d (pid %d, %s)", slot, pid, reason)

    def _request_limit(self) -> int:
        limit = self.config.max_requests
        if limit and self.config.max_requests_jitter:
            limit += random.randint(0, self.config.max_requests_jitter)
        return limit

    def _after_fork_in_child(self, parent_ch: socket.socket, keep: list[socket.socket]) -> None:
        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        parent_ch.close()
        for handle in self.workers.values():
            handle.channel.close()
        if self.control is not None:
            self.control.close_in_child()
        # A worker holds only its own listeners, so /proc and `ss` show
        # exactly which worker owns which socket.
        kept = {id(s) for s in keep}
        for sock in [*self.shared_socks, *self.reservations]:
            if id(sock) not in kept:
                sock.close()
        for socks in self.slot_socks.values():
            for sock in socks:
                if id(sock) not in kept:
                    sock.close()

    # ------------------------------------------------------------------ messages
    def _read_channel(self, handle: WorkerHandle) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(handle.channel, 65536, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            try:
                message: dict[str, Any] = json.loads(data)
            except ValueError:
                for fd in fds:
                    os.close(fd)
                continue
            self._on_message(handle, message, fds)

    def _on_message(self, handle: WorkerHandle, message: dict[str, Any], fds: list[int]) -> None:
        kind = message.get("type")
        if kind == "listening":
            self._on_listening(handle, fds)
        elif kind == "ready":
            for fd in fds:
                os.close(fd)
            self._on_ready(handle, str(message.get("interface", "")))
        elif kind == "recycle":
            if not handle.replaced and not handle.stopping:
                log.info(
                    "Worker %d (pid %d) served %s requests (--max-requests): recycling it",
                    handle.slot,
                    handle.pid,
                    message.get("requests"),
                )
                self.replacements.append(
                    _Replacement(slot=handle.slot, reason="recycle", pid=handle.pid)
                )
        elif kind == "boot_error":
            for fd in fds:
                os.close(fd)
            handle.boot_error = (
                int(message.get("code", ExitCode.BOOT_ERROR)),
                str(message.get("message", "")),
            )
        else:
            for fd in fds:
                os.close(fd)

    def _on_listening(self, handle: WorkerHandle, fds: list[int]) -> None:
        handle.got_socket = True
        if not fds:
            return
        if self.mode is Mode.REUSEPORT and handle.slot not in self.slot_socks:
            self.slot_socks[handle.slot] = [socket.socket(fileno=fd) for fd in fds]
            for group in self.groups:
                group.joined(handle.slot)
        else:
            for fd in fds:
                os.close(fd)

    def _on_ready(self, handle: WorkerHandle, interface: str) -> None:
        handle.ready = True
        handle.interface = interface
        handle.last_busy = time.monotonic()
        if handle.replaces is not None:
            old = self.workers.get(handle.replaces)
            handle.replaces = None
            if old is not None:
                log.info(
                    "Worker %d (pid %d) is ready; stopping pid %d (%s)",
                    handle.slot,
                    handle.pid,
                    old.pid,
                    handle.reason,
                )
                old.stopping = True
                old.stop_deadline = time.monotonic() + self.config.graceful_timeout + 5.0
                self._kill(old, signal.SIGTERM)
            if handle.reason == "reload" and not any(
                r.reason == "reload" for r in self.replacements
            ):
                log.info("Reload complete: %d worker(s) of the new code", len(self._live()))
        if not self.announced_ready and self._ready_count() >= self.target:
            self.announced_ready = True
            log.info(
                "Ready: %d workers serving %s as %s (%s mode)",
                self._ready_count(),
                self.config.app_label,
                handle.interface,
                self.mode.value,
            )

    def _ready_count(self) -> int:
        return sum(1 for h in self.workers.values() if h.ready and not h.stopping)

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
                continue
            self._read_channel(handle)  # a boot error may still sit in the channel
            handle.channel.close()
            if self.scoreboard is not None:
                self.scoreboard.clear(handle.row)
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
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL and not handle.stopping and handle.abort_sent_at is None:
                how += " (perhaps out of memory?)"
        else:
            how = f"exited with code {code}"
        if handle.draining:
            self._release_slot(handle.slot)
        if handle.replaces is not None:
            # A replacement died before it was ready: keep the worker it was to replace.
            old = self.workers.get(handle.replaces)
            if old is not None:
                old.replaced = False
            message = handle.boot_error[1] if handle.boot_error else f"the new worker {how}"
            log.error(
                "%s of worker %d failed: %s. The running worker (pid %s) keeps serving.",
                handle.reason.capitalize(),
                handle.slot,
                message,
                handle.replaces,
            )
            if handle.reason == "reload":
                self.replacements = collections.deque(
                    r for r in self.replacements if r.reason != "reload"
                )
            return
        boot_failed = not handle.ready and (
            handle.boot_error is not None or code in _BOOT_EXIT_CODES
        )
        if boot_failed and not self.stopping:
            exit_code, message = handle.boot_error or (code, f"worker {how} before it was ready")
            if self._ready_count() == 0:
                log.error("Worker %d failed to boot: %s", handle.slot, message)
                log.error(
                    "Shutting down: a worker that cannot boot would only be respawned in a loop"
                )
                self.exit_code = exit_code
                self._begin_stop("boot error")
                return
            self._note_crash(handle, f"failed to boot: {message}")
            return
        if handle.stopping or self.stopping:
            log.info("Worker %d (pid %d) %s", handle.slot, handle.pid, how)
            return
        self._note_crash(handle, how)

    def _note_crash(self, handle: WorkerHandle, how: str) -> None:
        log.warning("Worker %d (pid %d) %s; starting a replacement", handle.slot, handle.pid, how)
        history = self.history.setdefault(handle.slot, _SlotHistory())
        if time.monotonic() - handle.started < 1.0 or not handle.ready:
            history.quick_failures += 1
            delay = min(30.0, 0.1 * 2 ** (history.quick_failures - 1))
            history.not_before = time.monotonic() + delay
            if history.quick_failures > 1:
                log.warning(
                    "Worker %d crashed %d times in a row right after start; next try in %.1fs",
                    handle.slot,
                    history.quick_failures,
                    delay,
                )
        else:
            # It served for a while: the next crash starts the count again.  (Not
            # reset when a worker becomes ready: one that crashes right after
            # that would be respawned in a tight loop.)
            history.quick_failures = 0
        if (
            self.config.pm is not ProcessManager.STATIC
            and handle.slot in self.slot_socks
            and time.monotonic() >= history.not_before
            and not any(h.slot == handle.slot for h in self._live())
        ):
            # Its socket is held and may hold connections: respawn into it now,
            # whatever the pool policy would say.
            self._spawn(handle.slot, reason="respawn")

    # ------------------------------------------------------------------ heartbeat
    def _check_workers(self) -> None:
        """Heartbeats, stop deadlines and busy/idle bookkeeping."""
        if self.scoreboard is None:
            return
        timeout = self.config.timeout
        now = time.monotonic()
        for handle in list(self.workers.values()):
            if handle.abort_sent_at is not None:
                if now - handle.abort_sent_at >= _KILL_AFTER_ABORT:
                    self._kill(handle, signal.SIGKILL)
                continue
            if handle.stopping and handle.stop_deadline is not None and now >= handle.stop_deadline:
                log.warning(
                    "Worker %d (pid %d) did not stop within the graceful timeout; killing it",
                    handle.slot,
                    handle.pid,
                )
                self._kill(handle, signal.SIGKILL)
                handle.abort_sent_at = now
                continue
            if not handle.ready:
                continue
            row = self.scoreboard.read(handle.row)
            if row.pid != handle.pid:
                continue
            if row.in_flight > 0 or row.requests != handle.last_requests:
                handle.last_busy = now
                handle.seen_busy = True
            handle.last_requests = row.requests
            if timeout > 0 and now - row.heartbeat > timeout:
                log.error(
                    "Worker %d (pid %d) is stuck: its event loop has not run for %.1fs "
                    "(--timeout %.1f); sending SIGABRT",
                    handle.slot,
                    handle.pid,
                    now - row.heartbeat,
                    timeout,
                )
                self._kill(handle, signal.SIGABRT)
                handle.abort_sent_at = now

    # ------------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        """What `reuseport status` shows."""
        now = time.monotonic()
        workers = []
        totals = {"requests": 0, "in_flight": 0, "connections": 0, "accepted": 0, "queue": 0}
        for handle in sorted(self.workers.values(), key=lambda h: (h.slot, h.generation)):
            row = self.scoreboard.read(handle.row) if self.scoreboard else None
            own = row if row is not None and row.pid == handle.pid else None
            if handle.draining:
                state = "draining"
            elif handle.stopping:
                state = "stopping"
            elif handle.ready:
                state = "ready"
            else:
                state = "starting"
            # Shared mode has one queue for everybody: it goes in the totals only.
            socks = [] if self.mode is Mode.SHARED else self.slot_socks.get(handle.slot, [])
            queue: int | None = None
            queue_max: int | None = None
            for sock in socks:
                depth = listen_queue_depth(sock)
                if depth is not None:
                    queue = (queue or 0) + depth[0]
                    queue_max = (queue_max or 0) + depth[1]
            entry = {
                "slot": handle.slot,
                "pid": handle.pid,
                "generation": handle.generation,
                "state": state,
                "uptime": now - handle.started,
                "requests": own.requests if own else 0,
                "in_flight": own.in_flight if own else 0,
                "connections": own.connections if own else 0,
                "accepted": own.accepted if own else 0,
                "queue": queue,
                "queue_max": queue_max,
                "heartbeat_age": (now - own.heartbeat) if own else None,
            }
            workers.append(entry)
            if own:
                totals["requests"] += own.requests
                totals["in_flight"] += own.in_flight
                totals["connections"] += own.connections
                totals["accepted"] += own.accepted
        totals["queue"] = self._queued()
        config = self.config
        return {
            "master": {
                "pid": self.pid,
                "uptime": now - self.started,
                "mode": self.mode.value,
                "app": config.app_label,
                "binds": [str(b) for b in self.binds],
                "generation": self.generation,
            },
            "pool": {
                "pm": config.pm.value,
                "target": self.target if config.pm is ProcessManager.STATIC else len(self._live()),
                "running": len(self._live()),
                "max_workers": config.pool_limit,
                "min_spare": config.effective_min_spare,
                "max_spare": config.effective_max_spare,
                "start_workers": config.effective_start_workers,
                "idle_timeout": config.idle_timeout,
                "max_requests": config.max_requests,
                "timeout": config.timeout,
            },
            "workers": workers,
            "totals": totals,
            "steering": {
                "kind": config.steering.value,
                "steered_away": list(self.steered_away),
                "stalled": list(self.stalled),
            },
        }

    # ------------------------------------------------------------------ pid file
    def _write_pid_file(self) -> None:
        path = self.config.pid_file
        if not path:
            return
        try:
            with open(path, "w", encoding="ascii") as fh:
                fh.write(f"{self.pid}\n")
        except OSError as exc:
            raise BootError(
                f"cannot write the pid file {path!r}: {exc.strerror} "
                f"({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            ) from None

    def _remove_pid_file(self) -> None:
        if self.config.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(self.config.pid_file)
