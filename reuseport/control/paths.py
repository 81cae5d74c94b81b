"""Where control sockets live, and the rules that keep that place private.

Why a Unix socket in a private directory: the status snapshot shows pids,
addresses and the app name, and a Unix socket lets the file system decide who
may read it.  The directory is ``$XDG_RUNTIME_DIR/reuseport`` (per-user, made
by the login manager) or ``/tmp/reuseport-<uid>``; because ``/tmp`` is shared,
a directory we did not make ourselves is refused if another user owns it or
can write to it (they could swap our socket for theirs).

Rules: nothing here listens or answers; the server (``server.py``) creates
the directory and the socket, the client (``client.py``) finds and queries
them.  Every probe connection has a deadline and is closed on every path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys

from ..config import SECONDS
from ..errors import BootError, ControlError, errno_name

__all__ = [
    "SOCKET_SUFFIX",
    "accepts_connections",
    "default_control_dir",
    "default_control_path",
    "default_dir_location",
    "ensure_private_dir",
    "find_control_sockets",
]

SOCKET_SUFFIX = ".sock"
_PROBE_TIMEOUT = 0.5 * SECONDS  # "does something accept connections at this path?"


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


def default_dir_location() -> str:
    """The default directory's path, unchecked (``default_control_dir`` checks it)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return os.path.join(runtime, "reuseport")
    return f"/tmp/reuseport-{os.getuid()}"


def default_control_dir() -> str:
    """Where control sockets live: ``$XDG_RUNTIME_DIR/reuseport`` or ``/tmp/reuseport-<uid>``.

    Does not create the directory (the server does, mode 0700).  Raises
    BootError if it exists but is not private to this user.
    """
    path = default_dir_location()
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
    return os.path.join(default_control_dir(), f"{master_pid}{SOCKET_SUFFIX}")


def ensure_private_dir(path: str) -> None:
    """Create ``path`` with mode 0700 unless it exists; refuse it if it is not private."""
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


def accepts_connections(path: str, timeout: float = _PROBE_TIMEOUT) -> bool:
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
        stem = name[: -len(SOCKET_SUFFIX)]
        return (int(stem), name) if stem.isdigit() else (sys.maxsize, name)

    found = []
    for name in sorted((n for n in names if n.endswith(SOCKET_SUFFIX)), key=order):
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode) and accepts_connections(path):
                found.append(path)
    return found
