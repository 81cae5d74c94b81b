"""SIGUSR2: replace the master itself (new reuseport code, a new Python) without closing a socket.

Rules: this module describes the hand-over and keeps each side's state; it
never starts or signals a process (``succession.py`` carries the sequence
out: it starts the new master and decides when to stop it; the arbiter
reaps it and sends the signals).  The old master's sockets go to the new
one as inherited descriptors named in one environment variable (``ENV``,
JSON), the way nginx and gunicorn pass theirs; a pipe (``ready_fd``) carries
the one message back, "ready".

The sequence, nginx-style:

1. The old master gets SIGUSR2.  It waits until the group order is known
   (no socket opening, no slot draining; ``Listeners.stable``), freezes its
   pool (only respawns into held slots) and its steering, and starts the new
   master from the same command line (``sys.executable`` and
   ``sys.orig_argv``: whatever the operator upgraded on disk is what runs),
   with every listening socket it holds: shared sockets, reservations, each
   reuseport slot's sockets in group order (``listeners.Holdings``), the
   ``--metrics`` socket, and a fixed ``--control PATH`` (the path cannot be
   bound twice; a default, pid-based path is simply the new master's own).
2. The new master adopts them instead of binding (``Listeners.adopt``),
   attaches its own steering (the p2c program replaces the old one in each
   group), starts a worker in every adopted slot and, once all are ready,
   writes the pid file and says "ready" on the pipe.  Both generations of
   workers accept from the same sockets meanwhile, so nothing queued waits
   for a worker that is gone.
3. The old master hands over: tells systemd the new main pid, stops
   answering on the control and metrics sockets (the new master answers on
   the same ones), stops its workers gracefully (WebSockets get 1012) and
   exits, closing its descriptors only: no ``shutdown()``, no unlink.
4. The new master notices its parent is gone (``Inheritance.parent_gone``)
   and takes over the socket files (it removes them at its own stop).

A new master that fails (the new code does not import, the configuration
no longer parses, it crashes, or it is not ready within
``--upgrade-timeout``) is reaped or killed by the old one, which puts its
own steering back (``Listeners.retake``) and keeps serving; the log says
why.  If the new master dies after the old one started handing over, the
old master starts workers again on the sockets it still holds.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

from .config import FdBind, Mode, parse_bind
from .errors import ConfigError, errno_name
from .listeners import Holdings

__all__ = [
    "ENV",
    "Attempt",
    "Handover",
    "Inheritance",
    "Phase",
    "change_dir",
    "command",
    "decode",
    "encode",
    "environment",
    "in_launch_dir",
    "take",
]

ENV = "REUSEPORT_HANDOVER"
_VERSION = 1
READY = b"ready\n"


@dataclass(frozen=True, kw_only=True, slots=True)
class Handover:
    """What a new master inherits from the old one (the contents of ``ENV``)."""

    master: int  # the old master's pid: the new master's parent
    ready_fd: int  # write "ready" here
    holdings: Holdings
    control: tuple[str, int] | None = None  # a fixed --control path and its listening socket
    metrics_fd: int | None = None  # the --metrics listening socket
    configured: tuple[str, ...] = ()  # the old master's binds as configured, for a warning

    def fds(self) -> list[int]:
        """Every descriptor the new master must inherit."""
        fds = [self.ready_fd, *self.holdings.fds()]
        if self.control is not None:
            fds.append(self.control[1])
        if self.metrics_fd is not None:
            fds.append(self.metrics_fd)
        return fds


def encode(handover: Handover) -> str:
    holdings = handover.holdings
    return json.dumps(
        {
            "v": _VERSION,
            "master": handover.master,
            "ready_fd": handover.ready_fd,
            "mode": holdings.mode.value,
            "binds": [
                {"bind": str(b), "name": b.name if isinstance(b, FdBind) else None}
                for b in holdings.binds
            ],
            "bind_fds": list(holdings.bind_fds),
            "slots": [list(fds) for fds in holdings.slots],
            "anchor": holdings.anchor,
            "unix_files": [list(f) for f in holdings.unix_files],
            "control": list(handover.control) if handover.control is not None else None,
            "metrics_fd": handover.metrics_fd,
            "configured": list(handover.configured),
        },
        separators=(",", ":"),
    )


def decode(text: str) -> Handover:
    """The hand-over in ``text``; ``ValueError`` if it is not one this version reads."""
    try:
        data = json.loads(text)
        if data.get("v") != _VERSION:
            raise ValueError(f"hand-over version {data.get('v')!r}, expected {_VERSION}")
        binds = []
        for entry in data["binds"]:
            bind = parse_bind(str(entry["bind"]))
            if isinstance(bind, FdBind) and entry.get("name"):
                bind = FdBind(fd=bind.fd, name=str(entry["name"]))
            binds.append(bind)
        control = data.get("control")
        return Handover(
            master=int(data["master"]),
            ready_fd=int(data["ready_fd"]),
            holdings=Holdings(
                mode=Mode(data["mode"]),
                binds=tuple(binds),
                bind_fds=tuple(int(fd) for fd in data["bind_fds"]),
                slots=tuple(tuple(int(fd) for fd in fds) for fds in data["slots"]),
                anchor=None if data.get("anchor") is None else int(data["anchor"]),
                unix_files=tuple(
                    (str(path), int(dev), int(ino)) for path, dev, ino in data["unix_files"]
                ),
            ),
            control=None if control is None else (str(control[0]), int(control[1])),
            metrics_fd=None if data.get("metrics_fd") is None else int(data["metrics_fd"]),
            configured=tuple(str(b) for b in data.get("configured", ())),
        )
    except (KeyError, TypeError, IndexError, ConfigError, AttributeError) as exc:
        raise ValueError(f"malformed hand-over: {exc!r}") from None


def take(environ: MutableMapping[str, str], parent: int) -> Handover | None:
    """The hand-over meant for this process (its parent is the old master), or None.

    Removes ``ENV`` from ``environ`` either way, so the workers and a later
    upgrade never see it.  Raises ``ConfigError`` when it is meant for us but
    cannot be read (the old master then keeps serving and logs our exit).
    """
    text = environ.pop(ENV, None)
    if text is None:
        return None
    try:
        handover = decode(text)
    except ValueError as exc:
        raise ConfigError(
            f"SIGUSR2 upgrade: {ENV} cannot be read ({exc}); the running master keeps "
            "serving. Upgrade both sides to the same reuseport version, or restart"
        ) from None
    if handover.master != parent:
        return None  # a leftover variable, not from our parent: bind as usual
    return handover


# Where the server was started, if --chdir left it: a new master starts there,
# so it reads the same relative paths (--chdir's own among them) as this one did.
_launch_dir: str | None = None


def change_dir(folder: str) -> None:
    """``--chdir``: move the master to ``folder``, remembering where it started."""
    global _launch_dir
    start = os.getcwd()
    try:
        os.chdir(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot change to --chdir {folder!r}: {exc.strerror} ({errno_name(exc)})"
        ) from None
    if _launch_dir is None:
        _launch_dir = start


@contextlib.contextmanager
def in_launch_dir() -> Iterator[None]:
    """Run the body in the folder the server was started in (the master has no threads)."""
    if _launch_dir is None:
        yield
        return
    here = os.getcwd()
    os.chdir(_launch_dir)
    try:
        yield
    finally:
        os.chdir(here)


def command() -> list[str]:
    """The new master's command line: this interpreter's path and the original arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


def environment(
    environ: Mapping[str, str], handover: Handover, extra: Mapping[str, str]
) -> dict[str, str]:
    """The new master's environment: ours, the hand-over and ``extra`` (systemd's variables)."""
    env = dict(environ)
    env.update(extra)
    env[ENV] = encode(handover)
    return env


class Phase(enum.Enum):
    WANTED = "wanted"  # SIGUSR2 came; waiting for the group order to settle
    STARTED = "started"  # the new master runs; waiting for its "ready"
    HANDING_OVER = "handing over"  # it is ready: our workers stop, then we exit


@dataclass(slots=True)
class Attempt:
    """The old master's side of one upgrade."""

    requested: float  # time.monotonic() of the SIGUSR2
    phase: Phase = Phase.WANTED
    pid: int | None = None  # the new master
    ready_fd: int = -1  # read end of its pipe
    deadline: float = 0.0  # it must be ready by then
    kill_at: float | None = None  # told to stop (timeout): SIGKILL it at this time
    control_handed: bool = False  # our --control socket went with it
    cancelled: bool = False  # we stop: it was told to stop too
    waited: bool = False  # said once that a drain or an opening socket delays it

    def started(self, pid: int, ready_fd: int, *, deadline: float, control: bool) -> None:
        self.phase = Phase.STARTED
        self.pid = pid
        self.ready_fd = ready_fd
        self.deadline = deadline
        self.control_handed = control

    def read(self) -> tuple[bool, bool]:
        """(said ready, pipe closed) from what waits on the pipe."""
        said = closed = False
        while self.ready_fd >= 0:
            try:
                data = os.read(self.ready_fd, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                closed = True
                self.close()
                break
            said = said or READY.strip() in data
        return said, closed

    def close(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = -1


@dataclass(slots=True)
class Inheritance:
    """The new master's side: what it took over, and how far the hand-over is."""

    handover: Handover
    told: bool = False  # said "ready" to the old master
    complete: bool = False  # the old master has exited: everything is ours

    @property
    def master(self) -> int:
        return self.handover.master

    def tell_ready(self) -> None:
        """Say "ready" on the pipe and close it (OSError if the old master is gone)."""
        self.told = True
        fd = self.handover.ready_fd
        try:
            os.write(fd, READY)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_pipe(self) -> None:
        """In a worker after fork, or once the old master is gone without being told."""
        if not self.told:
            self.told = True
            with contextlib.suppress(OSError):
                os.close(self.handover.ready_fd)

    def parent_gone(self) -> bool:
        return os.getppid() != self.handover.master
