"""A worker: one process, one event loop, one hosted application.

Rules: this is the only module that creates an event loop.  It runs in a child
the arbiter just forked and never returns into the master's code: ``run``
returns an exit code that the arbiter passes to ``os._exit``.

Boot sequence: set the process title and the parent-death signal, choose the
loop, get the listening sockets (inherit them from the master, and in
reuseport mode for a new slot open our own with SO_REUSEPORT and hand the
master a duplicate over the channel), load the TLS certificate (before the
privileges go: a key may be root's only; after a reload the renewed files
are read), drop privileges (--user/--group), load --env-file into the
environment, import the app (calling it with --factory), run its startup
(ASGI lifespan), serve, then tell the master "ready".  Sockets come
before the app on purpose: a new socket joins its SO_REUSEPORT group at once,
in the order the master expects, and the master holds a copy from then on, so
nothing queued in it is lost whatever the app does; and a port below 1024 may
need the privileges the app must not run with.  Any failure on the way is
reported to the master as a boot error with an exit code from ``ExitCode`` and
the worker exits; the master halts instead of respawning a worker that cannot
start.

The worker must never outlive the master: the kernel sends SIGTERM when the
master dies (PR_SET_PDEATHSIG), the loop also stops when the channel to the
master reaches EOF, and a small watchdog thread that notices the parent is
gone enforces a hard deadline in case the loop is stuck.

Stopping while booting.  A worker that does not serve yet has nothing in
flight, so a stop signal during its boot ends it at once: the boot (an app
import, a lifespan startup waiting on a database) is cancelled and the
worker exits with code 0, without waiting for ``--graceful-timeout``.  Once
it has begun to serve, the boot completes and the stop is the usual
graceful one.  From the fork to the moment the event loop handles signals,
stop signals are blocked (the master blocks them around ``fork``, so even
one sent the instant the child exists waits): it stays pending and reaches
the loop's handler as soon as ``main`` unblocks it, instead of killing the
worker mid-boot with its default action (or being dropped by Python's own
after-fork cleanup of signals caught in the child before it).

One report per boot failure: a worker that cannot boot sends the whole
story (the traceback included) to the master in its ``boot_error`` message
and prints nothing itself, so the master can show it once however many
workers fail the same way; only when the master cannot be told (the
channel is gone) does the worker log it.

``--max-requests``: the request that reaches the limit calls ``_on_limit``
at once (the adapter that counts it calls ``WorkerStats.reached_limit``; a
poll of the counter would let a keep-alive client get in hundreds more).
From then on the worker takes no new requests while its replacement
boots: keep-alive goes off (each connection closes after its next
response, which says ``Connection: close``, so its client reconnects to
another worker), accepting pauses (the master also steers new connections
away from the slot), rescues end, and the master is asked for a
replacement (``recycle``).  If the replacement fails, the master says
``resume`` and the worker serves on.

Messages from the master arrive on the channel: ``drain`` means "the kernel no
longer sends you new connections (a BPF program steers them away): accept
what is still queued for you, then stop"; ``resume`` (above).  Messages to
the master: ``listening`` (with the new socket fds), ``ready``, ``recycle``
(the request limit is reached) and ``boot_error``.  Each is one JSON object in one
SOCK_SEQPACKET datagram (``send_message`` / ``recv_messages``).

--user/--group come in two halves: the master resolves the names before it
forks (``resolve_user``, so a typo is a usage error, not a boot loop) and each
worker drops to them after opening its sockets (``drop_privileges``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import setproctitle

from . import apps, envfile, logs, tls
from .apps.base import HostedApp, StopReason, WorkerContext, WorkerStats
from .config import BindAddress, Config, LoopKind, Mode, cpu_for_slot
from .connections import LoadPublisher
from .errors import BootError, ConfigError, ExitCode, ReuseportError
from .loadboard import LoadBoard
from .rescue import Rescuer
from .scoreboard import Scoreboard, SlotState
from .signals import STOP_SIGNALS
from .sockets import adopt, bind_reuseport, datagram_queue, listen_queue_depth

__all__ = [
    "WorkerSpec",
    "drop_privileges",
    "recv_messages",
    "resolve_user",
    "run",
    "send_message",
]

log = logging.getLogger("reuseport.worker")

_PR_SET_PDEATHSIG = 1
_WATCHDOG_GRACE = 5.0
_WATCHDOG_POLL = 1.0
_BEAT_INTERVAL = 0.25  # scoreboard freshness; the pool's idle/busy view needs it
_DRAIN_POLL = 0.01
_DRAIN_QUIET = 1.0  # the queue must stay empty this long: handshakes in flight land
# (on a starved machine the final ACK of a handshake can sit in softirq for
# well over 100 ms; a connection that lands after we close would be reset)
_RECYCLE_POLL = 0.05
_COST_REQUESTS = 8  # fewest requests a cost figure is measured over


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSpec:
    """Everything a freshly forked worker needs to know."""

    slot: int
    generation: int
    row: int  # scoreboard row index
    mode: Mode  # REUSEPORT or SHARED
    config: Config
    binds: tuple[BindAddress, ...]  # to open with SO_REUSEPORT (a new slot), real ports
    listen_fds: tuple[int, ...]  # inherited listeners (the slot's own first, then shared)
    channel: socket.socket
    scoreboard: Scoreboard
    master_pid: int
    max_requests: int = 0  # this worker's recycle limit (jitter applied); 0 = never
    uid: int | None = None  # drop to this user after opening the sockets
    gid: int | None = None
    board: LoadBoard | None = None  # per-slot load shared with the kernel and siblings
    lane: int = 0  # this worker's cells in its slot's row of the board
    # Sibling rescue: every other slot's inherited listeners, (slot, fds per bind).
    siblings: tuple[tuple[int, tuple[int, ...]], ...] = ()


def send_message(
    channel: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(channel, [data], fds)
    else:
        channel.send(data)


def recv_messages(channel: socket.socket) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """Every message waiting on a non-blocking ``channel``, with the fds it carries.

    Stops when nothing is left (or the peer is gone).  A message that is not
    JSON comes out as ``{}``; the caller owns the fds either way.
    """
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(channel, 65536, 16)
        except OSError:  # BlockingIOError, InterruptedError: read again on the next wake-up
            return
        if not data:
            return
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        yield (message if isinstance(message, dict) else {}), fds


def _set_parent_death_signal(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the watchdog thread still covers us
        pass


def _start_watchdog(master_pid: int, deadline: float) -> None:
    """Exit hard if the master goes away and we have not exited in time."""

    def watch() -> None:
        while os.getppid() == master_pid:
            time.sleep(_WATCHDOG_POLL)
        # Master gone: ask for a graceful stop, then insist.
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(deadline)
        os._exit(ExitCode.ERROR)

    threading.Thread(target=watch, name="reuseport-watchdog", daemon=True).start()


def resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """Turn --user/--group into ids, refusing what cannot work (in the master)."""
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


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """setgid/setuid for --user/--group; the master checked they are possible."""
    try:
        if gid is not None and gid != os.getegid():
            os.setgroups([gid])
            os.setgid(gid)
        if uid is not None and uid != os.geteuid():
            os.setuid(uid)
    except OSError as exc:
        raise BootError(
            f"cannot switch to uid {uid} / gid {gid}: {exc.strerror}; --user and --group "
            "need the server to be started as root"
        ) from None


def _loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind is LoopKind.ASYNCIO:
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind is LoopKind.UVLOOP:
            raise BootError(
                "--loop uvloop was asked for but uvloop is not installed: "
                "pip install uvloop, or use --loop asyncio"
            ) from None
        log.warning("uvloop is not installed; using the asyncio loop")
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pid = os.getpid()
        self.stats = WorkerStats()
        self.started = time.monotonic()
        self.state = SlotState.STARTING
        self.stop: asyncio.Event | None = None
        self.sockets: list[socket.socket] = []
        self.drain_task: asyncio.Task[None] | None = None
        # Sibling rescue: other slots' sockets, until the rescuer takes them.
        self.siblings: dict[int, list[socket.socket]] = {}
        for slot, fds in spec.siblings:
            self.siblings[slot] = [socket.socket(fileno=fd) for fd in fds]
        self.rescuer: Rescuer | None = None
        self.stop_reason = StopReason.STOP  # the master says otherwise before it signals
        self._cost = 0  # ns of CPU per request, smoothed (see _measure_cost)
        self._cost_cpu = time.process_time_ns()
        self._cost_requests = 0
        self.serving = False  # the app accepts connections: a stop is a graceful one now
        self.hosted: HostedApp | None = None
        # --max-requests reached (see the module docstring): whether the
        # master was told yet, whether we accept, and the pause under way.
        self.recycling = False
        self.recycle_asked = False
        self.accepting = True
        self.pause_task: asyncio.Future[bool] | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # started from the channel

    def beat(self) -> None:
        s = self.stats
        self.spec.scoreboard.write(
            self.spec.row,
            pid=self.pid,
            slot=self.spec.slot,
            generation=self.spec.generation,
            state=self.state,
            started=self.started,
            heartbeat=time.monotonic(),
            requests=s.requests,
            in_flight=s.in_flight,
            connections=s.connections,
            accepted=s.accepted,
            rescued=s.rescued,
        )
        if s.lane is not None:
            self._measure_cost(s.lane)

    def _measure_cost(self, lane: LoadPublisher) -> None:
        """Publish what a request costs this worker: CPU time per request since the last one.

        Measured over at least ``_COST_REQUESTS`` requests (an idle worker
        keeps its last figure) and smoothed, so p2c steering compares expected
        delays, not bare counts (see ``loadboard.py``).
        """
        requests = self.stats.requests - self._cost_requests
        if requests < _COST_REQUESTS:
            return
        cpu = time.process_time_ns()
        cost = (cpu - self._cost_cpu) // requests
        self._cost_cpu, self._cost_requests = cpu, self.stats.requests
        self._cost = cost if not self._cost else (self._cost + cost) // 2
        lane.publish_cost(self._cost)

    def _open_sockets(self) -> tuple[list[socket.socket], list[int]]:
        """Return (sockets to serve, fds to hand to the master)."""
        spec = self.spec
        inherited = [adopt(fd, datagram=True) for fd in spec.listen_fds]
        if not spec.binds:
            if not inherited:
                raise BootError("internal error: a worker was started without a socket")
            return inherited, []
        if spec.mode is not Mode.REUSEPORT:
            raise BootError("internal error: a shared-mode worker was asked to open sockets")
        socks: list[socket.socket] = []
        try:
            for addr in spec.binds:
                socks.append(bind_reuseport(addr, spec.config.backlog))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return [*socks, *inherited], [s.fileno() for s in socks]

    async def _boot(self) -> HostedApp:
        spec = self.spec
        config = spec.config
        # Sockets first: a new reuseport socket joins the group now, in the
        # order the master expects, and the master holds a copy from here on.
        socks, handover = self._open_sockets()
        self.sockets = socks
        send_message(spec.channel, {"type": "listening"}, handover)
        tls_context = tls.server_context(config) if config.tls else None
        # Privileges go right after the sockets and the key (a port below
        # 1024 or the key may need root) and before any of the user's code runs.
        drop_privileges(spec.uid, spec.gid)
        envfile.apply(config.env_file)
        ctx = WorkerContext(
            pid=self.pid,
            slot=spec.slot,
            generation=spec.generation,
            mode=spec.mode,
            config=config,
            stats=self.stats,
            tls=tls_context,
        )
        hosting = apps.host(
            config,
            ctx,
            streams=any(sock.type != socket.SOCK_DGRAM for sock in socks),
            datagrams=any(sock.type == socket.SOCK_DGRAM for sock in socks),
        )
        hosted, interface, reason = hosting.app, hosting.interface, hosting.reason
        self.hosted = hosted
        self.stats.request_limit = spec.max_requests
        self.stats.on_limit = self._on_limit
        if interface == "wsgi" and spec.slot == 0:
            log.info(
                "serving %s on %d app threads per worker (%s)",
                config.app_label,
                config.threads,
                reason,
            )
        await hosted.startup()
        board = spec.board
        if board is not None and spec.slot < board.capacity:
            self.stats.lane = board.lane(spec.slot, spec.lane)
        self.serving = True
        try:
            await hosted.serve(socks)
        except OSError as exc:
            raise BootError(f"could not start serving: {exc}") from None
        if spec.config.rescue and spec.mode is Mode.REUSEPORT:
            self.rescuer = Rescuer(hosted)
            for slot, sibling_socks in self.siblings.items():
                self.rescuer.add(slot, sibling_socks)
            self.siblings.clear()
        self.state = SlotState.READY
        self.beat()
        send_message(spec.channel, {"type": "ready", "interface": interface, "reason": reason})
        log.log(
            logs.TRACE,
            "worker %d (pid %d) booted in %.3fs: sockets, TLS, app import, startup",
            spec.slot,
            self.pid,
            time.monotonic() - self.started,
        )
        log.debug(
            "worker %d serving %s as %s (%s)",
            spec.slot,
            config.app_label,
            interface,
            reason,
        )
        return hosted

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, logs.reopen)  # relayed by the master
        # Blocked since the fork (the master's doing): one that came meanwhile
        # stops us before the boot begins (it also reaches the loop now).
        if signal.sigpending() & STOP_SIGNALS:
            self.stop.set()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.spec.channel.setblocking(False)
        loop.add_reader(self.spec.channel.fileno(), self._on_channel)
        self.beat()
        try:
            hosted = await self._boot_unless_stopped()
        except ReuseportError as exc:
            return self._boot_failed(exc.exit_code, str(exc))
        except Exception as exc:
            text = "".join(traceback.format_exception(exc)).rstrip()
            return self._boot_failed(ExitCode.BOOT_ERROR, f"worker failed to start:\n{text}")
        if hosted is None:
            log.info(
                "Worker %d (pid %d) stopped while booting, before it served: nothing was in flight",
                self.spec.slot,
                self.pid,
            )
            return ExitCode.OK
        interval = self._beat_interval()
        limit = self.spec.max_requests
        poll = min(interval, _RECYCLE_POLL) if limit else interval
        next_beat = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.beat()
                next_beat = now + interval
            if limit and not self.recycling and self.stats.requests >= limit:
                self._on_limit()  # an adapter that does not call it itself
            if self.recycling and not self.recycle_asked:
                self._ask_recycle()  # the channel was full: again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), poll)
        loop.remove_reader(self.spec.channel.fileno())
        self.state = SlotState.STOPPING
        self.beat()
        self._on_channel()  # the master says why before it signals: read it now
        if self.pause_task is not None:
            await self.pause_task  # the shutdown closes what the pause may still hold
        if self._tasks:  # a resume under way: let it finish, the shutdown closes it all
            await asyncio.wait(set(self._tasks))
        if self.rescuer is not None:
            self.rescuer.close()  # rescue no one while stopping
        await hosted.shutdown(self.spec.config.graceful_timeout, self.stop_reason)
        self.beat()
        return ExitCode.OK

    def _on_limit(self) -> None:
        """``--max-requests`` reached: no new requests here while the replacement boots."""
        hosted = self.hosted
        stop = self.stop
        if self.recycling or hosted is None or stop is None or stop.is_set():
            return
        if self.drain_task is not None:
            return  # leaving anyway
        self.recycling = True
        self.accepting = False
        hosted.set_keep_alive(False)
        if self.rescuer is not None:
            for slot in list(self.rescuer.watches):
                self.rescuer.end(slot)
        self.pause_task = asyncio.ensure_future(hosted.pause_accepting())
        self._ask_recycle()

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ask_recycle(self) -> None:
        try:
            send_message(self.spec.channel, {"type": "recycle", "requests": self.stats.requests})
        except OSError:  # full (tried again each poll), or the master is gone (we stop)
            return
        self.recycle_asked = True

    async def _accept_again(self) -> None:
        """After a pause for ``--max-requests``: serve the same sockets again, keep-alive on."""
        if self.pause_task is not None:
            await self.pause_task
            self.pause_task = None
        hosted = self.hosted
        if hosted is None or self.accepting:
            return
        self.accepting = True
        if hosted.paused is not None:
            self.sockets = await hosted.resume_accepting()
        if self.drain_task is None and self.stop is not None and not self.stop.is_set():
            hosted.set_keep_alive(True)

    async def _boot_unless_stopped(self) -> HostedApp | None:
        """Boot, unless a stop comes first: then give the boot up at once (None).

        A worker that does not serve yet has nothing in flight.  Once it has
        begun to serve (connections may be accepted), the boot completes and
        the caller stops it gracefully.
        """
        assert self.stop is not None
        if self.stop.is_set():
            return None
        boot = asyncio.ensure_future(self._boot())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({boot, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if boot.done() or self.serving:
            return await boot
        boot.cancel()
        await asyncio.wait({boot})
        if boot.cancelled():
            return None
        error = boot.exception()
        if error is not None:  # raised while being cancelled: the stop is what counts
            log.debug("worker %d: its boot ended with %r as it was stopped", self.spec.slot, error)
            return None
        return boot.result()  # it finished anyway: stopped gracefully by the caller

    def _on_channel(self) -> None:
        assert self.stop is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.spec.channel, 65536, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:  # the master is gone
                asyncio.get_running_loop().remove_reader(self.spec.channel.fileno())
                self.stop.set()
                return
            try:
                message = json.loads(data)
            except ValueError:
                message = {}
            self._on_message(message if isinstance(message, dict) else {}, fds)

    def _on_message(self, message: dict[str, Any], fds: list[int]) -> None:
        kind = message.get("type")
        slot = message.get("slot")
        if kind == "sibling" and isinstance(slot, int) and fds:
            socks = [socket.socket(fileno=fd) for fd in fds]
            if self.rescuer is not None:
                self.rescuer.add(slot, socks)
            else:  # still booting: the rescuer takes them when it starts
                for sock in self.siblings.pop(slot, ()):
                    sock.close()
                self.siblings[slot] = socks
            return
        for fd in fds:
            os.close(fd)
        if kind == "rescue" and isinstance(slot, int):
            running = self.stop is not None and not self.stop.is_set() and self.accepting
            if self.rescuer is not None and self.drain_task is None and running:
                if message.get("on"):
                    self.rescuer.begin(slot)
                else:
                    self.rescuer.end(slot)
        elif kind == "stop":
            with contextlib.suppress(ValueError):
                self.stop_reason = StopReason(message.get("reason"))
        elif kind == "resume" and not self.accepting:
            log.info(
                "Worker %d (pid %d): its replacement failed; serving on past --max-requests",
                self.spec.slot,
                self.pid,
            )
            self._later(self._accept_again())
        elif kind == "sibling_gone" and isinstance(slot, int):
            if self.rescuer is not None:
                self.rescuer.remove(slot)
            for sock in self.siblings.pop(slot, ()):
                sock.close()
        elif kind == "drain" and self.drain_task is None:
            # Our own slot leaves: serve what is queued for it, and rescue no one.
            if self.rescuer is not None:
                self.rescuer.close()
            self.stop_reason = StopReason.SCALE_DOWN
            self.drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Accept what is still queued on our (steered-away) sockets, then stop."""
        assert self.stop is not None
        if not self.accepting:  # paused for --max-requests: the queue needs us
            await self._accept_again()
        self.state = SlotState.DRAINING
        self.beat()
        started = time.monotonic()
        deadline = started + self.spec.config.graceful_timeout
        quiet_since: float | None = None
        accepted_at_start = accepted = self.stats.accepted
        datagrams_at_start = datagrams = self.stats.datagrams
        # Quiet means: nothing waits in the queue *and* nothing new was
        # accepted (or received, on a UDP socket) for a while.  An empty queue
        # alone proves little: a worker that accepts fast sees an empty queue
        # even while connections still arrive.
        while True:
            now = time.monotonic()
            if now >= deadline:
                log.warning(
                    "worker %d: its queue did not go quiet within the graceful timeout "
                    "(%d connections accepted while draining); closing it",
                    self.spec.slot,
                    self.stats.accepted - accepted_at_start,
                )
                break
            empty = all(_queued(sock) == 0 for sock in self._own_sockets())
            if not empty or self.stats.accepted != accepted or self.stats.datagrams != datagrams:
                quiet_since = None
                accepted = self.stats.accepted
                datagrams = self.stats.datagrams
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= _DRAIN_QUIET:
                log.info(
                    "Worker %d drained in %.2fs (%d connections accepted, %d datagrams "
                    "received while draining)",
                    self.spec.slot,
                    now - started,
                    accepted - accepted_at_start,
                    datagrams - datagrams_at_start,
                )
                break
            await asyncio.sleep(_DRAIN_POLL)
        self.stop.set()

    def _own_sockets(self) -> list[socket.socket]:
        """This slot's own listeners: without the shared ones (unix:, fd://) at the end.

        Only they are steered away from while draining; the shared queues go on.
        """
        shared = len(self.spec.config.shared_only_binds)
        return self.sockets[: len(self.sockets) - shared] if shared else list(self.sockets)

    def _beat_interval(self) -> float:
        timeout = self.spec.config.timeout
        return min(_BEAT_INTERVAL, timeout / 4) if timeout > 0 else _BEAT_INTERVAL

    def _boot_failed(self, code: int, message: str) -> int:
        """Tell the master why we cannot boot (it shows it); say it ourselves if it cannot hear."""
        try:
            send_message(
                self.spec.channel,
                {"type": "boot_error", "code": code, "message": _fit_message(message)},
            )
        except OSError:
            log.error("Worker %d could not boot: %s", self.spec.slot, message)
        return code


def _queued(sock: socket.socket) -> int | None:
    """What waits in one of our sockets: connections (TCP), bytes of datagrams (UDP)."""
    if sock.type == socket.SOCK_DGRAM:
        return datagram_queue(sock)
    depth = listen_queue_depth(sock)
    return None if depth is None else depth[0]


# A boot error travels in one datagram the master reads 64 KiB at a time; JSON
# may spell a character in six bytes.  A traceback's end says the most.
_MESSAGE_HEAD = 2000
_MESSAGE_TAIL = 8000


def _fit_message(message: str) -> str:
    if len(message) <= _MESSAGE_HEAD + _MESSAGE_TAIL:
        return message
    cut = len(message) - _MESSAGE_HEAD - _MESSAGE_TAIL
    return f"{message[:_MESSAGE_HEAD]}\n[... {cut} characters cut ...]\n{message[-_MESSAGE_TAIL:]}"


def _pin_to_cpu(slot: int) -> None:
    """``--cpu-affinity``: run on the slot's CPU of the mask inherited from the master."""
    try:
        cpu = cpu_for_slot(slot, os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # (a CPU taken offline since the master read its mask)
        log.warning(
            "worker %d: --cpu-affinity could not pin it (%s); it runs on any CPU", slot, exc
        )
        return
    log.debug("worker %d runs on CPU %d (--cpu-affinity)", slot, cpu)


def run(spec: WorkerSpec) -> int:
    """Run the worker to completion; return its exit code."""
    name = spec.config.proc_name or spec.config.app_label
    setproctitle.setproctitle(f"reuseport: worker {spec.slot} [{name}]")
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != spec.master_pid:
        return ExitCode.ERROR  # the master died before we got here
    faulthandler.enable()  # SIGABRT from the heartbeat check dumps the stuck stack
    if spec.config.cpu_affinity:
        _pin_to_cpu(spec.slot)  # before the app starts threads: they inherit the mask
    _start_watchdog(spec.master_pid, spec.config.graceful_timeout + _WATCHDOG_GRACE)
    worker = _Worker(spec)
    try:
        factory = _loop_factory(spec.config.loop)
    except ReuseportError as exc:
        return worker._boot_failed(exc.exit_code, str(exc))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(worker.main())
