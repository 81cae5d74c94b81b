"""systemd socket activation: the listening sockets systemd hands over.

Rules: ``systemd_binds`` reads the protocol's variables and nothing else
(the sockets are checked later, when the master adopts them like any
``fd://N`` bind: ``SO_TYPE`` and ``SO_ACCEPTCONN``).  The variables count
only when ``LISTEN_PID`` is our pid: they are inherited by every child, and a
server started by a server must not take its parent's sockets.  Once read,
they are removed from the environment (as ``sd_listen_fds(1)`` does), so the
workers and whatever the app starts do not see them.

The protocol (sd_listen_fds(3)): ``LISTEN_FDS=N`` sockets are fds 3 .. 3+N-1,
``LISTEN_PID`` names the process they are for, and ``LISTEN_FDNAMES`` (colon
separated, optional) names each one (``FileDescriptorName=`` in the unit).
"""

from __future__ import annotations

from collections.abc import MutableMapping

from .config import FdBind
from .errors import ConfigError

__all__ = ["LISTEN_FDS_START", "systemd_binds"]

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def systemd_binds(environ: MutableMapping[str, str], pid: int) -> tuple[FdBind, ...]:
    """The sockets systemd passed to process ``pid``; () when there are none for it.

    Removes the variables from ``environ`` when they were meant for ``pid``.
    Raises ``ConfigError`` when they are meant for us but make no sense.
    """
    count_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    if count_text is None or pid_text is None:
        return ()
    if pid_text.strip() != str(pid):
        return ()  # meant for another process (our parent, most likely)
    names_text = environ.get("LISTEN_FDNAMES")
    for name in _VARIABLES:
        environ.pop(name, None)
    if not count_text.strip().isdigit():
        raise ConfigError(
            f"systemd socket activation: LISTEN_FDS={count_text!r} is not a number; "
            "check the service's socket unit"
        )
    count = int(count_text)
    names: list[str | None] = list(names_text.split(":")) if names_text else []
    if names and len(names) != count:
        names = []  # a mismatch: the numbers are what counts
    names += [None] * (count - len(names))
    return tuple(
        FdBind(fd=LISTEN_FDS_START + index, name=names[index] or None) for index in range(count)
    )
