"""A worker: one process, one event loop, one hosted application.

Rules: this is the only module that creates an event loop.  It runs in a child
the arbiter just forked and never returns into the master's code: ``run``
returns an exit code that the arbiter passes to ``os._exit``.

Boot sequence: set the process title and the parent-death signal, choose the
loop, import the app, run its startup (ASGI lifespan), get the listening
sockets (inherit them from the master, or in reuseport mode open our own with
SO_REUSEPORT and hand the master a duplicate over the channel), serve, then
tell the master "ready".  Any failure on the way is reported to the master as
a boot error with an exit code from ``ExitCode`` and the worker exits; the
master halts instead of respawning a worker that cannot start.

The worker must never outlive the master: the kernel sends SIGTERM when the
master dies (PR_SET_PDEATHSIG), and a small watchdog thread that waits on the
channel to the master enforces a hard deadline in case the loop is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import apps
from .apps.base import HostedApp, WorkerContext, WorkerStats
from .config import BindAddress, Config, Interface, LoopKind, Mode
from .errors import BootError, ExitCode, ReuseportError
from .scoreboard import Scoreboard, SlotState
from .sockets import adopt, bind_reuseport

__all__ = ["WorkerSpec", "run"]

log = logging.getLogger("reuseport.worker")

_PR_SET_PDEATHSIG = 1
_WATCHDOG_GRACE = 5.0


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSpec:
    """Everything a freshly forked worker needs to know."""

    slot: int
    generation: int
    row: int  # scoreboard row index
    mode: Mode  # REUSEPORT or SHARED
    config: Config
    binds: tuple[BindAddress, ...]  # with the real ports
    listen_fds: tuple[int, ...]  # inherited listeners; empty = open our own
    channel: socket.socket
    scoreboard: Scoreboard
    master_pid: int


def send_message(
    channel: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(channel, [data], fds)
    else:
        channel.send(data)


def _set_parent_death_signal(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the watchdog thread still covers us
        pass


def _start_watchdog(channel: socket.socket, deadline: float) -> None:
    """Exit hard if the master goes away and we have not exited in time."""

    def watch() -> None:
        fd = os.dup(channel.fileno())
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break
        finally:
            os.close(fd)
        # Master gone: ask for a graceful stop, then insist.
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(deadline)
        os._exit(ExitCode.ERROR)

    threading.Thread(target=watch, name="reuseport-watchdog", daemon=True).start()


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
        )

    def _open_sockets(self) -> tuple[list[socket.socket], list[int]]:
        """Return (sockets to serve, fds to hand to the master)."""
        spec = self.spec
        if spec.listen_fds:
            return [adopt(fd) for fd in spec.listen_fds], []
        if spec.mode is not Mode.REUSEPORT:
            raise BootError("internal error: a shared-mode worker was started without a socket")
        socks: list[socket.socket] = []
        try:
            for addr in spec.binds:
                socks.append(bind_reuseport(addr, spec.config.backlog))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks, [s.fileno() for s in socks]

    async def _boot(self) -> HostedApp:
        spec = self.spec
        config = spec.config
        ctx = WorkerContext(
            pid=self.pid,
            slot=spec.slot,
            generation=spec.generation,
            mode=spec.mode,
            config=config,
            stats=self.stats,
        )
        obj = apps.load_app(config.app or apps.DEMO_APP, config.app_dir)
        if config.interface is Interface.AUTO:
            interface, reason = apps.detect(obj)
        else:
            interface, reason = config.interface, "from --interface"
        hosted = apps.build(obj, interface, ctx)
        await hosted.startup()
        socks, handover = self._open_sockets()
        try:
            await hosted.serve(socks)
        except OSError as exc:
            raise BootError(f"could not start serving: {exc}") from None
        self.state = SlotState.READY
        self.beat()
        send_message(
            spec.channel,
            {"type": "ready", "interface": interface.value, "reason": reason},
            handover,
        )
        log.debug(
            "worker %d serving %s as %s (%s)",
            spec.slot,
            config.app_label,
            interface.value,
            reason,
        )
        return hosted

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.stop.set)
        self.beat()
        try:
            hosted = await self._boot()
        except ReuseportError as exc:
            return self._boot_failed(exc.exit_code, str(exc))
        except Exception as exc:
            text = "".join(traceback.format_exception(exc)).rstrip()
            return self._boot_failed(ExitCode.BOOT_ERROR, f"worker failed to start:\n{text}")
        interval = self._beat_interval()
        while not self.stop.is_set():
            self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval)
        self.state = SlotState.STOPPING
        self.beat()
        await hosted.shutdown(self.spec.config.graceful_timeout)
        self.beat()
        return ExitCode.OK

    def _beat_interval(self) -> float:
        timeout = self.spec.config.timeout
        return min(1.0, timeout / 4) if timeout > 0 else 1.0

    def _boot_failed(self, code: int, message: str) -> int:
        with contextlib.suppress(OSError):
            send_message(
                self.spec.channel, {"type": "boot_error", "code": code, "message": message}
            )
        return code


def run(spec: WorkerSpec) -> int:
    """Run the worker to completion; return its exit code."""
    try:
        import setproctitle

        name = spec.config.proc_name or spec.config.app_label
        setproctitle.setproctitle(f"reuseport: worker {spec.slot} [{name}]")
    except ImportError:  # optional at run time; only titles suffer
        pass
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != spec.master_pid:
        return ExitCode.ERROR  # the master died before we got here
    _start_watchdog(spec.channel, spec.config.graceful_timeout + _WATCHDOG_GRACE)
    worker = _Worker(spec)
    try:
        factory = _loop_factory(spec.config.loop)
    except ReuseportError as exc:
        return worker._boot_failed(exc.exit_code, str(exc))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(worker.main())
