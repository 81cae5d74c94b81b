"""The master's operations endpoints: the control socket, ``--metrics`` and systemd's notify.

Rules: the master polls these sockets beside its workers' channels, so
nothing here blocks, runs a loop or starts a thread: ``pollables`` says what
to watch, ``on_event`` answers what became readable, ``tend`` does what is
due each turn (metrics clients' deadlines, the notify message).  Nothing
here forks, signals or reaps.  The class reads the master only through what
it is given: the listeners (queue samples), the status snapshot and the
readiness (callables), the reaped workers' counts (``Lifetime``).

Why ``answering`` and the hand-over methods: during a SIGUSR2 upgrade both
masters hold the same control and metrics sockets (``succession.py``).  Once
the old master hands over it stops polling them, so that every client gets
the new master (``stop_answering``), and it answers again if the new master
dies before it could take over (``answer_again``).  A fixed ``--control``
path belongs to the master that removes it at exit: ``ControlServer.disown``
and ``take_ownership`` say which one that is.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable

from . import sdnotify
from .config import Config
from .control import ControlServer, default_control_path
from .listeners import Listeners
from .metrics import Lifetime, MetricsServer, QueueSample, Readiness
from .status import Status
from .upgrade import Handover

__all__ = ["Operations"]

log = logging.getLogger("reuseport.master")


class Operations:
    """The control socket, the ``--metrics`` server and the systemd notifier of one master."""

    def __init__(
        self,
        config: Config,
        pid: int,
        listeners: Listeners,
        *,
        status: Callable[[], Status],
        readiness: Callable[[], Readiness],
        lifetime: Lifetime,
    ) -> None:
        self.config = config
        self.pid = pid
        self.listeners = listeners
        self._status = status
        self._readiness = readiness
        self.lifetime = lifetime  # what reaped workers counted (the master folds them in)
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.notifier = sdnotify.Notifier(os.environ, pid)
        self.answering = True  # poll the control and metrics sockets (not after a hand-over)

    def open(self, handover: Handover | None) -> None:
        """Open (or, for a new master of an upgrade, adopt) the control and metrics sockets."""
        self._open_control(handover)
        self._open_metrics(handover)

    def _open_control(self, handover: Handover | None) -> None:
        snapshot = lambda: self._status().to_dict()  # noqa: E731
        if handover is not None and handover.control is not None:
            path, fd = handover.control
            self.control = ControlServer(path, snapshot, adopted=socket.socket(fileno=fd))
        else:
            path = self.config.control or default_control_path(self.pid)
            self.control = ControlServer(path, snapshot)
        log.info("Control socket at %s (reuseport status --control %s)", path, path)

    def _open_metrics(self, handover: Handover | None) -> None:
        inherited = handover.metrics_fd if handover is not None else None
        if self.config.metrics is None:
            if inherited is not None:
                os.close(inherited)  # the old master served metrics; this one does not
            return
        if inherited is not None:
            sock = socket.socket(fileno=inherited)
            sock.set_inheritable(False)
            sock.setblocking(False)
        else:
            sock = MetricsServer.open(self.config.metrics)
        self.metrics = MetricsServer(
            sock,
            snapshot=self._status,
            queues=self._queue_samples,
            readiness=self._readiness,
            lifetime=self.lifetime,
        )
        log.info("Metrics at %s (also /status, /healthz, /readyz)", self.metrics.url)

    def _queue_samples(self) -> list[QueueSample]:
        return [
            QueueSample(listener=bind, slot=slot, queued=queued, backlog=backlog)
            for bind, slot, queued, backlog in self.listeners.queues()
        ]

    # ------------------------------------------------------------------ each turn
    def pollables(self) -> dict[int, int]:
        """The sockets to poll (fd -> events): none once handed over."""
        wanted: dict[int, int] = {}
        if self.answering:
            if self.control is not None and self.control.fileno() >= 0:
                wanted[self.control.fileno()] = select.POLLIN
            if self.metrics is not None:
                wanted.update(self.metrics.pollables())
        return wanted

    def on_event(self, fd: int, mask: int) -> None:
        if self.control is not None and fd == self.control.fileno():
            self.control.handle()
        elif self.metrics is not None:
            self.metrics.on_event(fd, mask)

    def tend(self, view: sdnotify.View, now: float) -> None:
        """Metrics clients' deadlines; what systemd is due to hear."""
        if self.metrics is not None:
            self.metrics.expire(now)
        self.notifier.update(view, now)

    def time_left(self, now: float) -> float | None:
        """Seconds until systemd's watchdog wants a ping (None: no watchdog)."""
        return self.notifier.state.time_left(now)

    # ------------------------------------------------------------------ SIGUSR2
    def handed_over(self) -> tuple[tuple[str, int] | None, int | None]:
        """What a new master inherits: ``(--control path, its socket)``, the metrics socket.

        Only a fixed control path is handed over: a default one names the
        master's pid, so the new master opens its own.
        """
        control = None
        if (
            self.config.control is not None
            and self.control is not None
            and self.control.fileno() >= 0
        ):
            control = (self.control.path, self.control.fileno())
        metrics_fd = None
        if self.metrics is not None and self.metrics.sock is not None:
            metrics_fd = self.metrics.sock.fileno()
        return control, metrics_fd

    def stop_answering(self, *, control_handed: bool) -> None:
        """The new master answers from now on (and owns a control path it was handed)."""
        self.answering = False
        if self.control is not None and control_handed:
            self.control.disown()

    def answer_again(self, *, control_handed: bool) -> None:
        """The new master died after the hand-over began: this master answers again."""
        self.answering = True
        if self.control is not None and control_handed:
            self.control.take_ownership()

    def own_control(self) -> None:
        """The old master is gone: a control path adopted from it is ours to remove."""
        if self.control is not None:
            self.control.take_ownership()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop the copies without touching the master's files."""
        if self.control is not None:
            self.control.close_in_child()
        if self.metrics is not None:
            self.metrics.close_in_child()
