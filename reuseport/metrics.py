"""Prometheus metrics: what the master knows, served by the master on ``--metrics HOST:PORT``.

Rules: lives in the master, so no event loop and no thread (which is why
``prometheus_client.start_http_server`` is not used: it starts one).  The
listening socket and every client socket are non-blocking; the arbiter polls
what ``pollables()`` lists and calls ``on_event()`` for each event, and
``expire()`` on every turn of its loop.  One event does a bounded amount of
work (a few accepts, one ``recv``, one ``send``), a client has
``CLIENT_DEADLINE`` seconds for its whole exchange, and at most
``MAX_CLIENTS`` are open at once (the rest wait in the backlog), so a slow or
hostile client never stalls the master.  ``prometheus_client`` is used for
the exposition only (the registry, metric families, ``generate_latest``); it
is the optional ``metrics`` extra, imported only when ``--metrics`` is given.

Where the numbers come from: the scoreboard rows of the live workers (the
status snapshot), the master's event counters, the listening sockets'
``TCP_INFO``, ``/proc/net/netstat`` and the steering state; workers are
never asked.  Counters must survive a worker's exit (a recycle, a reload, a
crash): when the master reaps a worker it folds the worker's last row into
``Lifetime``, and every counter is ``Lifetime`` plus what the live rows say.
A worker writes a final row on its way out, so after the load ends the
totals are exact; while it runs, a live row is at most one heartbeat
(0.25 s) old.  A counter restarts from zero with a new master (a restart or
a USR2 upgrade): ``reuseport_master_start_time_seconds`` says when, and
Prometheus' ``rate()`` handles the reset.

Paths on the metrics port: ``/metrics`` (the text exposition), ``/status``
(the ``reuseport status --json`` document), ``/healthz`` (200 while the
master's loop runs: for liveness probes) and ``/readyz`` (200 once the pool
has announced it is ready and while it is not stopping: for readiness
probes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import __version__, procfs
from .config import SECONDS, BindAddress
from .errors import BindError, ConfigError, errno_name
from .lifecycle import ExitCause, SpawnCause, WorkerState
from .sockets import SocketSetupError, open_socket
from .status import SHOWN_AS, SHOWN_STATES, Status

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CLIENT_DEADLINE",
    "MAX_CLIENTS",
    "Lifetime",
    "MetricsServer",
    "QueueSample",
    "Readiness",
    "check_available",
    "render_metrics",
]

log = logging.getLogger("reuseport.master")

MAX_CLIENTS = 16  # open exchanges at once; the rest wait in the backlog
CLIENT_DEADLINE = 5 * SECONDS  # a client's whole exchange: request in, reply out
_ACCEPTS_PER_EVENT = 8
_MAX_REQUEST_HEAD = 8192
_RECV = 4096
_BACKLOG = 64


def check_available() -> None:
    """Raise ``ConfigError`` naming the extra when ``prometheus_client`` is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--metrics needs the prometheus_client package: pip install 'reuseport[metrics]'"
        ) from None


# --------------------------------------------------------------------- counters
@dataclass(slots=True)
class _Counts:
    requests: int = 0
    accepted: int = 0
    rescued: int = 0


class Lifetime:
    """What the workers that have exited counted, per slot (folded in when they are reaped)."""

    def __init__(self) -> None:
        self.slots: dict[int, _Counts] = {}

    def fold(self, slot: int, *, requests: int, accepted: int, rescued: int) -> None:
        counts = self.slots.setdefault(slot, _Counts())
        counts.requests += requests
        counts.accepted += accepted
        counts.rescued += rescued


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueSample:
    """One listening socket's accept queue (``TCP_INFO``)."""

    listener: str  # the bind, as the log shows it
    slot: int | None  # None: a socket every worker shares
    queued: int
    backlog: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Readiness:
    ready: bool  # the pool announced it is ready
    stopping: bool


def render_metrics(
    status: Status,
    lifetime: Lifetime,
    queues: list[QueueSample],
    *,
    started_at: float,
    netstat: Mapping[str, int] | None,
) -> bytes:
    """The text exposition of one scrape (``prometheus_client.generate_latest``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(status, lifetime, queues, started_at=started_at, netstat=netstat))
    ProcessCollector(registry=registry)  # the master process itself
    PlatformCollector(registry=registry)
    return generate_latest(registry)


class _Collector:
    """A ``prometheus_client`` collector over one snapshot (built per scrape)."""

    def __init__(
        self,
        status: Status,
        lifetime: Lifetime,
        queues: list[QueueSample],
        *,
        started_at: float,
        netstat: Mapping[str, int] | None,
    ) -> None:
        self.status = status
        self.lifetime = lifetime
        self.queues = queues
        self.started_at = started_at
        self.netstat = netstat

    def describe(self) -> list[Metric]:
        return []  # names are known only per scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        status = self.status
        master = status.master
        info = InfoMetricFamily("reuseport_master", "The master process and what it serves.")
        info.add_metric(
            [],
            {
                "version": __version__,
                "pid": str(master.pid),
                "mode": master.mode.value,
                "app": master.app,
                "pm": status.pool.pm.value,
            },
        )
        yield info
        yield GaugeMetricFamily(
            "reuseport_master_start_time_seconds",
            "When the master started, in seconds since the epoch (counters restart then).",
            value=self.started_at,
        )

        # Per slot: the exited workers' counts plus the live rows.
        per_slot: dict[int, _Counts] = {
            slot: _Counts(c.requests, c.accepted, c.rescued)
            for slot, c in self.lifetime.slots.items()
        }
        for worker in status.workers:
            counts = per_slot.setdefault(worker.slot, _Counts())
            counts.requests += worker.requests
            counts.accepted += worker.accepted
            counts.rescued += worker.rescued
        totals = _Counts(
            requests=sum(c.requests for c in per_slot.values()),
            accepted=sum(c.accepted for c in per_slot.values()),
            rescued=sum(c.rescued for c in per_slot.values()),
        )
        yield CounterMetricFamily(
            "reuseport_requests",
            "Requests served by every worker since the master started.",
            value=totals.requests,
        )
        yield CounterMetricFamily(
            "reuseport_connections",
            "Connections accepted by every worker since the master started.",
            value=totals.accepted,
        )
        yield CounterMetricFamily(
            "reuseport_rescued_connections",
            "Connections a worker took from a stalled sibling's queue (sibling rescue).",
            value=totals.rescued,
        )
        slot_requests = CounterMetricFamily(
            "reuseport_slot_requests", "Requests served by the workers of a slot.", labels=["slot"]
        )
        slot_connections = CounterMetricFamily(
            "reuseport_slot_connections",
            "Connections accepted by the workers of a slot.",
            labels=["slot"],
        )
        for slot in sorted(per_slot):
            slot_requests.add_metric([str(slot)], per_slot[slot].requests)
            slot_connections.add_metric([str(slot)], per_slot[slot].accepted)
        yield slot_requests
        yield slot_connections
        yield GaugeMetricFamily(
            "reuseport_requests_in_flight",
            "Requests being served now.",
            value=status.totals.in_flight,
        )
        yield GaugeMetricFamily(
            "reuseport_connections_open",
            "Client connections open now.",
            value=status.totals.connections,
        )

        # The pool.
        workers = GaugeMetricFamily(
            "reuseport_workers", "Worker processes by state.", labels=["state"]
        )
        by_state = dict.fromkeys(SHOWN_STATES, 0)
        for worker in status.workers:
            by_state[SHOWN_AS[worker.state]] += 1
        for state, count in by_state.items():
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily(
            "reuseport_pool_target_workers",
            "Workers the pool aims for now.",
            value=status.pool.target,
        )
        yield GaugeMetricFamily(
            "reuseport_pool_max_workers",
            "Most workers the pool may run (--max-workers).",
            value=status.pool.max_workers,
        )
        events = status.events
        spawns = CounterMetricFamily(
            "reuseport_worker_spawns", "Workers started, by cause.", labels=["cause"]
        )
        for spawn_cause in SpawnCause:
            spawns.add_metric([spawn_cause.value], events.spawns.get(spawn_cause, 0))
        yield spawns
        exits = CounterMetricFamily(
            "reuseport_worker_exits", "Workers that exited, by cause.", labels=["cause"]
        )
        for exit_cause in ExitCause:
            exits.add_metric([exit_cause.value], events.exits.get(exit_cause, 0))
        yield exits
        for name, value, text in (
            ("reuseport_reloads", events.reloads, "Rolling reloads completed (SIGHUP)."),
            (
                "reuseport_reloads_failed",
                events.reloads_failed,
                "Rolling reloads abandoned because a new worker failed.",
            ),
            ("reuseport_recycles", events.recycles, "Workers replaced for --max-requests."),
            ("reuseport_drains", events.drains, "Reuseport slots drained, then closed."),
            (
                "reuseport_rescues",
                events.rescues,
                "Times the siblings were told to serve a stalled worker's queue.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        heartbeat = GaugeMetricFamily(
            "reuseport_heartbeat_age_seconds",
            "Seconds since the event loop of the slot's serving worker last beat.",
            labels=["slot"],
        )
        ages: dict[int, float] = {}
        for worker in status.workers:
            if worker.heartbeat_age is not None and worker.state in (
                WorkerState.READY,
                WorkerState.REPLACING,
            ):
                ages[worker.slot] = max(ages.get(worker.slot, 0.0), worker.heartbeat_age)
        for slot in sorted(ages):
            heartbeat.add_metric([str(slot)], ages[slot])
        yield heartbeat

        # Accept queues.
        queued = GaugeMetricFamily(
            "reuseport_listen_queue_connections",
            "Connections waiting in a listening socket's accept queue.",
            labels=["listener", "slot"],
        )
        backlog = GaugeMetricFamily(
            "reuseport_listen_queue_backlog",
            "The accept queue's limit (the listen backlog).",
            labels=["listener", "slot"],
        )
        for sample in self.queues:
            labels = [sample.listener, "shared" if sample.slot is None else str(sample.slot)]
            queued.add_metric(labels, sample.queued)
            backlog.add_metric(labels, sample.backlog)
        yield queued
        yield backlog
        if self.netstat is not None:
            for key, name, text in (
                (
                    "ListenOverflows",
                    "reuseport_listen_overflows",
                    "Connections dropped because an accept queue was full (TcpExt "
                    "ListenOverflows, for the whole network namespace).",
                ),
                (
                    "ListenDrops",
                    "reuseport_listen_drops",
                    "Connections dropped by listening sockets for any reason (TcpExt "
                    "ListenDrops, for the whole network namespace).",
                ),
            ):
                if key in self.netstat:
                    yield CounterMetricFamily(name, text, value=self.netstat[key])

        # Steering and rescue (reuseport mode).
        steering = status.steering
        kinds = InfoMetricFamily(
            "reuseport_steering", "How new connections are spread (configured and running)."
        )
        kinds.add_metric(
            [],
            {
                "configured": steering.kind.value,
                "active": steering.active.value,
                "rescue": "on" if steering.rescue else "off",
            },
        )
        yield kinds
        slots = {w.slot for w in status.workers}
        slots.update(load.slot for load in steering.loads)
        slots.update(steering.steered_away)
        slots.update(steering.stalled)
        stalled = set(steering.stalled) | {load.slot for load in steering.loads if load.stalled}
        away = GaugeMetricFamily(
            "reuseport_slot_steered_away",
            "1 while steering keeps new connections from the slot.",
            labels=["slot"],
        )
        stall = GaugeMetricFamily(
            "reuseport_slot_stalled",
            "1 while the slot's accept queue or event loop stands still.",
            labels=["slot"],
        )
        rescuing = GaugeMetricFamily(
            "reuseport_slot_rescued",
            "1 while the siblings serve the slot's queue.",
            labels=["slot"],
        )
        for slot in sorted(slots):
            away.add_metric([str(slot)], 1 if slot in steering.steered_away else 0)
            stall.add_metric([str(slot)], 1 if slot in stalled else 0)
            rescuing.add_metric([str(slot)], 1 if slot in steering.rescuing else 0)
        yield away
        yield stall
        yield rescuing
        if steering.loads:
            load = GaugeMetricFamily(
                "reuseport_slot_load",
                "What the p2c program compares for the slot (stall penalty included).",
                labels=["slot"],
            )
            queue = GaugeMetricFamily(
                "reuseport_slot_queued",
                "Connections the p2c program sent to the slot that it has not accepted yet.",
                labels=["slot"],
            )
            open_ = GaugeMetricFamily(
                "reuseport_slot_open_connections",
                "Connections the slot's workers have open (load board).",
                labels=["slot"],
            )
            for row in steering.loads:
                load.add_metric([str(row.slot)], row.load)
                queue.add_metric([str(row.slot)], row.queued)
                open_.add_metric([str(row.slot)], row.open)
            yield load
            yield queue
            yield open_


def read_netstat() -> dict[str, int] | None:
    """``TcpExt`` of ``/proc/net/netstat``; None where it cannot be read."""
    try:
        return procfs.netstat().get("TcpExt")
    except OSError:
        return None


# --------------------------------------------------------------------- HTTP
@dataclass(slots=True, eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: memoryview | None = None


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_PATHS = ("/metrics", "/status", "/healthz", "/readyz")


def _reply(status: int, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    lines = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return lines.encode("ascii") + (b"" if head else body)


class MetricsServer:
    """``--metrics HOST:PORT``: a small HTTP/1.1 server the master's loop drives.

    ``snapshot`` builds the status record, ``queues`` samples the accept
    queues, ``readiness`` says whether the pool is ready; ``lifetime`` holds
    the exited workers' counts.  Construct it with ``bind`` (which opens the
    socket, raising ``BindError``) or ``adopt`` (a listening socket handed
    over by the previous master on SIGUSR2).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        snapshot: Callable[[], Status],
        queues: Callable[[], list[QueueSample]],
        readiness: Callable[[], Readiness],
        lifetime: Lifetime,
    ) -> None:
        self.sock: socket.socket | None = sock
        self.snapshot = snapshot
        self.queues = queues
        self.readiness = readiness
        self.lifetime = lifetime
        self.started_at = time.time()
        self._clients: dict[int, _Client] = {}
        where = sock.getsockname()
        host = f"[{where[0]}]" if sock.family == socket.AF_INET6 else where[0]
        self.url = f"http://{host}:{where[1]}/metrics"

    @staticmethod
    def open(addr: BindAddress) -> socket.socket:
        """The listening socket for ``--metrics``; ``BindError`` with the fix if it fails."""
        try:
            return open_socket(
                addr.family, socket.SOCK_STREAM, addr.sockaddr, reuseport=False, backlog=_BACKLOG
            )
        except SocketSetupError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BindError(
                    f"cannot serve --metrics on {addr}: address already in use "
                    f"({errno_name(exc)}); choose another port"
                ) from None
            raise BindError(
                f"cannot serve --metrics on {addr}: {exc.strerror} ({errno_name(exc)}); "
                "choose another address"
            ) from None

    # ------------------------------------------------------------------ the loop's side
    def pollables(self) -> dict[int, int]:
        """fd: poll events, for every socket this server wants watched now."""
        wanted: dict[int, int] = {}
        if self.sock is not None and len(self._clients) < MAX_CLIENTS:
            wanted[self.sock.fileno()] = select.POLLIN
        for fd, client in self._clients.items():
            wanted[fd] = select.POLLIN if client.outbox is None else select.POLLOUT
        return wanted

    def on_event(self, fd: int, mask: int) -> None:
        """``fd`` (one of ``pollables()``) is ready.  Never raises for a client's fault."""
        if self.sock is not None and fd == self.sock.fileno():
            self._accept()
            return
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            if client.outbox is None:
                self._read(client)
            else:
                self._write(client)
        except OSError as exc:
            log.debug("metrics client dropped: %s", exc)
            self._drop(client)

    def expire(self, now: float) -> None:
        """Close clients that ran out of time."""
        for client in [c for c in self._clients.values() if now >= c.deadline]:
            self._drop(client)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close_in_child(self) -> None:
        """After ``fork()``, in a worker: close the inherited descriptors."""
        self.close()

    # ------------------------------------------------------------------ internals
    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(_ACCEPTS_PER_EVENT):
            if len(self._clients) >= MAX_CLIENTS:
                return
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the client stays queued for the next turn.
                log.warning("--metrics: accept failed: %s", errno_name(exc))
                return
            conn.setblocking(False)
            self._clients[conn.fileno()] = _Client(
                sock=conn, deadline=time.monotonic() + CLIENT_DEADLINE
            )

    def _read(self, client: _Client) -> None:
        data = client.sock.recv(_RECV)
        if not data:
            self._drop(client)
            return
        client.inbox += data
        end = client.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = client.inbox.find(b"\n\n")
        if end < 0:
            if len(client.inbox) > _MAX_REQUEST_HEAD:
                self._respond(client, _reply(431, "text/plain", b"request head too large\n"))
            return
        line = bytes(client.inbox).split(b"\n", 1)[0].strip()
        self._respond(client, self._answer(line))

    def _answer(self, line: bytes) -> bytes:
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _reply(400, "text/plain", b"bad request line\n")
        method, target = parts[0], parts[1].decode("latin-1")
        path = target.split("?", 1)[0]
        if path not in _PATHS:
            return _reply(404, "text/plain", b"try /metrics, /status, /healthz or /readyz\n")
        if method not in (b"GET", b"HEAD"):
            return _reply(405, "text/plain", b"only GET and HEAD\n")
        head = method == b"HEAD"
        try:
            return self._route(path, head)
        except Exception:
            log.exception("--metrics: cannot answer %s", path)
            return _reply(500, "text/plain", b"the server could not build the answer\n", head=head)

    def _route(self, path: str, head: bool) -> bytes:
        if path == "/healthz":
            return _reply(200, "text/plain", b"ok\n", head=head)
        if path == "/readyz":
            readiness = self.readiness()
            if readiness.ready and not readiness.stopping:
                return _reply(200, "text/plain", b"ready\n", head=head)
            why = b"stopping\n" if readiness.stopping else b"starting\n"
            return _reply(503, "text/plain", why, head=head)
        status = self.snapshot()
        if path == "/status":
            body = json.dumps(status.to_dict()).encode() + b"\n"
            return _reply(200, "application/json", body, head=head)
        from prometheus_client import CONTENT_TYPE_LATEST

        body = render_metrics(
            status,
            self.lifetime,
            self.queues(),
            started_at=self.started_at,
            netstat=read_netstat(),
        )
        return _reply(200, CONTENT_TYPE_LATEST, body, head=head)

    def _respond(self, client: _Client, data: bytes) -> None:
        client.outbox = memoryview(data)
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.outbox is not None
        # MSG_NOSIGNAL: a client that hung up costs an EPIPE, never a SIGPIPE.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sent = client.sock.send(client.outbox, socket.MSG_NOSIGNAL)
            client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        client.sock.close()
