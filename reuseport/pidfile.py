"""The pid file (``--pid FILE``): written when the master starts, removed when it ends.

Rules: a file we cannot write is a ``BootError`` that names the path, the
errno name and the fix (the master then exits before it forks anything).
``remove`` deletes the file only while it still names this master: a file
another process rewrote since belongs to that process.  That is what lets a
later binary upgrade (USR2) hand the file over: the new master writes its own
pid into it, and the old master's exit leaves it alone.
"""

from __future__ import annotations

import contextlib
import os

from .errors import BootError, errno_name

__all__ = ["PidFile"]


class PidFile:
    def __init__(self, path: str | None, pid: int) -> None:
        self.path = path or None  # "" means no pid file, like None
        self.pid = pid

    def write(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "w", encoding="ascii") as fh:
                fh.write(f"{self.pid}\n")
        except OSError as exc:
            name = errno_name(exc)
            raise BootError(
                f"cannot write the pid file {self.path!r}: {exc.strerror} ({name}); "
                "choose a writable path with --pid, or leave it out"
            ) from None

    def names_us(self) -> bool:
        """The file exists and holds this master's pid."""
        if self.path is None:
            return False
        try:
            with open(self.path, encoding="ascii") as fh:
                return fh.read().strip() == str(self.pid)
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        if self.names_us():
            assert self.path is not None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
