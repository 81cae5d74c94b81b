"""systemd's notify protocol (``Type=notify``), without a dependency on systemd.

Rules: a datagram of ``NAME=value`` lines to the ``AF_UNIX`` address in
``$NOTIFY_SOCKET`` (``@name`` is the abstract namespace: a leading NUL byte),
sent without blocking; a message that cannot go out is dropped (systemd is
gone, or its queue is full) and logged once at debug level: a service
manager's trouble must never stop the server.  ``Notifier`` reads the
variables once, in the master, and removes them from the environment (as
``sd_notify(unset_environment=1)`` does), so the workers and the app do not
see them; the one process that gets them back is a new master started by
SIGUSR2 (``child_environment``).

What the master says and when (``SystemdState.decide`` is the pure part,
fed one ``View`` per turn of the master's loop):

- ``READY=1`` once the pool has announced it is ready (every initial worker
  ready), and again when a reload or an upgrade attempt is over;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a rolling reload (SIGHUP) or
  an upgrade (SIGUSR2) begins;
- ``STOPPING=1`` when a graceful stop begins;
- ``STATUS=`` with the pool ("2 of 2 workers ready, reuseport mode"),
  whenever that text changes;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while the loop runs (so a
  master whose loop is stuck gets restarted by systemd);
- ``MAINPID=`` (sent by the old master) when a new master takes over.

A master started by SIGUSR2 stays quiet until the old one has exited
(``View.muted``): before that systemd still takes the old pid as the main
one and would log every message from the new one as refused.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

__all__ = ["Notifier", "SystemdState", "View", "monotonic_usec"]

log = logging.getLogger("reuseport.master")

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class View:
    """What the master's loop sees on one turn, for ``SystemdState.decide``."""

    ready: bool  # the pool announced it is ready
    reloading: bool  # a rolling reload or an upgrade attempt is under way
    stopping: bool
    status: str  # the STATUS= text
    muted: bool = False  # a new master before the old one has exited


class SystemdState:
    """Which messages are due; pure (the clock is passed in)."""

    def __init__(self, watchdog_interval: float | None) -> None:
        self.watchdog_interval = watchdog_interval  # seconds between WATCHDOG=1, or None
        self._ready_sent = False
        self._reloading = False
        self._stopping_sent = False
        self._status = ""
        self._next_watchdog = 0.0

    def decide(self, view: View, now: float) -> list[str]:
        """The messages to send now (each a ``NAME=value`` block)."""
        if view.muted:
            return []
        messages: list[str] = []
        fields: list[str] = []
        if view.stopping:
            if not self._stopping_sent:
                self._stopping_sent = True
                fields.append("STOPPING=1")
        elif view.reloading and not self._reloading:
            self._reloading = True
            fields += ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        elif view.ready and not view.reloading and (not self._ready_sent or self._reloading):
            self._ready_sent = True
            self._reloading = False
            fields.append("READY=1")
        if view.status != self._status:
            self._status = view.status
            fields.append(f"STATUS={view.status}")
        if fields:
            messages.append("\n".join(fields))
        if self.watchdog_interval is not None and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval
            messages.append("WATCHDOG=1")
        return messages

    def time_left(self, now: float) -> float | None:
        """Seconds until the next WATCHDOG=1 is due; None without a watchdog."""
        if self.watchdog_interval is None:
            return None
        return max(0.0, self._next_watchdog - now)


class Notifier:
    """The master's end of ``$NOTIFY_SOCKET``; does nothing when the variable is not set."""

    def __init__(self, environ: MutableMapping[str, str], pid: int) -> None:
        raw = {name: environ.pop(name) for name in _VARIABLES if name in environ}
        self._raw = raw
        socket_text = raw.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if socket_text.startswith("@"):
            self.address = b"\0" + socket_text[1:].encode()
        elif socket_text.startswith("/"):
            self.address = socket_text
        watchdog: float | None = None
        usec_text = raw.get("WATCHDOG_USEC", "")
        watchdog_pid = raw.get("WATCHDOG_PID", "")
        if usec_text.isdigit() and int(usec_text) > 0 and watchdog_pid in ("", str(pid)):
            watchdog = int(usec_text) / 1_000_000 / 2  # ping twice per interval
        self.state = SystemdState(watchdog if self.address is not None else None)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def child_environment(self) -> dict[str, str]:
        """The variables for a new master (SIGUSR2), without ``WATCHDOG_PID`` (it names us)."""
        return {k: v for k, v in self._raw.items() if k != "WATCHDOG_PID"}

    def update(self, view: View, now: float) -> None:
        for message in self.state.decide(view, now):
            self.send(message)

    def send(self, message: str) -> bool:
        """One datagram; False if it could not go out (never raises)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("systemd notify socket: cannot send (%s); later messages may drop", exc)
            return False
        return True
