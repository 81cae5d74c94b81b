"""``status.py``: the snapshot record, its dict (the JSON contract), the event counters.

Rules: no processes.  The dict's keys are checked exactly, section by
section, because ``reuseport status``, the bench, the soak script and the
tests read them; a key may be added here on purpose, never lost by accident.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from handles import handle_in

from reuseport.arbiter import Arbiter
from reuseport.config import Config, Mode, ProcessManager, SteeringKind
from reuseport.control import render_status
from reuseport.lifecycle import ExitCause, SpawnCause, WorkerHandle, WorkerState
from reuseport.scoreboard import Row, SlotState
from reuseport.status import (
    DatagramSocketStatus,
    MasterEvents,
    MasterStatus,
    PoolStatus,
    Status,
    SteeringStatus,
    Totals,
    WorkerStatus,
)

MASTER_KEYS = ["pid", "uptime", "mode", "app", "binds", "generation"]
POOL_KEYS = [
    "pm",
    "target",
    "running",
    "max_workers",
    "min_spare",
    "max_spare",
    "start_workers",
    "idle_timeout",
    "max_requests",
    "timeout",
]
WORKER_KEYS = [
    "slot",
    "pid",
    "generation",
    "state",
    "uptime",
    "requests",
    "in_flight",
    "connections",
    "accepted",
    "rescued",
    "queue",
    "queue_max",
    "heartbeat_age",
]
TOTALS_KEYS = ["requests", "in_flight", "connections", "accepted", "rescued", "queue"]
STEERING_KEYS = ["kind", "steered_away", "stalled", "active", "rescue", "rescuing", "loads"]
UDP_KEYS = ["bind", "slot", "inode", "queue", "drops"]
SPAWNS = {"start": 0, "respawn": 0, "reload": 0, "recycle": 0, "scale": 0}
EXITS = {"crash": 0, "heartbeat": 0, "recycle": 0, "reload": 0, "scale": 0, "stop": 0, "boot": 0}
EVENTS = {
    "spawns": SPAWNS,
    "exits": EXITS,
    "reloads": 0,
    "reloads_failed": 0,
    "recycles": 0,
    "drains": 0,
    "rescues": 0,
}


@pytest.fixture
def channel() -> Iterator[socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a
    a.close()
    b.close()


def a_handle(channel: socket.socket, state: WorkerState) -> WorkerHandle:
    return handle_in(state, channel, pid=100, started=10.0)


def a_row(pid: int) -> Row:
    return Row(
        index=0,
        pid=pid,
        slot=0,
        generation=3,
        state=SlotState.READY,
        started=10.0,
        heartbeat=14.5,
        requests=40,
        in_flight=2,
        connections=3,
        accepted=7,
    )


def a_status(workers: tuple[WorkerStatus, ...] = ()) -> Status:
    config = Config(workers=2)
    return Status(
        master=MasterStatus(
            pid=1, uptime=5.0, mode=Mode.REUSEPORT, app="demo", binds=("127.0.0.1:1",), generation=3
        ),
        pool=PoolStatus.of(config, target=2, running=len(workers)),
        workers=workers,
        totals=Totals.of(workers, queue=4),
        steering=SteeringStatus(kind=SteeringKind.LOAD, steered_away=(1,), stalled=()),
        events=MasterEvents().snapshot(),
        udp=(DatagramSocketStatus(bind="udp://127.0.0.1:2", slot=0, inode=9, queue=768, drops=3),),
    )


def test_the_dict_has_exactly_the_documented_keys(channel: socket.socket) -> None:
    worker = WorkerStatus.of(a_handle(channel, WorkerState.READY), a_row(100), (1, 128), now=15.0)
    snapshot = a_status((worker,)).to_dict()
    assert list(snapshot) == ["master", "pool", "workers", "totals", "steering", "events", "udp"]
    assert list(snapshot["master"]) == MASTER_KEYS
    assert list(snapshot["pool"]) == POOL_KEYS
    assert [list(w) for w in snapshot["workers"]] == [WORKER_KEYS]
    assert list(snapshot["totals"]) == TOTALS_KEYS
    assert list(snapshot["steering"]) == STEERING_KEYS
    assert snapshot["events"] == EVENTS
    assert [list(u) for u in snapshot["udp"]] == [UDP_KEYS]
    assert json.loads(json.dumps(snapshot)) == snapshot  # plain JSON types only


def test_values_are_plain_strings_and_numbers(channel: socket.socket) -> None:
    worker = WorkerStatus.of(a_handle(channel, WorkerState.READY), a_row(100), (1, 128), now=15.0)
    snapshot = a_status((worker,)).to_dict()
    assert snapshot["master"]["mode"] == "reuseport"
    assert snapshot["master"]["binds"] == ["127.0.0.1:1"]
    assert snapshot["pool"]["pm"] == "static"
    assert snapshot["steering"] == {
        "kind": "load",
        "steered_away": [1],
        "stalled": [],
        "active": "hash",
        "rescue": False,
        "rescuing": [],
        "loads": [],
    }
    assert snapshot["workers"][0] == {
        "slot": 0,
        "pid": 100,
        "generation": 1,
        "state": "ready",
        "uptime": 5.0,
        "requests": 40,
        "in_flight": 2,
        "connections": 3,
        "accepted": 7,
        "rescued": 0,
        "queue": 1,
        "queue_max": 128,
        "heartbeat_age": 0.5,
    }
    assert snapshot["totals"] == {
        "requests": 40,
        "in_flight": 2,
        "connections": 3,
        "accepted": 7,
        "rescued": 0,
        "queue": 4,
    }


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (WorkerState.BOOTING, "starting"),
        (WorkerState.STARTING, "starting"),
        (WorkerState.READY, "ready"),
        (WorkerState.REPLACING, "ready"),
        (WorkerState.DRAINING, "draining"),
        (WorkerState.STOPPING, "stopping"),
        (WorkerState.ABORTING, "stopping"),
    ],
)
def test_worker_states_show_as_the_four_known_words(
    state: WorkerState, shown: str, channel: socket.socket
) -> None:
    worker = WorkerStatus.of(a_handle(channel, state), None, None, now=11.0)
    assert a_status((worker,)).to_dict()["workers"][0]["state"] == shown


def test_a_worker_without_its_own_row_shows_zeros(channel: socket.socket) -> None:
    worker = WorkerStatus.of(a_handle(channel, WorkerState.BOOTING), None, None, now=11.0)
    entry = a_status((worker,)).to_dict()["workers"][0]
    assert (entry["requests"], entry["queue"], entry["heartbeat_age"]) == (0, None, None)


def test_the_renderer_reads_the_dict(channel: socket.socket) -> None:
    worker = WorkerStatus.of(a_handle(channel, WorkerState.READY), a_row(100), (1, 128), now=15.0)
    text = render_status(a_status((worker,)).to_dict())
    assert text.startswith("reuseport master 1")
    assert " ready " in text


def test_master_events_count_by_cause() -> None:
    events = MasterEvents(initial=2)
    events.spawned(SpawnCause.START, 0)
    events.spawned(SpawnCause.RELOAD, 0)
    events.exited(ExitCause.RELOAD)
    events.exited(ExitCause.CRASH)
    events.reloads += 1
    events.drains += 2
    counted = Status(
        master=a_status().master,
        pool=a_status().pool,
        workers=(),
        totals=a_status().totals,
        steering=a_status().steering,
        events=events.snapshot(),
    ).to_dict()["events"]
    assert counted["spawns"] == {**SPAWNS, "start": 1, "reload": 1}
    assert counted["exits"] == {**EXITS, "reload": 1, "crash": 1}
    assert (counted["reloads"], counted["drains"]) == (1, 2)


def test_a_snapshot_does_not_change_with_later_events() -> None:
    events = MasterEvents()
    frozen = events.snapshot()
    events.spawned(SpawnCause.SCALE, 3)
    assert frozen.spawns[SpawnCause.SCALE] == 0


def test_pool_spawns_are_start_then_scale_and_respawn_after_an_unasked_death() -> None:
    events = MasterEvents(initial=2)
    assert events.pool_cause(0) is SpawnCause.START
    events.spawned(SpawnCause.START, 0)
    events.spawned(SpawnCause.START, 1)
    assert events.pool_cause(2) is SpawnCause.SCALE
    events.orphaned(1)
    assert events.pool_cause(1) is SpawnCause.RESPAWN
    assert events.pool_cause(2) is SpawnCause.SCALE
    events.spawned(SpawnCause.RESPAWN, 1)
    assert events.pool_cause(1) is SpawnCause.SCALE


@pytest.mark.parametrize("mode", [Mode.SHARED, Mode.REUSEPORT])
def test_an_arbiter_that_has_not_started_reports_an_empty_pool(mode: Mode) -> None:
    config = Config(workers=3, pm=ProcessManager.STATIC)
    snapshot = Arbiter(config, mode, "test").status().to_dict()
    assert snapshot["master"]["mode"] == mode.value
    assert snapshot["workers"] == []
    assert snapshot["pool"]["target"] == 3
    assert snapshot["pool"]["running"] == 0
    assert snapshot["totals"]["queue"] == 0
    assert snapshot["steering"]["steered_away"] == []
    assert snapshot["events"] == EVENTS
