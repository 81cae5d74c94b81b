"""Work-conserving reuseport, end to end: a stopped worker does not strand connections.

A SIGSTOPped worker stands for a stuck loop, a debugger or a long blocking
call: the kernel keeps handing it new connections (hash steering), or a few
(p2c), and without help they would wait until it runs again.  With sibling
rescue, its siblings serve them; with p2c steering, few land there at all.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from features import requires_p2c, requires_reuseport
from support import Server, read_responses, send_requests, wait_until

from reuseport.control import query

pytestmark = [pytest.mark.e2e, requires_reuseport]

_WORKERS = 4
_NEW = 200


def _snapshot(control: str) -> dict[str, Any]:
    return query(control)


def _accepted(control: str) -> int:
    return int(_snapshot(control)["totals"]["accepted"])


def _rescued(control: str) -> int:
    return int(_snapshot(control)["totals"]["rescued"])


def _accepted_by(control: str) -> dict[int, int]:
    return {w["pid"]: int(w["accepted"]) for w in _snapshot(control)["workers"]}


@pytest.mark.parametrize(
    "steering",
    ["hash", "load", pytest.param("p2c", marks=requires_p2c), "auto"],
)
def test_a_stopped_workers_new_connections_are_all_answered_by_its_siblings(
    tmp_path: Path, steering: str
) -> None:
    """4 workers, one SIGSTOPped: 200 new connections all answered within 3 s, each once."""
    control = str(tmp_path / "c.sock")
    args = ("-w", str(_WORKERS), "--mode", "reuseport", "--steering", steering)
    with Server(*args, "--control", control) as server:
        server.wait_ready()
        pids = server.wait_workers(_WORKERS)
        stopped = pids[0]
        before = _accepted_by(control)
        os.kill(stopped, signal.SIGSTOP)
        try:
            socks = send_requests(server.address, _NEW)
            try:
                responses = read_responses(socks, timeout=3.0)
            finally:
                for sock in socks:
                    sock.close()
            by_pid = collections.Counter(body["pid"] for status, body in responses)
            assert [status for status, _ in responses] == [200] * _NEW
            assert stopped not in by_pid
            if steering == "hash":
                # About a quarter were hashed to the stopped worker: rescued.
                wait_until(lambda: _rescued(control) >= 20, timeout=5)
                slot = next(w["slot"] for w in _snapshot(control)["workers"] if w["pid"] == stopped)
                assert _snapshot(control)["steering"]["rescuing"] == [slot]
                assert _snapshot(control)["events"]["rescues"] >= 1

            def taken() -> int:
                now = _accepted_by(control)
                return sum(now[pid] - before.get(pid, 0) for pid in now if pid != stopped)

            # Each connection was accepted once, by a running worker (their
            # rows catch up at their next heartbeat).
            assert wait_until(lambda: taken() >= _NEW and taken(), timeout=5) == _NEW
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert _snapshot(control)["steering"]["rescue"] is True
        assert server.stop() == 0


def test_rescue_stops_when_the_worker_runs_again(tmp_path: Path) -> None:
    """After SIGCONT the worker takes its own connections again; siblings stop rescuing.

    Only the end of the rescue and the worker's return are asserted: how many
    connections a sibling still takes in between depends on how busy the
    machine is (a running worker that misses 10 ms with a connection waiting
    is rescued for a moment, as it should be).  The decision itself is
    tested without processes (``test_steering``, ``test_traffic``).
    """
    control = str(tmp_path / "c.sock")
    args = ("-w", "2", "--mode", "reuseport", "--steering", "hash", "--control", control)
    with Server(*args) as server:
        server.wait_ready()
        stopped, _other = server.wait_workers(2)
        slot = next(w["slot"] for w in _snapshot(control)["workers"] if w["pid"] == stopped)
        os.kill(stopped, signal.SIGSTOP)
        try:
            socks = send_requests(server.address, 60)
            try:
                read_responses(socks, timeout=3.0)
            finally:
                for sock in socks:
                    sock.close()
            wait_until(lambda: _rescued(control) >= 10, timeout=5)
            assert _snapshot(control)["steering"]["rescuing"] == [slot]
        finally:
            os.kill(stopped, signal.SIGCONT)

        def answered_by_it() -> bool:
            status, body = server.request("/")
            assert status == 200
            return bool(body["pid"] == stopped)

        wait_until(answered_by_it, timeout=10)  # it serves its own again...
        wait_until(lambda: _snapshot(control)["steering"]["rescuing"] == [], timeout=10)
        assert server.stop() == 0  # ...and the siblings stopped serving its queue


@requires_p2c
def test_p2c_keeps_new_connections_from_a_stopped_worker(tmp_path: Path) -> None:
    """Without rescue.  Once its queue stands still, no new connection is queued there.

    The program penalises a slot whose queue holds connections with no
    accept for 10 ms, and the master one whose queue stops going down: a
    stopped worker ends up with twice the penalty any running worker can
    get, so every later connection goes elsewhere (hashing would keep
    sending it a quarter).
    """
    control = str(tmp_path / "c.sock")
    args = ("-w", str(_WORKERS), "--mode", "reuseport", "--steering", "p2c", "--no-rescue")
    with Server(*args, "--control", control) as server:
        server.wait_ready()
        stopped = server.wait_workers(_WORKERS)[0]
        assert _snapshot(control)["steering"]["active"] == "p2c"
        slot = next(w["slot"] for w in _snapshot(control)["workers"] if w["pid"] == stopped)

        def queued() -> int:
            return next(
                int(w["queue"] or 0) for w in _snapshot(control)["workers"] if w["pid"] == stopped
            )

        def judged_stalled() -> bool:
            steering = _snapshot(control)["steering"]
            loads = {entry["slot"]: entry for entry in steering["loads"]}
            return slot in steering["stalled"] and loads[slot]["stalled"]

        os.kill(stopped, signal.SIGSTOP)
        socks: list[socket.socket] = []
        try:
            # Until both the program and the master see it stand still.
            for _ in range(20):
                socks += send_requests(server.address, 10)
                if wait_until_or_none(judged_stalled, timeout=0.5):
                    break
            assert judged_stalled()
            before = queued()
            socks += send_requests(server.address, 100)
            assert queued() == before
        finally:
            os.kill(stopped, signal.SIGCONT)
        try:
            responses = read_responses(socks, timeout=10.0)
        finally:
            for sock in socks:
                sock.close()
        assert [status for status, _ in responses] == [200] * len(socks)
        assert server.stop() == 0


def wait_until_or_none(predicate: Callable[[], bool], timeout: float) -> bool:
    """``wait_until`` that answers False at the timeout instead of failing."""
    try:
        return bool(wait_until(predicate, timeout=timeout))
    except AssertionError:
        return False
