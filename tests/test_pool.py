"""The process manager end to end: pools, reload, recycling, retirement, heartbeat.

Rules: real masters (``support.Server``), real workers, real sockets on
127.0.0.1 port 0.  Load comes from ``tests/loadclient.py`` run as its own
process, so this process stays free to send signals; it records the outcome
of every request, and "zero loss" means its ``failed`` count is 0.  Pool
state comes from the master's control socket (``reuseport status``), never
from sleeping: every wait is a bounded ``wait_until`` or ``wait_for_line``.
What the master did (spawns and exits by cause, reloads, recycles, drains) is
read from the ``events`` counters of its status, never counted in log lines:
the log says *how*, the counters say *how many*.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps_pool import BROKEN, RELOADABLE
from features import requires_cbpf, requires_p2c, requires_reuseport
from support import (
    REPO_ROOT,
    Server,
    alive,
    child_env,
    http_get,
    load,
    read_responses,
    send_requests,
    still_running,
    wait_until,
)

from reuseport.control import query

pytestmark = pytest.mark.e2e  # every test runs a real server

TESTS_DIR = str(Path(__file__).resolve().parent)

REUSEPORT = pytest.param("reuseport", marks=requires_reuseport)
MODES = [REUSEPORT, "shared"]


# ------------------------------------------------------------------ helpers
@pytest.fixture
def control() -> Iterator[str]:
    """A control-socket path short enough for AF_UNIX, in a private directory."""
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as directory:
        yield os.path.join(directory, "c.sock")


def workers_by_state(path: str) -> list[dict[str, Any]]:
    return list(query(path)["workers"])


def ready_workers(path: str) -> list[dict[str, Any]]:
    return [w for w in workers_by_state(path) if w["state"] == "ready"]


def wait_ready_count(path: str, count: int, timeout: float, server: Server) -> list[dict[str, Any]]:
    """Wait until the master reports exactly ``count`` workers, all ready."""
    seen: list[dict[str, Any]] = []

    def settled() -> bool:
        nonlocal seen
        seen = workers_by_state(path)
        return len(seen) == count and all(w["state"] == "ready" for w in seen)

    wait_until(
        settled,
        timeout,
        interval=0.05,
        message=lambda: f"workers {[(w['slot'], w['state']) for w in seen]}\n{server._tail()}",
    )
    return seen


def events(path: str) -> dict[str, Any]:
    return dict(query(path)["events"])


def wait_settled(path: str, count: int, timeout: float, server: Server) -> dict[str, Any]:
    """Wait until exactly ``count`` workers run, all ready; return the status then.

    Every worker the master ever started is then either running or counted
    as exited, by cause: the counters must add up.
    """
    wait_ready_count(path, count, timeout, server)
    snapshot = query(path)
    spawned = sum(snapshot["events"]["spawns"].values())
    exited = sum(snapshot["events"]["exits"].values())
    assert spawned - exited == len(snapshot["workers"]) == count, snapshot["events"]
    return snapshot


def one_shared_worker(app: str, *args: str) -> Server:
    """A master running one shared-mode worker of ``apps_pool:<app>``."""
    return Server(f"apps_pool:{app}", "--app-dir", TESTS_DIR, "-w", "1", "--mode", "shared", *args)


def pids_answering(server: Server, requests: int, path: str = "/") -> collections.Counter[int]:
    answered: collections.Counter[int] = collections.Counter()
    for _ in range(requests):
        status, body = server.request(path)
        assert status == 200, body
        answered[body["pid"]] += 1
    return answered


# ------------------------------------------------------------------ zero loss under churn
@pytest.mark.parametrize("mode", MODES)
def test_zero_loss_under_reload_recycle_and_scaling_churn(mode: str, control: str) -> None:
    """Reloads, recycles, scale-ups and scale-downs, all during load: no request fails."""
    with Server(
        "-w",
        "2",
        "--mode",
        mode,
        "--max-requests",
        "300",
        "--max-requests-jitter",
        "50",
        "--control",
        control,
    ) as server:
        server.wait_ready()
        cycle = [signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU]
        sent: collections.Counter[str] = collections.Counter()
        with load(server.port, duration=6.0, concurrency=16) as report:
            for i in range(30):  # bounded; the load ends after ~12 turns
                if not still_running(report, 0.5):
                    break
                sig = cycle[i % len(cycle)]
                server.send_signal(sig)
                sent[sig.name] += 1
            if sent["SIGTTIN"] > sent["SIGTTOU"]:
                server.send_signal(signal.SIGTTOU)
                sent["SIGTTOU"] += 1
        print(f"signals {dict(sent)}; load {report}")
        assert report["failed"] == 0, report["outcomes"]
        assert report["ok"] >= 2000, report
        assert sent["SIGHUP"] >= 3
        # The pool settles back to two workers, every replacement done.
        counted = wait_settled(control, 2, timeout=20, server=server)["events"]
        spawns, exits = counted["spawns"], counted["exits"]
        print(f"events {counted}")
        assert counted["reloads"] >= 2
        assert counted["recycles"] >= 3
        assert counted["reloads_failed"] == 0
        assert spawns["start"] == 2
        # Every new worker of a reload or recycle replaced an old one, which then exited.
        assert spawns["reload"] + spawns["recycle"] == exits["reload"] + exits["recycle"]
        assert exits["recycle"] == counted["recycles"]
        assert exits["scale"] >= 2
        if mode == "reuseport":
            assert counted["drains"] == exits["scale"]  # every scale-down went through the drain
        assert exits["crash"] == exits["heartbeat"] == exits["boot"] == 0
        assert server.count_lines(r"killed by") == 0  # nobody outlived a graceful timeout
        # Every request was answered by a worker of ours; many different ones took part.
        assert len(report["pids"]) >= 6
        assert server.stop() == 0


# ------------------------------------------------------------------ SIGKILL with a full queue
@requires_reuseport
def test_sigkilled_worker_loses_none_of_its_queued_connections(control: str) -> None:
    """A stopped worker's queue (about half of 200 connections) survives its SIGKILL.

    The master holds a duplicate of every slot's socket, so the replacement
    inherits the queue the dead worker never accepted.
    """
    count = 200
    # Hash steering and no rescue: the queue behind the stopped worker must fill.
    with Server(
        "-w", "2", "--mode", "reuseport", "--steering", "hash", "--no-rescue", "--control", control
    ) as server:
        server.wait_ready()
        stopped, other = server.wait_workers(2)
        os.kill(stopped, signal.SIGSTOP)
        try:
            socks = send_requests(server.address, count)
        except BaseException:
            os.kill(stopped, signal.SIGKILL)
            raise
        try:
            os.kill(stopped, signal.SIGKILL)
            wait_until(lambda: events(control)["exits"]["crash"] == 1, timeout=10)
            responses = read_responses(socks, timeout=20)
        finally:
            for sock in socks:
                sock.close()
        statuses = collections.Counter(status for status, _ in responses)
        by_pid = collections.Counter(body["pid"] for _, body in responses)
        print(f"statuses {dict(statuses)}, answered by {dict(by_pid)}")
        assert statuses == {200: count}
        assert stopped not in by_pid
        (replacement,) = set(server.wait_workers(2)) - {other}
        assert set(by_pid) == {other, replacement}
        # Hashing put a fair share behind the stopped worker: binomial(200, 1/2) > 60.
        assert by_pid[replacement] >= 60, by_pid
        assert events(control)["spawns"]["respawn"] == 1
        assert server.stop() == 0


# ------------------------------------------------------------------ scale-down drains
@requires_reuseport
@requires_cbpf
@pytest.mark.parametrize(
    ("steering", "least_queued"),
    [
        ("hash", 20),  # binomial(150, 1/3): the drain has real work to do
        pytest.param("p2c", 1, marks=requires_p2c),  # p2c sends a stopped worker few
    ],
)
def test_scale_down_drains_a_full_queue_without_loss(
    control: str, steering: str, least_queued: int
) -> None:
    """SIGTTOU retires the highest slot while connections wait in its queue.

    The retiring worker is SIGSTOPped, so its kernel accept queue fills and
    stays full (no sibling rescue here).  Then SIGTTOU: the master must steer
    new connections away (a cBPF program, or the p2c program's active slots;
    checked: 60 connections made after the "draining" log line all go to the
    other workers, though the retiring one still listens) and let the worker,
    once continued, accept and answer its whole queue before its socket
    closes.  Without the drain, closing that socket would reset every queued
    connection (or, with the master's duplicate left open, leave them
    unanswered): this test would fail either way.
    """
    first, later = 150, 60
    with Server(
        "-w",
        "3",
        "--mode",
        "reuseport",
        "--steering",
        steering,
        "--no-rescue",
        "--control",
        control,
        "--graceful-timeout",
        "10",
    ) as server:
        server.wait_ready()
        workers = wait_ready_count(control, 3, 10, server)
        victim = max(workers, key=lambda w: w["slot"])
        pid = victim["pid"]
        os.kill(pid, signal.SIGSTOP)
        socks = []
        try:
            socks += send_requests(server.address, first)
            queued = wait_until(
                lambda: next(w["queue"] for w in workers_by_state(control) if w["pid"] == pid),
                timeout=5,
            )
            server.send_signal(signal.SIGTTOU)
            wait_until(
                lambda: any(
                    w["pid"] == pid and w["state"] == "draining" for w in workers_by_state(control)
                ),
                timeout=5,
                message=server._tail,
            )
            socks += send_requests(server.address, later)
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            responses = read_responses(socks, timeout=20)
        finally:
            for sock in socks:
                sock.close()
        by_pid = [body["pid"] for status, body in responses if status == 200]
        assert len(by_pid) == first + later
        drained = by_pid[:first].count(pid)
        print(f"queued at SIGTTOU: {queued}; answered by the retiring worker: {drained}")
        assert queued >= least_queued
        assert drained >= queued
        assert pid not in by_pid[first:], "a connection reached the retiring worker's queue"
        wait_until(lambda: not alive(pid), timeout=15, message=server._tail)
        remaining = wait_settled(control, 2, 10, server)["workers"]
        assert victim["slot"] not in {w["slot"] for w in remaining}
        assert events(control)["drains"] == 1
        # The slot's socket is closed: nothing hashes into a dead queue.
        assert pids_answering(server, 30).keys() <= {w["pid"] for w in remaining}
        assert server.stop() == 0


@requires_reuseport
@requires_cbpf
def test_repeated_scale_down_and_up_under_load_loses_nothing(control: str) -> None:
    """TTOU/TTIN cycles during load: every scale-down goes through the drain, 0 failures."""
    with Server(
        "-w", "3", "--mode", "reuseport", "--graceful-timeout", "5", "--control", control
    ) as server:
        server.wait_ready()
        sent: collections.Counter[str] = collections.Counter()
        with load(server.port, duration=5.0, concurrency=16) as report:
            for i in range(20):
                if not still_running(report, 0.25):
                    break
                sig = signal.SIGTTOU if i % 2 == 0 else signal.SIGTTIN
                server.send_signal(sig)
                sent[sig.name] += 1
        if sent["SIGTTOU"] > sent["SIGTTIN"]:
            server.send_signal(signal.SIGTTIN)
        print(f"load {report}; signals {dict(sent)}")
        assert report["failed"] == 0, report["outcomes"]
        assert report["ok"] >= 1000
        # TTOU and TTIN came in pairs, so the pool ends where it began.
        counted = wait_settled(control, 3, timeout=15, server=server)["events"]
        print(f"events {counted}")
        assert counted["drains"] >= 3
        assert counted["drains"] == counted["exits"]["scale"]
        assert counted["spawns"]["scale"] == counted["exits"]["scale"]
        assert server.stop() == 0


# ------------------------------------------------------------------ dynamic pool
@pytest.mark.parametrize("mode", MODES)
def test_dynamic_pool_grows_under_load_and_shrinks_back(mode: str, control: str) -> None:
    with Server(
        "--mode",
        mode,
        "--pm",
        "dynamic",
        "--max-workers",
        "4",
        "--min-spare",
        "1",
        "--max-spare",
        "1",
        "--start-workers",
        "1",
        "--control",
        control,
    ) as server:
        server.wait_ready()
        assert len(wait_ready_count(control, 1, 10, server)) == 1
        peak = 0

        def grown() -> bool:
            nonlocal peak
            peak = max(peak, len(ready_workers(control)))
            return peak == 4

        # One more worker per second (min_spare 1): 1 -> 4 takes about 3 s.
        with load(server.port, duration=8.0, concurrency=16) as report:
            wait_until(grown, timeout=8, interval=0.1, message=server._tail)
        assert report["failed"] == 0, report["outcomes"]
        assert len(report["pids"]) >= 4
        assert 1 <= server.count_lines(r"server reached --max-workers \(4\)") <= 2
        # Idle again: one worker retired per second, down to max_spare idle workers.
        counted = wait_settled(control, 1, timeout=15, server=server)["events"]
        assert counted["spawns"]["start"] == 1
        assert counted["spawns"]["scale"] >= 3
        assert counted["exits"]["scale"] == counted["spawns"]["scale"]
        status, _ = server.request("/")
        assert status == 200
        assert server.stop() == 0


# ------------------------------------------------------------------ ondemand pool
@pytest.mark.parametrize("mode", MODES)
def test_ondemand_starts_empty_serves_and_idles_out(mode: str, control: str) -> None:
    with Server(
        "--mode",
        mode,
        "--pm",
        "ondemand",
        "--max-workers",
        "3",
        "--idle-timeout",
        "1",
        "--control",
        control,
    ) as server:
        ready = server.wait_ready()
        assert ready["workers"] == "0"
        assert server.worker_pids() == []
        assert query(control)["workers"] == []
        for _ in range(2):
            # The first request waits in the queue until a worker starts for it.
            status, body = server.request("/", timeout=10)
            assert status == 200
            (pid,) = server.worker_pids()
            assert body["pid"] == pid
            assert body["mode"] == mode
            # Idle for --idle-timeout: back to zero, with nothing left behind.
            wait_until(lambda: not server.worker_pids(), timeout=10, message=server._tail)
            assert not alive(pid)

        def both_counted() -> dict[str, Any] | None:
            counted = events(control)
            return counted if counted["exits"]["scale"] == 2 else None

        counted = wait_until(both_counted, timeout=5)
        assert counted["spawns"] == {
            "start": 0,
            "respawn": 0,
            "reload": 0,
            "recycle": 0,
            "scale": 2,
        }
        # The ondemand anchor (slot 0) is never drained: its worker just stops.
        assert counted["drains"] == 0
        assert server.stop() == 0


# ------------------------------------------------------------------ heartbeat
def test_stuck_event_loop_is_aborted_and_replaced(control: str) -> None:
    with one_shared_worker("app", "--timeout", "1", "--control", control) as server:
        server.wait_ready()
        (stuck,) = server.wait_workers(1)
        # The worker dies mid-request (RemoteDisconnected is a ConnectionResetError).
        with pytest.raises(ConnectionResetError):
            http_get(*server.address, "/block?s=20", timeout=15)
        server.wait_for_line(
            rf"Worker 0 \(pid {stuck}\) is stuck: its event loop has not run for "
            r"[\d.]+s \(--timeout 1\.0\); sending SIGABRT"
        )
        server.wait_for_line(rf"\(pid {stuck}\) was killed by SIGABRT")
        assert not alive(stuck)
        status, body = server.request("/")
        assert status == 200
        assert body["pid"] != stuck
        assert body["pid"] in server.wait_workers(1)
        counted = wait_settled(control, 1, timeout=5, server=server)["events"]
        assert counted["exits"]["heartbeat"] == 1
        assert counted["exits"]["crash"] == 0
        assert counted["spawns"]["respawn"] == 1
        assert server.stop() == 0


def test_busy_but_live_worker_is_not_killed() -> None:
    """Many slow requests on a live loop, for longer than --timeout: nobody is killed."""
    with one_shared_worker("app", "--timeout", "1") as server:
        server.wait_ready()
        (pid,) = server.wait_workers(1)
        started = time.monotonic()
        socks = send_requests(server.address, 50, "/sleep?s=2.5")
        try:
            responses = read_responses(socks, timeout=15)
        finally:
            for sock in socks:
                sock.close()
        assert time.monotonic() - started >= 2.5  # longer than the heartbeat timeout
        assert {(status, body["pid"]) for status, body in responses} == {(200, pid)}
        assert server.worker_pids() == [pid]
        assert server.count_lines(r"stuck|SIGABRT|killed") == 0
        assert server.stop() == 0


# ------------------------------------------------------------------ reload of broken code
def _write_app(directory: Path, source: str) -> None:
    path = directory / "reloadable_app.py"
    tmp = directory / "reloadable_app.py.tmp"
    tmp.write_text(source)
    os.replace(tmp, path)


@pytest.mark.parametrize("mode", MODES)
def test_reload_of_broken_code_keeps_the_old_workers(
    mode: str, tmp_path: Path, control: str
) -> None:
    _write_app(tmp_path, RELOADABLE.format(version="v1"))
    with Server(
        "reloadable_app:app",
        "--app-dir",
        str(tmp_path),
        "-w",
        "2",
        "--mode",
        mode,
        "--control",
        control,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    ) as server:
        server.wait_ready()
        old = server.wait_workers(2)
        answered = pids_answering(server, 10)
        assert set(answered) <= set(old)

        _write_app(tmp_path, BROKEN)
        start = len(server.lines)
        server.send_signal(signal.SIGHUP)
        server.wait_for_line(r"Reload of worker \d+ failed: cannot load app", start=start)
        # The message carries the traceback; its last line names the survivor.
        kept = server.wait_for_line(r"The running worker \(pid (\d+)\) keeps serving", start=start)
        assert int(kept[1]) in old
        assert server.count_lines(r"deliberately broken for the reload test") >= 1
        # The failed worker is reaped; the old ones serve on, unchanged.
        counted = wait_settled(control, 2, timeout=10, server=server)["events"]
        assert (counted["reloads"], counted["reloads_failed"]) == (0, 1)
        assert counted["exits"]["boot"] == 1
        assert server.wait_workers(2) == old
        assert server.returncode is None
        for _ in range(10):
            status, body = server.request("/")
            assert status == 200
            assert body == {"pid": body["pid"], "version": "v1"}
            assert body["pid"] in old

        _write_app(tmp_path, RELOADABLE.format(version="v2"))
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: events(control)["reloads"] == 1, timeout=20, message=server._tail)
        counted = wait_settled(control, 2, timeout=15, server=server)["events"]
        assert counted["spawns"]["reload"] == 3  # the failed one, then one per slot
        assert counted["exits"]["reload"] == 2
        new = server.wait_workers(2)
        assert not set(new) & set(old)
        for _ in range(10):
            status, body = server.request("/")
            assert status == 200
            assert body["version"] == "v2"
            assert body["pid"] in new
        assert server.stop() == 0


# ------------------------------------------------------------------ status
@pytest.mark.parametrize("mode", MODES)
def test_status_shows_every_worker_ready_with_its_requests(mode: str, control: str) -> None:
    with Server("-w", "3", "--mode", mode, "--control", control) as server:
        server.wait_ready()
        pids = server.wait_workers(3)
        wait_ready_count(control, 3, 10, server)
        answered = pids_answering(server, 60)

        def counted() -> dict[str, Any] | None:
            out = subprocess.run(
                [sys.executable, "-m", "reuseport", "status", "--json", "--control", control],
                capture_output=True,
                text=True,
                timeout=10,
                env=child_env(),
                cwd=REPO_ROOT,
            )
            assert out.returncode == 0, out.stderr
            snapshot: dict[str, Any] = json.loads(out.stdout)
            # Rows are refreshed by each worker's heartbeat (every 0.25 s).
            total = sum(w["requests"] for w in snapshot["workers"])
            return snapshot if total >= 60 else None

        snapshot = wait_until(counted, timeout=5, interval=0.1)
        workers = snapshot["workers"]
        assert snapshot["master"]["pid"] == server.pid
        assert snapshot["master"]["mode"] == mode
        assert snapshot["pool"]["running"] == 3
        assert sorted(w["pid"] for w in workers) == pids
        assert sorted(w["slot"] for w in workers) == [0, 1, 2]
        assert {w["state"] for w in workers} == {"ready"}
        for w in workers:
            assert w["requests"] >= answered[w["pid"]], (w, answered)
            assert w["heartbeat_age"] is not None
            assert w["heartbeat_age"] < 2
        assert snapshot["totals"]["requests"] == sum(w["requests"] for w in workers)

        human = subprocess.run(
            [sys.executable, "-m", "reuseport", "status", "--control", control],
            capture_output=True,
            text=True,
            timeout=10,
            env=child_env(),
            cwd=REPO_ROOT,
        )
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0].startswith(f"reuseport master {server.pid}")
        assert "pool: static, 3 running" in lines[1]
        for w in workers:
            row = [line for line in lines if re.match(rf"\s*{w['slot']}\s+{w['pid']}\s", line)]
            assert len(row) == 1, human.stdout
            assert " ready " in row[0]
        assert server.stop() == 0


# ------------------------------------------------------------------ crash loop backoff
def test_worker_crashing_right_after_start_is_respawned_with_backoff(control: str) -> None:
    """A worker that dies 0.2 s after it is ready, every time: the delays double."""
    with one_shared_worker("crash_soon", "--control", control) as server:
        server.wait_ready()
        server.wait_for_line(
            r"Worker 0 crashed 5 times in a row right after start; next try in 1\.6s", timeout=15
        )
        delays = [
            float(m[1])
            for line in server.lines
            if (
                m := re.search(
                    r"crashed \d+ times in a row right after start; next try in ([\d.]+)s", line
                )
            )
        ]
        assert delays[:4] == [0.2, 0.4, 0.8, 1.6]
        assert server.returncode is None  # a crash after boot is not a boot error: no halt
        counted = events(control)
        assert counted["exits"]["crash"] >= 5
        assert counted["spawns"]["respawn"] >= 4  # the fifth waits out its 1.6 s
        assert counted["exits"]["boot"] == 0  # each was ready before it crashed
        assert server.stop() == 0
