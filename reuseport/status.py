"""The master's status: a frozen snapshot, and the event counters it carries.

Rules: pure records (no I/O, no clock).  The arbiter builds a ``Status`` when
asked (``Arbiter.status()``); the control server sends ``to_dict()`` as JSON
and ``reuseport status`` renders that.  The dict is a contract: the CLI's
renderer, the bench, the soak script and the tests read it, so its keys only
ever grow.  Inside the code states, modes and causes are enums; ``to_dict``
turns them into the strings the JSON has always had (a worker's state shows
as ``starting``, ``ready``, ``draining`` or ``stopping``).

``events`` counts what the master did since it started, by cause, so tools
count reloads, recycles, spawns, exits and drains from numbers, never from
log lines (rewording a log line must not zero a benchmark's counts)::

    "events": {
      "spawns": {"start": 0, "respawn": 0, "reload": 0, "recycle": 0, "scale": 0},
      "exits": {"crash": 0, "heartbeat": 0, "recycle": 0, "reload": 0, "scale": 0,
                "stop": 0, "boot": 0},
      "reloads": 0,         rolling reloads completed (every slot replaced)
      "reloads_failed": 0,  reloads abandoned because a new worker failed
      "recycles": 0,        workers replaced for --max-requests
      "drains": 0,          reuseport slots drained, then closed
      "rescues": 0          stalled slots whose queue siblings were told to serve
    }

The causes are ``lifecycle.SpawnCause`` and ``lifecycle.ExitCause``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config, Mode, ProcessManager, SteeringKind
from .lifecycle import ExitCause, SpawnCause, WorkerHandle, WorkerState
from .scoreboard import Row

__all__ = [
    "SHOWN_AS",
    "SHOWN_STATES",
    "DatagramSocketStatus",
    "EventCounts",
    "MasterEvents",
    "MasterStatus",
    "PoolStatus",
    "SlotLoadStatus",
    "Status",
    "SteeringStatus",
    "Totals",
    "WorkerStatus",
]

# What `reuseport status` (and the metrics' state label) has always shown;
# the finer states stay inside.  SHOWN_STATES is their order.
SHOWN_STATES = ("starting", "ready", "draining", "stopping")
SHOWN_AS = {
    WorkerState.BOOTING: "starting",
    WorkerState.STARTING: "starting",
    WorkerState.READY: "ready",
    WorkerState.REPLACING: "ready",
    WorkerState.DRAINING: "draining",
    WorkerState.STOPPING: "stopping",
    WorkerState.ABORTING: "stopping",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MasterStatus:
    pid: int
    uptime: float
    mode: Mode
    app: str
    binds: tuple[str, ...]
    generation: int  # the last worker generation started


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolStatus:
    pm: ProcessManager
    target: int
    running: int
    max_workers: int
    min_spare: int
    max_spare: int
    start_workers: int
    idle_timeout: float
    max_requests: int
    timeout: float

    @classmethod
    def of(cls, config: Config, *, target: int, running: int) -> PoolStatus:
        return cls(
            pm=config.pm,
            target=target,
            running=running,
            max_workers=config.pool_limit,
            min_spare=config.effective_min_spare,
            max_spare=config.effective_max_spare,
            start_workers=config.effective_start_workers,
            idle_timeout=config.idle_timeout,
            max_requests=config.max_requests,
            timeout=config.timeout,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerStatus:
    slot: int
    pid: int
    generation: int
    state: WorkerState
    uptime: float
    requests: int
    in_flight: int
    connections: int
    accepted: int
    rescued: int  # of accepted, taken from a stalled sibling's queue
    queue: int | None  # its own accept queue (reuseport); None: shared or unknown
    queue_max: int | None
    heartbeat_age: float | None  # None until its scoreboard row is its own

    @classmethod
    def of(
        cls,
        handle: WorkerHandle,
        row: Row | None,
        queue: tuple[int, int] | None,
        now: float,
    ) -> WorkerStatus:
        """``row`` only if it is this worker's (a fresh worker may not have written yet)."""
        return cls(
            slot=handle.slot,
            pid=handle.pid,
            generation=handle.generation,
            state=handle.state,
            uptime=now - handle.started,
            requests=row.requests if row else 0,
            in_flight=row.in_flight if row else 0,
            connections=row.connections if row else 0,
            accepted=row.accepted if row else 0,
            rescued=row.rescued if row else 0,
            queue=queue[0] if queue else None,
            queue_max=queue[1] if queue else None,
            heartbeat_age=(now - row.heartbeat) if row else None,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Totals:
    requests: int
    in_flight: int
    connections: int
    accepted: int
    rescued: int
    queue: int  # every queue the master holds (in shared mode, the one shared queue)

    @classmethod
    def of(cls, workers: Sequence[WorkerStatus], *, queue: int) -> Totals:
        return cls(
            requests=sum(w.requests for w in workers),
            in_flight=sum(w.in_flight for w in workers),
            connections=sum(w.connections for w in workers),
            accepted=sum(w.accepted for w in workers),
            rescued=sum(w.rescued for w in workers),
            queue=queue,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotLoadStatus:
    """One slot's row of the load board (see ``loadboard.py``)."""

    slot: int
    load: int  # what the p2c program compares: expected delay in ns (penalties included)
    queued: int  # connections it sent there that no worker of the slot accepted yet
    open: int  # connections the slot's workers have open
    cost: int = 0  # ns of CPU per request, as its workers measured it
    stalled: bool = False  # queued, and nothing accepted for loadboard.STALL_NS


@dataclass(frozen=True, kw_only=True, slots=True)
class SteeringStatus:
    kind: SteeringKind  # as configured (--steering)
    steered_away: tuple[int, ...]  # slots new connections are kept from
    stalled: tuple[int, ...]  # slots whose loop or accept queue stands still
    active: SteeringKind = SteeringKind.HASH  # what runs: p2c, load or hash
    rescue: bool = False  # sibling rescue on
    rescuing: tuple[int, ...] = ()  # slots whose queue siblings serve now
    loads: tuple[SlotLoadStatus, ...] = ()  # p2c: each slot as the kernel program sees it


@dataclass(frozen=True, kw_only=True, slots=True)
class DatagramSocketStatus:
    """One UDP socket the master holds, as ``/proc/net/udp`` shows it."""

    bind: str  # "udp://127.0.0.1:9000"
    slot: int | None  # the slot it belongs to (reuseport mode); None: the shared socket
    inode: int
    queue: int | None  # bytes waiting to be read (rx_queue); None: the table could not be read
    drops: int | None  # datagrams dropped since the socket was made (receive buffer full, ...)


@dataclass(frozen=True, kw_only=True, slots=True)
class EventCounts:
    spawns: Mapping[SpawnCause, int]
    exits: Mapping[ExitCause, int]
    reloads: int
    reloads_failed: int
    recycles: int
    drains: int
    rescues: int = 0  # times siblings were told to serve a stalled slot's queue


class MasterEvents:
    """Cumulative counters the arbiter bumps; ``snapshot()`` freezes them.

    It also names the cause of a spawn the pool decided (``pool_cause``): a
    worker started in the slot of one that died unasked is a respawn (even
    when the pool, not the crash handler, starts it), the first
    ``initial`` others are the start, the rest are scaling.
    """

    def __init__(self, *, initial: int = 0) -> None:
        self.spawns = dict.fromkeys(SpawnCause, 0)
        self.exits = dict.fromkeys(ExitCause, 0)
        self.reloads = 0
        self.reloads_failed = 0
        self.recycles = 0
        self.drains = 0
        self.rescues = 0
        self._initial = initial
        self._orphaned: set[int] = set()  # slots whose worker died unasked, none since

    def pool_cause(self, slot: int) -> SpawnCause:
        if slot in self._orphaned:
            return SpawnCause.RESPAWN
        if self.spawns[SpawnCause.START] < self._initial:
            return SpawnCause.START
        return SpawnCause.SCALE

    def orphaned(self, slot: int) -> None:
        """``slot``'s worker died unasked and no other live worker serves it."""
        self._orphaned.add(slot)

    def spawned(self, cause: SpawnCause, slot: int) -> None:
        self.spawns[cause] += 1
        self._orphaned.discard(slot)

    def exited(self, cause: ExitCause) -> None:
        self.exits[cause] += 1

    def snapshot(self) -> EventCounts:
        return EventCounts(
            spawns=dict(self.spawns),
            exits=dict(self.exits),
            reloads=self.reloads,
            reloads_failed=self.reloads_failed,
            recycles=self.recycles,
            drains=self.drains,
            rescues=self.rescues,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    master: MasterStatus
    pool: PoolStatus
    workers: tuple[WorkerStatus, ...]
    totals: Totals
    steering: SteeringStatus
    events: EventCounts
    udp: tuple[DatagramSocketStatus, ...] = ()  # every UDP socket held (udp:// binds)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict ``reuseport status --json`` prints."""
        plain = _plain(self)
        assert isinstance(plain, dict)
        return plain


def _plain(value: object) -> object:
    """Records to dicts, enums to their strings, tuples to lists, in field order."""
    if isinstance(value, WorkerState):
        return SHOWN_AS[value]
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
