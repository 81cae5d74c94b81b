"""The master: binds, forks workers, reaps them, and applies the pool policy.

Rules (they keep a prefork master sane):
- no event loop and no thread, ever: the master sleeps in ``poll()`` on the
  signal wake-up pipe and the workers' channels, with a short tick;
- signal handlers only append to a queue; the main loop dispatches each
  signal to ``handle_<name>()``;
- this is the only module that calls ``fork``, ``waitpid`` and ``kill``.

Sockets.  Shared mode: the master binds one SO_REUSEADDR socket per address
before forking and every worker inherits it.  Reuseport mode: the master
binds, without listening, one SO_REUSEPORT socket per address (the
*reservation*: it fixes the port when port 0 was asked for and keeps the port
ours while no worker listens); each worker of a new slot opens its own
listening socket and hands the master a duplicate over its channel
(SCM_RIGHTS).  The master keeps that duplicate for as long as the slot exists,
so when the worker dies the kernel keeps the slot's accept queue, and the
worker that replaces it inherits the very same socket: connections queued for
a crashed worker are served by its successor instead of being reset (this is
how nginx keeps per-worker reuseport sockets across respawns).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from . import worker as worker_mod
from .config import BindAddress, Config, Mode
from .errors import BootError, ExitCode
from .scoreboard import Scoreboard, SlotState
from .sockets import bind_shared, check_port_guard, reserve_port

__all__ = ["Arbiter"]

log = logging.getLogger("reuseport.master")

_TICK = 0.5
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
    ready: bool = False
    stopping: bool = False
    stop_deadline: float | None = None
    abort_sent_at: float | None = None
    boot_error: tuple[int, str] | None = None
    interface: str = ""


@dataclass(slots=True)
class _SlotHistory:
    """Crash-loop bookkeeping for one slot."""

    quick_failures: int = 0
    not_before: float = 0.0


@dataclass(slots=True)
class _Pending:
    signals: collections.deque[int] = field(default_factory=collections.deque)


class Arbiter:
    def __init__(self, config: Config, mode: Mode, mode_reason: str) -> None:
        if mode is Mode.AUTO:
            raise ValueError("the arbiter needs a resolved mode")
        self.config = config
        self.mode = mode
        self.mode_reason = mode_reason
        self.pid = os.getpid()
        self.binds: tuple[BindAddress, ...] = config.binds
        self.shared_socks: list[socket.socket] = []
        self.reservations: list[socket.socket] = []
        self.slot_socks: dict[int, list[socket.socket]] = {}
        self.workers: dict[int, WorkerHandle] = {}  # by pid
        self.history: dict[int, _SlotHistory] = {}
        self.target = config.initial_workers
        self.generation = 0
        self.pending = _Pending()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int = ExitCode.OK
        self.announced_ready = False
        self.scoreboard: Scoreboard | None = None
        self._wake_r = -1
        self._wake_w = -1

    # ------------------------------------------------------------------ setup
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        queue = self.pending.signals

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
        except BaseException:
            self._close_sockets()
            raise
        self.binds = tuple(resolved)

    def _close_sockets(self) -> None:
        for sock in [*self.shared_socks, *self.reservations]:
            sock.close()
        for socks in self.slot_socks.values():
            for sock in socks:
                sock.close()
        self.shared_socks.clear()
        self.reservations.clear()
        self.slot_socks.clear()

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
            self.scoreboard = Scoreboard(self.config.pool_limit)
            self._loop()
        finally:
            self._terminate_all(signal.SIGKILL)
            self._reap_blocking()
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
        registered: dict[int, WorkerHandle] = {}
        while True:
            self._dispatch_signals()
            self._reap()
            if self.stopping:
                if not self.workers:
                    return
                self._enforce_stop_deadline()
            else:
                self._maintain_pool()
                self._check_heartbeats()
            # Keep the poll set in step with the live channels.
            live = {h.channel.fileno(): h for h in self.workers.values() if h.channel.fileno() >= 0}
            for fd in set(registered) - set(live):
                with contextlib.suppress(KeyError, ValueError):
                    poller.unregister(fd)
                del registered[fd]
            for fd, handle in live.items():
                if fd not in registered:
                    poller.register(fd, select.POLLIN)
                    registered[fd] = handle
            try:
                events = poller.poll(_TICK * 1000)
            except InterruptedError:
                continue
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                elif fd in registered:
                    self._read_channel(registered[fd])

    # ------------------------------------------------------------------ signals
    def _dispatch_signals(self) -> None:
        queue = self.pending.signals
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
        if self.target >= self.config.pool_limit:
            log.warning(
                "SIGTTIN ignored: already at the pool limit of %d workers (raise --max-workers)",
                self.config.pool_limit,
            )
            return
        self.target += 1
        log.info("SIGTTIN: workers %d -> %d", self.target - 1, self.target)

    def handle_sigttou(self) -> None:
        if self.target <= 1:
            log.warning("SIGTTOU ignored: keeping the last worker")
            return
        self.target -= 1
        log.info("SIGTTOU: workers %d -> %d", self.target + 1, self.target)

    def handle_sighup(self) -> None:
        log.warning("SIGHUP: rolling reload is not available yet; ignored")

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
                    "graceful timeout expired; killing worker(s) %s",
                    ", ".join(map(str, alive)),
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

    # ------------------------------------------------------------------ workers
    def _slots_in_use(self) -> set[int]:
        return {h.slot for h in self.workers.values() if not h.stopping}

    def _maintain_pool(self) -> None:
        now = time.monotonic()
        used = self._slots_in_use()
        # Scale down: retire the highest slots above the target.
        for handle in sorted(self.workers.values(), key=lambda h: -h.slot):
            if len(used) <= self.target:
                break
            if not handle.stopping and handle.slot >= self.target:
                log.info("retiring worker %d (pid %d)", handle.slot, handle.pid)
                self._retire(handle)
                used.discard(handle.slot)
        for slot in range(self.target):
            if slot in used:
                continue
            history = self.history.setdefault(slot, _SlotHistory())
            if now < history.not_before:
                continue
            self._spawn(slot)
            used.add(slot)

    def _retire(self, handle: WorkerHandle) -> None:
        handle.stopping = True
        handle.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self._kill(handle, signal.SIGTERM)

    def _spawn(self, slot: int) -> None:
        assert self.scoreboard is not None
        row = self.scoreboard.free_index()
        if row is None:
            log.error("no free scoreboard row for slot %d", slot)
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
            pid=pid, slot=slot, generation=self.generation, row=row, channel=parent_ch, started=now
        )
        self.workers[pid] = handle
        log.debug("spawned worker %d (pid %d)", slot, pid)

    def _after_fork_in_child(self, parent_ch: socket.socket, keep: list[socket.socket]) -> None:
        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        parent_ch.close()
        for handle in self.workers.values():
            handle.channel.close()
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
        if kind == "ready":
            if fds:
                if self.mode is Mode.REUSEPORT and handle.slot not in self.slot_socks:
                    self.slot_socks[handle.slot] = [socket.socket(fileno=fd) for fd in fds]
                else:
                    for fd in fds:
                        os.close(fd)
            handle.ready = True
            handle.interface = str(message.get("interface", ""))
            self.history.setdefault(handle.slot, _SlotHistory()).quick_failures = 0
            if not self.announced_ready and self._ready_count() >= self.target:
                self.announced_ready = True
                log.info(
                    "Ready: %d workers serving %s as %s (%s mode)",
                    self._ready_count(),
                    self.config.app_label,
                    handle.interface,
                    self.mode.value,
                )
        elif kind == "boot_error":
            for fd in fds:
                os.close(fd)
            handle.boot_error = (
                int(message.get("code", ExitCode.BOOT_ERROR)),
                str(message.get("message", "")),
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
            if -code == signal.SIGKILL and not handle.stopping:
                how += " (perhaps out of memory?)"
        else:
            how = f"exited with code {code}"
        boot_failed = not handle.ready and (
            handle.boot_error is not None or code in _BOOT_EXIT_CODES
        )
        if boot_failed:
            exit_code, message = handle.boot_error or (code, f"worker {how} before it was ready")
            if not self.stopping:
                log.error("Worker %d failed to boot: %s", handle.slot, message)
                log.error(
                    "Shutting down: a worker that cannot boot would only be respawned in a loop"
                )
                self.exit_code = exit_code
                self._begin_stop("boot error")
            return
        if handle.stopping or self.stopping:
            log.info("Worker %d (pid %d) %s", handle.slot, handle.pid, how)
            return
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

    # ------------------------------------------------------------------ heartbeat
    def _check_heartbeats(self) -> None:
        timeout = self.config.timeout
        if timeout <= 0 or self.scoreboard is None:
            return
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
            if now - row.heartbeat > timeout:
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
