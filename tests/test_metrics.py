"""``--metrics``: the exposition from a snapshot, the master's non-blocking HTTP side, end to end.

Rules: the exposition is checked by parsing it back with
``prometheus_client.parser`` (what a scraper sees), never by string
matching.  The HTTP side runs in this process on loopback, driven by a
``poll()`` loop like the master's, so a slow client can be shown not to
hold up another.  End to end: a real master under a load client, across
``--max-requests`` recycling, whose totals must equal what the client was
answered once the load has ended.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from features import requires_reuseport
from prometheus_client.parser import text_string_to_metric_families
from support import REPO_ROOT, Server, http_get, load, wait_until

from reuseport import metrics
from reuseport.config import Config, Mode, SteeringKind
from reuseport.lifecycle import ExitCause, SpawnCause, WorkerState
from reuseport.metrics import Lifetime, MetricsServer, QueueSample, Readiness, render_metrics
from reuseport.status import (
    EventCounts,
    MasterStatus,
    PoolStatus,
    SlotLoadStatus,
    Status,
    SteeringStatus,
    Totals,
    WorkerStatus,
)

TESTS_DIR = str(Path(__file__).resolve().parent)
SHADOW = os.path.join(TESTS_DIR, "shadow_no_prometheus")


# ------------------------------------------------------------------ the exposition
def _worker(slot: int, pid: int, requests: int, **kw: object) -> WorkerStatus:
    fields: dict[str, object] = {
        "slot": slot,
        "pid": pid,
        "generation": 1,
        "state": WorkerState.READY,
        "uptime": 1.0,
        "requests": requests,
        "in_flight": 1,
        "connections": 2,
        "accepted": requests + 1,
        "rescued": 0,
        "queue": 0,
        "queue_max": 128,
        "heartbeat_age": 0.1,
    }
    fields.update(kw)
    return WorkerStatus(**fields)  # type: ignore[arg-type]


def _status(workers: tuple[WorkerStatus, ...], **steering: object) -> Status:
    config = Config(workers=2)
    return Status(
        master=MasterStatus(
            pid=4242,
            uptime=3.0,
            mode=Mode.REUSEPORT,
            app="demo",
            binds=("127.0.0.1:8000",),
            generation=5,
        ),
        pool=PoolStatus.of(config, target=2, running=len(workers)),
        workers=workers,
        totals=Totals.of(workers, queue=0),
        steering=SteeringStatus(
            kind=SteeringKind.AUTO,
            steered_away=(1,),
            stalled=(),
            active=SteeringKind.P2C,
            rescue=True,
            rescuing=(),
            loads=(SlotLoadStatus(slot=0, load=3, queued=1, open=2, stalled=True),),
            **steering,  # type: ignore[arg-type]
        ),
        events=EventCounts(
            spawns={**dict.fromkeys(SpawnCause, 0), SpawnCause.START: 2, SpawnCause.RECYCLE: 3},
            exits={**dict.fromkeys(ExitCause, 0), ExitCause.RECYCLE: 3},
            reloads=1,
            reloads_failed=0,
            recycles=3,
            drains=0,
            rescues=4,
        ),
    )


def _parse(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, for every sample of the exposition."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_counters_add_the_exited_workers_to_the_live_rows() -> None:
    lifetime = Lifetime()
    lifetime.fold(0, requests=100, accepted=90, rescued=5)
    lifetime.fold(0, requests=7, accepted=7, rescued=0)  # a second exited worker of slot 0
    lifetime.fold(3, requests=1, accepted=1, rescued=0)  # a slot that is gone now
    status = _status((_worker(0, 11, 10), _worker(1, 12, 20, rescued=2)))
    samples = _parse(
        render_metrics(status, lifetime, [], started_at=1000.0, netstat={"ListenOverflows": 9})
    )
    assert samples["reuseport_requests_total"][()] == 100 + 7 + 1 + 10 + 20
    assert samples["reuseport_connections_total"][()] == 90 + 7 + 1 + 11 + 21
    assert samples["reuseport_rescued_connections_total"][()] == 5 + 2
    per_slot = samples["reuseport_slot_requests_total"]
    assert per_slot == {(("slot", "0"),): 117, (("slot", "1"),): 20, (("slot", "3"),): 1}
    assert samples["reuseport_requests_in_flight"][()] == 2
    assert samples["reuseport_connections_open"][()] == 4
    assert samples["reuseport_listen_overflows_total"][()] == 9
    assert "reuseport_listen_drops_total" not in samples  # not in what was read
    assert samples["reuseport_master_start_time_seconds"][()] == 1000.0
    info = samples["reuseport_master_info"]
    (labels,) = info
    assert dict(labels)["mode"] == "reuseport"
    assert dict(labels)["pid"] == "4242"


def test_pool_events_and_steering_are_exposed_by_label() -> None:
    status = _status(
        (_worker(0, 11, 1), _worker(1, 12, 1, state=WorkerState.DRAINING, heartbeat_age=None))
    )
    samples = _parse(render_metrics(status, Lifetime(), [], started_at=0.0, netstat=None))
    workers = {dict(k)["state"]: v for k, v in samples["reuseport_workers"].items()}
    assert workers == {"starting": 0, "ready": 1, "draining": 1, "stopping": 0}
    spawns = {dict(k)["cause"]: v for k, v in samples["reuseport_worker_spawns_total"].items()}
    assert spawns["start"] == 2
    assert spawns["recycle"] == 3
    assert set(spawns) == {cause.value for cause in SpawnCause}
    exits = {dict(k)["cause"]: v for k, v in samples["reuseport_worker_exits_total"].items()}
    assert exits["recycle"] == 3
    assert set(exits) == {cause.value for cause in ExitCause}
    assert samples["reuseport_reloads_total"][()] == 1
    assert samples["reuseport_recycles_total"][()] == 3
    assert samples["reuseport_rescues_total"][()] == 4
    assert "reuseport_listen_overflows_total" not in samples
    # Only the serving worker's heartbeat is a liveness figure.
    assert samples["reuseport_heartbeat_age_seconds"] == {(("slot", "0"),): 0.1}
    (steering,) = samples["reuseport_steering_info"]
    assert dict(steering) == {"configured": "auto", "active": "p2c", "rescue": "on"}
    assert samples["reuseport_slot_steered_away"] == {(("slot", "0"),): 0, (("slot", "1"),): 1}
    assert samples["reuseport_slot_stalled"][(("slot", "0"),)] == 1
    assert samples["reuseport_slot_load"] == {(("slot", "0"),): 3}
    assert samples["reuseport_slot_queued"] == {(("slot", "0"),): 1}
    assert samples["reuseport_slot_open_connections"] == {(("slot", "0"),): 2}
    assert samples["reuseport_pool_target_workers"][()] == 2
    assert samples["reuseport_pool_max_workers"][()] == 4
    assert "process_cpu_seconds_total" in samples  # the master's own process


def test_accept_queues_per_listener_and_slot() -> None:
    queues = [
        QueueSample(listener="127.0.0.1:8000", slot=0, queued=3, backlog=128),
        QueueSample(listener="unix:/run/a.sock", slot=None, queued=0, backlog=64),
    ]
    samples = _parse(render_metrics(_status(()), Lifetime(), queues, started_at=0.0, netstat=None))
    assert samples["reuseport_listen_queue_connections"] == {
        (("listener", "127.0.0.1:8000"), ("slot", "0")): 3,
        (("listener", "unix:/run/a.sock"), ("slot", "shared")): 0,
    }
    assert (
        samples["reuseport_listen_queue_backlog"][(("listener", "127.0.0.1:8000"), ("slot", "0"))]
        == 128
    )


def test_missing_extra_is_a_configuration_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    with pytest.raises(Exception, match=r"reuseport\[metrics\]") as info:
        metrics.check_available()
    assert info.value.exit_code == 2  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the HTTP side
class _Loop:
    """Drives a ``MetricsServer`` the way the master's loop does: poll, dispatch, expire."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def turn(self, timeout: float = 0.05) -> None:
        poller = select.poll()
        for fd, mask in self.server.pollables().items():
            poller.register(fd, mask)
        for fd, mask in poller.poll(timeout * 1000):
            self.server.on_event(fd, mask)
        self.server.expire(time.monotonic())

    def exchange(self, request: bytes, turns: int = 100) -> bytes:
        with socket.create_connection(self.address, timeout=5) as client:
            client.sendall(request)
            client.setblocking(False)
            data = b""
            for _ in range(turns):
                self.turn()
                try:
                    chunk = client.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    return data
                data += chunk
        raise AssertionError(f"no complete answer after {turns} turns: {data[:200]!r}")

    @property
    def address(self) -> tuple[str, int]:
        assert self.server.sock is not None
        host, port = self.server.sock.getsockname()[:2]
        return host, port


@pytest.fixture
def served() -> Iterator[_Loop]:
    ready = {"ready": False}
    server = MetricsServer(
        MetricsServer.open(Config(metrics="127.0.0.1:0").metrics),  # type: ignore[arg-type]
        snapshot=lambda: _status((_worker(0, 11, 5),)),
        queues=list,
        readiness=lambda: Readiness(ready=ready["ready"], stopping=False),
        lifetime=Lifetime(),
    )
    loop = _Loop(server)
    loop.ready = ready  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        server.close()


def test_serves_metrics_status_and_probes(served: _Loop) -> None:
    reply = served.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert _parse(body)["reuseport_requests_total"][()] == 5
    reply = served.exchange(b"GET /status HTTP/1.0\r\n\r\n")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["master"]["pid"] == 4242
    assert served.exchange(b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert served.exchange(b"GET /readyz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503")
    served.ready["ready"] = True  # type: ignore[attr-defined]
    assert served.exchange(b"GET /readyz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    head_only = served.exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head_only.endswith(b"\r\n\r\n")  # no body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000, b"431"),
    ],
)
def test_bad_requests_get_an_error_status(
    served: _Loop, request_bytes: bytes, status: bytes
) -> None:
    assert served.exchange(request_bytes).split(b" ", 2)[1] == status


def test_a_silent_client_holds_up_nobody_and_is_dropped_at_its_deadline(
    served: _Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "CLIENT_DEADLINE", 0.3)
    with socket.create_connection(served.address, timeout=5) as silent:
        silent.sendall(b"GET /metr")  # and nothing more
        started = time.monotonic()
        reply = served.exchange(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 2.0
        silent.settimeout(0.0)

        def dropped() -> bool:
            served.turn()
            try:
                return silent.recv(100) == b""
            except BlockingIOError:
                return False

        wait_until(dropped, timeout=5.0, interval=0.0)


def test_clients_beyond_the_limit_wait_in_the_backlog(
    served: _Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 2)
    silent = [socket.create_connection(served.address, timeout=5) for _ in range(2)]
    try:
        for _ in range(10):
            served.turn(0.01)
        assert served.server.sock is not None
        listener = served.server.sock.fileno()
        assert listener not in served.server.pollables()  # full: not accepting
        for sock in silent:
            sock.close()
        # The closed clients are dropped (EOF); a new one is answered.
        assert served.exchange(b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        for sock in silent:
            sock.close()


# ------------------------------------------------------------------ end to end
def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, body = http_get("127.0.0.1", port, "/metrics")
    assert status == 200, body
    return _parse(body)


def _metrics_port(server: Server) -> int:
    match = server.wait_for_line(r"Metrics at http://127\.0\.0\.1:(\d+)/metrics")
    return int(match[1])


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [pytest.param("reuseport", marks=requires_reuseport), "shared"])
def test_totals_equal_what_a_load_client_was_answered_across_recycling(mode: str) -> None:
    with Server(
        "-w", "2", "--mode", mode, "--max-requests", "150", "--metrics", "127.0.0.1:0"
    ) as server:
        server.wait_ready()
        port = _metrics_port(server)
        before = _scrape(port)
        assert before["reuseport_requests_total"][()] == 0
        with load(server.port, duration=3.0, concurrency=8) as report:
            pass
        assert report["failed"] == 0, report["outcomes"]
        assert report["ok"] > 600, report  # several recycles of each worker's 150
        # Exact once every live worker's row has caught up (one heartbeat)
        # and the last recycle has finished: a recycle is counted when it
        # starts and its exit when the old worker is reaped, so the two
        # differ while one is still draining.
        seen: dict[str, float] = {}

        def exact() -> bool:
            samples = _scrape(port)
            seen["requests"] = samples["reuseport_requests_total"][()]
            seen["connections"] = samples["reuseport_connections_total"][()]
            seen["recycles"] = samples["reuseport_recycles_total"][()]
            exits = samples["reuseport_worker_exits_total"]
            seen["recycle exits"] = exits.get((("cause", "recycle"),), 0.0)
            return (
                seen["requests"] == report["ok"]
                and seen["connections"] == report["ok"]
                and seen["recycle exits"] == seen["recycles"]
            )

        wait_until(exact, timeout=10, message=lambda: f"{seen} vs {report['ok']} answered")
        assert seen["recycles"] >= 2
        samples = _scrape(port)
        exits = {dict(k)["cause"]: v for k, v in samples["reuseport_worker_exits_total"].items()}
        assert exits["recycle"] == seen["recycles"]
        per_slot = sum(samples["reuseport_slot_requests_total"].values())
        assert per_slot == report["ok"]
        assert samples["reuseport_workers"][(("state", "ready"),)] == 2
        status, body = http_get("127.0.0.1", port, "/status")
        assert status == 200
        assert body["master"]["pid"] == server.pid
        assert http_get("127.0.0.1", port, "/readyz")[0] == 200
        assert server.stop() == 0


@pytest.mark.e2e
def test_without_the_extra_metrics_is_a_clear_start_up_error() -> None:
    path = os.pathsep.join([SHADOW, REPO_ROOT])
    with Server("--metrics", "127.0.0.1:0", env={"PYTHONPATH": path}) as server:
        assert server.wait() == 2
    assert "pip install 'reuseport[metrics]'" in server.stderr
    assert "Traceback" not in server.stderr
