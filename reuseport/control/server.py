"""The master's side of the control socket: answer ``status`` with the snapshot.

Rules: the server never runs an event loop or a thread (the master calls
``ControlServer.handle()`` when ``poll()`` says the socket is readable) and
never lets a client's behaviour raise out of ``handle()``; every blocking call
has a deadline; every socket is closed on every path.  The socket is created
under umask 0177, so it is never reachable by another user, not even between
``bind()`` and ``chmod()``.

Why ``handle()`` bounds its work: the master's loop also reaps workers and
checks heartbeats, so a flood of clients or a client that never sends its
request line must not stall it.  ``handle()`` answers at most
``MAX_CLIENTS_PER_HANDLE`` clients and spends at most ``HANDLE_BUDGET``
seconds; whatever is left waits in the backlog for the next turn.

Why ``close_in_child()`` exists: ``fork()`` copies every descriptor, close-on-
exec or not.  A worker that kept the listening fd would keep the socket
"alive" after the master died, so ``status`` would connect to it and hang, and
a new master would refuse the path as in use.  The worker closes the fd, and
only the process that created the file may unlink it.

Why ``adopted`` and ``disown``: a new master started by SIGUSR2 takes over a
fixed ``--control PATH`` by inheriting the listening socket (the path cannot
be bound twice).  Both masters answer on it until the old one hands over;
then the old one stops answering and must not unlink the file at exit
(``disown``), and the new one owns the file only once the hand-over is
complete (``take_ownership``): if it fails before that, the file stays the
old master's.

Protocol: the client sends one line, ``status`` (``status json`` is accepted
too); the server answers one line of JSON, the snapshot, and closes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..config import SECONDS
from ..errors import BootError, errno_name
from .paths import accepts_connections, default_dir_location, ensure_private_dir

__all__ = ["HANDLE_BUDGET", "MAX_CLIENTS_PER_HANDLE", "ControlServer"]

log = logging.getLogger("reuseport.control")

MAX_CLIENTS_PER_HANDLE = 32
HANDLE_BUDGET = 0.5 * SECONDS  # the most one handle() call may keep the master busy
_CLIENT_TIMEOUT = 0.2 * SECONDS  # one client's request line, and its reply
_BACKLOG = 64
_MAX_REQUEST = 256  # bytes; a request line is "status\n"
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class ControlServer:
    """A non-blocking Unix stream socket that answers ``status`` with ``snapshot()``.

    The master polls ``fileno()`` and calls ``handle()`` when it is readable.
    ``snapshot`` must return a JSON-serialisable dict; if it raises, the error
    is logged and the client gets ``{"error": ...}`` (a bug in the snapshot
    must not take the server down).
    """

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], dict[str, Any]],
        *,
        adopted: socket.socket | None = None,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._owner_pid = os.getpid()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        if adopted is not None:
            # The previous master's listening socket (SIGUSR2): not our file yet.
            adopted.setblocking(False)
            adopted.set_inheritable(False)
            self._sock: socket.socket | None = adopted
            return
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise BootError(
                f"control socket path {path} is {len(os.fsencode(path))} bytes long, and Unix "
                f"sockets allow at most {_SUN_PATH_MAX}; pass --control with a shorter path"
            )
        parent = os.path.dirname(os.path.abspath(path))
        # Only our own directory is created and vetted: a --control path
        # elsewhere is the operator's choice, and an unsafe default
        # directory must not block it.
        if parent == os.path.abspath(default_dir_location()):
            ensure_private_dir(parent)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The master has no threads, so changing the process umask for
            # the duration of bind() affects nobody else.
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)
            os.chmod(path, 0o600)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._unlink_if_ours()
            if exc.errno == errno.EADDRINUSE:
                raise BootError(
                    f"another server already uses the control socket {path}; "
                    "pass --control with another path"
                ) from None
            raise BootError(
                f"cannot create control socket {path}: {errno_name(exc)} ({exc.strerror}); "
                "check that the directory exists and is writable, or pass --control with "
                "another path"
            ) from None
        except BaseException:
            sock.close()
            self._unlink_if_ours()
            raise
        self._sock = sock
        log.debug("control socket listening on %s", path)

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BootError(
                f"cannot inspect control socket {path}: {errno_name(exc)} ({exc.strerror}); "
                "pass --control with another path"
            ) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise BootError(
                f"control socket path {path} exists and is not a socket; "
                "remove it or pass --control with another path"
            )
        if accepts_connections(path):
            raise BootError(
                f"another server already uses the control socket {path}; "
                "pass --control with another path"
            )
        # Nobody listens: a master that died without cleaning up left it.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BootError(
                f"cannot remove stale control socket {path}: {errno_name(exc)} "
                f"({exc.strerror}); remove it by hand or pass --control with another path"
            ) from None
        log.info("removed stale control socket %s", path)

    def fileno(self) -> int:
        """The listening fd to poll for POLLIN; -1 once closed."""
        return -1 if self._sock is None else self._sock.fileno()

    def handle(self) -> None:
        """Answer the clients waiting in the backlog.  Never raises for a client's fault."""
        if self._sock is None:
            return
        deadline = time.monotonic() + HANDLE_BUDGET
        reply: bytes | None = None  # one snapshot serves every client of this call
        for _ in range(MAX_CLIENTS_PER_HANDLE):
            if time.monotonic() >= deadline:
                return
            try:
                conn, _addr = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # EMFILE and friends: the client stays queued for the next turn.
                log.warning(
                    "control socket %s: accept failed: %s (%s)",
                    self.path,
                    errno_name(exc),
                    exc.strerror,
                )
                return
            with conn:
                try:
                    request = _read_line(conn, deadline)
                    if request is None:
                        log.debug("control client sent no request line in time; closed")
                        continue
                    words = request.split()
                    if not words:
                        continue  # a liveness check: connect and close
                    if words[0] != b"status":
                        log.debug("control client sent %r; closed", request[:64])
                        _send(conn, _error_reply("unknown request; send `status`"), deadline)
                        continue
                    if reply is None:
                        reply = self._build_reply()
                    _send(conn, reply, deadline)
                except OSError as exc:
                    log.debug("control client dropped: %s", exc)

    def _build_reply(self) -> bytes:
        try:
            return json.dumps(self._snapshot()).encode() + b"\n"
        except Exception as exc:
            log.exception("cannot build the status snapshot")
            return _error_reply(f"the server could not build its status: {exc!r}")

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours.  Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._unlink_if_ours()

    def disown(self) -> None:
        """Another master answers on this path from now on: never unlink it."""
        self._identity = None

    def take_ownership(self) -> None:
        """An adopted socket's file is ours from now on (removed at ``close``)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode):
            self._identity = (st.st_dev, st.st_ino)
            self._owner_pid = os.getpid()

    def close_in_child(self) -> None:
        """After ``fork()``, in the worker: close the inherited fd, leave the file alone."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._identity = None

    def _unlink_if_ours(self) -> None:
        # Only the creating process, and only our inode: a new master may
        # already have replaced a file we consider stale.
        if self._identity is None or os.getpid() != self._owner_pid:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass
        self._identity = None

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _error_reply(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


def _read_line(conn: socket.socket, deadline: float) -> bytes | None:
    """One request line (EOF or _MAX_REQUEST bytes also end it); None if the client is slow."""
    data = b""
    give_up = min(deadline, time.monotonic() + _CLIENT_TIMEOUT)
    while b"\n" not in data and len(data) <= _MAX_REQUEST:
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            return None
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(_MAX_REQUEST)
        except TimeoutError:
            return None
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _send(conn: socket.socket, data: bytes, deadline: float) -> None:
    conn.settimeout(max(0.001, min(deadline - time.monotonic(), _CLIENT_TIMEOUT)))
    # MSG_NOSIGNAL: a client that hung up must cost an EPIPE, never a SIGPIPE.
    view = memoryview(data)
    while view:
        sent = conn.send(view, socket.MSG_NOSIGNAL)
        view = view[sent:]
