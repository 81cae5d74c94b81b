"""The master's control socket and the ``reuseport status`` client.

Rules: the server side never runs an event loop or a thread (the master calls
``ControlServer.handle()`` when ``poll()`` says the socket is readable) and
never lets a client's behaviour raise out of ``handle()``; every blocking call
on either side has a deadline; every socket is closed on every path.

Why a Unix socket in a private directory: the status snapshot shows pids,
addresses and the app name, and a Unix socket lets the file system decide who
may read it.  The directory is ``$XDG_RUNTIME_DIR/reuseport`` (per-user, made
by the login manager) or ``/tmp/reuseport-<uid>``; because ``/tmp`` is shared,
a directory we did not make ourselves is refused if another user owns it or
can write to it (they could swap our socket for theirs).  The socket is
created under umask 0177, so it is never reachable by another user, not even
between ``bind()`` and ``chmod()``.

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

Protocol: the client sends one line, ``status`` (``status json`` is accepted
too); the server answers one line of JSON, the snapshot, and closes.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .config import SECONDS
from .errors import BootError, ReuseportError, errno_name
from .sockets import listen_queue_depth

__all__ = [
    "HANDLE_BUDGET",
    "MAX_CLIENTS_PER_HANDLE",
    "ControlError",
    "ControlServer",
    "add_status_arguments",
    "default_control_dir",
    "default_control_path",
    "find_control_sockets",
    "listen_queue_depth",
    "query",
    "render_status",
    "run_status",
]

log = logging.getLogger("reuseport.control")

MAX_CLIENTS_PER_HANDLE = 32
HANDLE_BUDGET = 0.5 * SECONDS  # the most one handle() call may keep the master busy
_CLIENT_TIMEOUT = 0.2 * SECONDS  # one client's request line, and its reply
_PROBE_TIMEOUT = 0.5 * SECONDS  # "does something accept connections at this path?"
_BACKLOG = 64
_MAX_REQUEST = 256  # bytes; a request line is "status\n"
_MAX_REPLY = 64 * 1024 * 1024  # bytes; a snapshot of thousands of workers is far less
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SOCKET_SUFFIX = ".sock"


class ControlError(ReuseportError):
    """The control socket could not be reached, or its answer made no sense."""


# ---------------------------------------------------------------- directories
def _check_private_dir(path: str, st: os.stat_result) -> None:
    """Refuse a directory another user could tamper with."""
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise BootError(
            f"control directory {path} exists but is not a directory; "
            "remove it or pass --control PATH"
        )
    if st.st_uid != uid:
        raise BootError(
            f"control directory {path} is owned by uid {st.st_uid}, not by you (uid {uid}); "
            "another user may be able to swap the socket: remove the directory, set "
            "XDG_RUNTIME_DIR, or pass --control PATH"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BootError(
            f"control directory {path} is group- or world-writable "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 700 {path}` or pass "
            "--control PATH"
        )


def _default_dir_location() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return os.path.join(runtime, "reuseport")
    return f"/tmp/reuseport-{os.getuid()}"


def default_control_dir() -> str:
    """Where control sockets live: ``$XDG_RUNTIME_DIR/reuseport`` or ``/tmp/reuseport-<uid>``.

    Does not create the directory (the server does, mode 0700).  Raises
    BootError if it exists but is not private to this user.
    """
    path = _default_dir_location()
    try:
        # lstat: a symlink planted in /tmp must not redirect us elsewhere.
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise BootError(
            f"cannot inspect control directory {path}: {errno_name(exc)} ({exc.strerror}); "
            "pass --control PATH"
        ) from None
    _check_private_dir(path, st)
    return path


def default_control_path(master_pid: int) -> str:
    """``<default_control_dir()>/<master_pid>.sock``."""
    return os.path.join(default_control_dir(), f"{master_pid}{_SOCKET_SUFFIX}")


def _ensure_private_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BootError(
            f"cannot create control directory {path}: {errno_name(exc)} ({exc.strerror}); "
            "pass --control PATH"
        ) from None
    # Checked after mkdir too: someone may have made it first, in /tmp.
    _check_private_dir(path, os.lstat(path))


# ---------------------------------------------------------------- server
def _accepts_connections(path: str, timeout: float = _PROBE_TIMEOUT) -> bool:
    """True if a process listens on the Unix socket ``path`` (busy counts as alive)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(timeout)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a full backlog: the server exists but is slow
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


class ControlServer:
    """A non-blocking Unix stream socket that answers ``status`` with ``snapshot()``.

    The master polls ``fileno()`` and calls ``handle()`` when it is readable.
    ``snapshot`` must return a JSON-serialisable dict; if it raises, the error
    is logged and the client gets ``{"error": ...}`` (a bug in the snapshot
    must not take the server down).
    """

    def __init__(self, path: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._owner_pid = os.getpid()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise BootError(
                f"control socket path {path} is {len(os.fsencode(path))} bytes long, and Unix "
                f"sockets allow at most {_SUN_PATH_MAX}; pass --control with a shorter path"
            )
        parent = os.path.dirname(os.path.abspath(path))
        # Only our own directory is created and vetted: a --control path
        # elsewhere is the operator's choice, and an unsafe default
        # directory must not block it.
        if parent == os.path.abspath(_default_dir_location()):
            _ensure_private_dir(parent)
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
        self._sock: socket.socket | None = sock
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
        if _accepts_connections(path):
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


# ---------------------------------------------------------------- client
def query(path: str, timeout: float = 2.0 * SECONDS) -> dict[str, Any]:
    """Ask the master at ``path`` for its snapshot.  Raises ControlError with the fix."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is the server running? "
                "(`reuseport status` without --control lists the running ones)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"nothing listens on {path}: the server that made it has exited "
                "(the file is stale and the next server will replace it)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: run `reuseport status` as the user that runs "
                "the server"
            ) from None
        sock.sendall(b"status\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                # A Unix socket closed with unread data in it resets its peer
                # after the data: what arrived is the whole reply.
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_REPLY:
                raise ControlError(f"the reply from {path} is larger than {_MAX_REPLY} bytes")
    except TimeoutError:
        raise ControlError(
            f"the server at {path} did not answer within {timeout:g}s; it may be overloaded"
        ) from None
    except OSError as exc:
        raise ControlError(
            f"cannot talk to the control socket {path}: {errno_name(exc)} ({exc.strerror})"
        ) from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(
            f"{path} did not answer with a reuseport status (got {raw[:80]!r}); "
            "is it a reuseport control socket?"
        )
    if set(reply) == {"error"}:
        raise ControlError(f"the server at {path} answered: {reply['error']}")
    return reply


def find_control_sockets() -> list[str]:
    """The ``*.sock`` files in ``default_control_dir()`` that accept a connection."""
    directory = default_control_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ControlError(
            f"cannot list {directory}: {errno_name(exc)} ({exc.strerror}); pass --control PATH"
        ) from None

    def order(name: str) -> tuple[int, str]:
        stem = name[: -len(_SOCKET_SUFFIX)]
        return (int(stem), name) if stem.isdigit() else (sys.maxsize, name)

    found = []
    for name in sorted((n for n in names if n.endswith(_SOCKET_SUFFIX)), key=order):
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode) and _accepts_connections(path):
                found.append(path)
    return found


# ---------------------------------------------------------------- listen queues
# ---------------------------------------------------------------- `reuseport status`
def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    parser.add_argument(
        "--control",
        default=None,
        metavar="PATH",
        help="the server's control socket (default: the only one running for this user)",
    )


def run_status(args: argparse.Namespace) -> int:
    """``reuseport status``: print the live workers of a running master."""
    path: str | None = getattr(args, "control", None)
    if not path:
        try:
            directory = default_control_dir()
            found = find_control_sockets()
        except ReuseportError as exc:
            print(f"reuseport: {exc}", file=sys.stderr)
            return 1
        if not found:
            print(
                f"reuseport: no running reuseport server found in {directory} "
                "(start one with `reuseport serve`, or pass --control PATH)",
                file=sys.stderr,
            )
            return 1
        if len(found) > 1:
            lines = [
                f"reuseport: {len(found)} reuseport servers are running; pick one with "
                "--control PATH:"
            ]
            for candidate in found:
                stem = os.path.basename(candidate)[: -len(_SOCKET_SUFFIX)]
                who = f"master {stem}" if stem.isdigit() else "server"
                lines.append(f"  {who}: --control {candidate}")
            print("\n".join(lines), file=sys.stderr)
            return 2
        path = found[0]
    try:
        snapshot = query(path)
    except ControlError as exc:
        print(f"reuseport: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(snapshot, indent=2) + "\n")
    else:
        sys.stdout.write(render_status(snapshot))
    return 0


def _duration(value: object) -> str:
    """12.3s, 5m03s, 1h02m, 3d04h; '-' when unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    seconds = max(0.0, float(value))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _seconds(value: object) -> str:
    """A configured duration: 30s, 2.5s."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:g}s"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pool_line(pool: Mapping[str, Any], generation: object) -> str:
    pm = _cell(pool.get("pm", "?"))
    details = [f"target {_cell(pool.get('target'))}"]
    if pm in {"dynamic", "ondemand"}:
        details.append(f"max {_cell(pool.get('max_workers'))}")
    if pm == "dynamic":
        details.append(f"spare {_cell(pool.get('min_spare'))}..{_cell(pool.get('max_spare'))}")
    if pm == "ondemand":
        details.append(f"idle-timeout {_seconds(pool.get('idle_timeout'))}")
    max_requests = pool.get("max_requests")
    recycle = f"max-requests {max_requests}" if max_requests else "max-requests off"
    timeout = pool.get("timeout")
    beat = f"heartbeat timeout {_seconds(timeout)}" if timeout else "heartbeat off"
    parts = [
        f"pool: {pm}, {_cell(pool.get('running'))} running ({', '.join(details)})",
        recycle,
        beat,
    ]
    if generation is not None:
        parts.append(f"generation {_cell(generation)}")
    return ", ".join(parts) + "\n"


# (header, snapshot key, formatter, right-aligned)
_COLUMNS: tuple[tuple[str, str, Callable[[object], str], bool], ...] = (
    ("SLOT", "slot", _cell, True),
    ("PID", "pid", _cell, True),
    ("GEN", "generation", _cell, True),
    ("STATE", "state", _cell, False),
    ("UPTIME", "uptime", _duration, True),
    ("REQUESTS", "requests", _cell, True),
    ("IN-FLIGHT", "in_flight", _cell, True),
    ("CONNS", "connections", _cell, True),
    ("QUEUE", "queue", _cell, True),
    ("BEAT", "heartbeat_age", _duration, True),
)
_TOTAL_KEYS = {"requests", "in_flight", "connections", "queue"}


def _table(rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = []
        for (_h, _k, _f, right), width, text in zip(_COLUMNS, widths, row, strict=True):
            cells.append(text.rjust(width) if right else text.ljust(width))
        yield "  ".join(cells).rstrip()


def render_status(snapshot: Mapping[str, Any]) -> str:
    """The human report of a snapshot.  Missing keys show as '-'; unknown keys are ignored."""
    master = _mapping(snapshot.get("master"))
    pool = _mapping(snapshot.get("pool"))
    totals = _mapping(snapshot.get("totals"))
    workers_raw = snapshot.get("workers")
    workers = [_mapping(w) for w in workers_raw] if isinstance(workers_raw, list) else []

    binds = master.get("binds")
    bind_text = ", ".join(map(str, binds)) if isinstance(binds, list) and binds else "-"
    header = [
        f"reuseport master {_cell(master.get('pid'))}",
        str(master.get("app") or "-"),
        f"{master.get('mode') or '?'} mode",
        bind_text,
        f"up {_duration(master.get('uptime'))}",
    ]
    out = [" — ".join(header) + "\n", _pool_line(pool, master.get("generation"))]

    rows = [[name for name, _k, _f, _r in _COLUMNS]]
    rows += [[fmt(worker.get(key)) for _n, key, fmt, _r in _COLUMNS] for worker in workers]
    total_row = [
        _cell(totals.get(key)) if key in _TOTAL_KEYS else "" for _n, key, _f, _r in _COLUMNS
    ]
    rows.append(total_row)
    lines = list(_table(rows))
    # "total" overwrites the blank SLOT..UPTIME cells of the last row, which
    # are wider than the label ("SLOT  PID" alone is 9 characters).
    lines[-1] = "total" + lines[-1][len("total") :]
    if not workers:
        lines.insert(1, "(no workers)")
    out.extend(line + "\n" for line in lines)
    return "".join(out)
