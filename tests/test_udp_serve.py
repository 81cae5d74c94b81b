"""UDP end to end: real ``reuseport serve`` masters, real UDP clients on loopback.

Rules: every client socket has a timeout or is read through a selector with
a deadline; the datagrams that must not be lost are numbered and each answer
is matched to its number, so a loss or a duplicate names itself.  Senders
pace themselves with the selector's timeout (a rate, not a way to wait for
the server).  What the master did (drains, reloads) is read from its status
snapshot, never from its log.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from features import requires_cbpf, requires_reuseport
from support import REPO_ROOT, Server, alive, child_env, socket_inodes_of, wait_until

from reuseport.bench.cli import add_arguments
from reuseport.bench.cli import run as run_bench
from reuseport.control import query
from reuseport.errors import ExitCode

pytestmark = pytest.mark.e2e

TESTS = str(Path(__file__).resolve().parent)
UDP_BIND = ("-b", "udp://127.0.0.1:0")


def ask(address: tuple[str, int], count: int, timeout: float = 5.0) -> dict[bytes, bytes]:
    """Send ``count`` datagrams, each from a socket of its own (a flow each); answers by payload."""
    socks: list[socket.socket] = []
    answers: dict[bytes, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        try:
            for n in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, b"q%d" % n)
                sock.sendto(b"q%d" % n, address)
            while len(answers) < count and time.monotonic() < deadline:
                for key, _ in sel.select(0.1):
                    assert isinstance(key.fileobj, socket.socket)
                    answers[key.data] = key.fileobj.recv(65536)
        finally:
            for sock in socks:
                sock.close()
    assert len(answers) == count, f"{count - len(answers)} of {count} datagrams got no answer"
    return answers


def demo_worker(answer: bytes, sent: bytes) -> dict[str, Any]:
    """The demo's answer: its JSON, a newline, the datagram."""
    head, sep, echo = answer.partition(b"\n")
    assert sep, answer
    assert echo == sent, answer
    worker: dict[str, Any] = json.loads(head)
    return worker


def echo_pid(answer: bytes, sent: bytes) -> int:
    """apps_udp.Echo's answer: its pid, a space, the datagram."""
    pid, sep, echo = answer.partition(b" ")
    assert sep, answer
    assert echo == sent, answer
    return int(pid)


class Stream:
    """Numbered datagrams at a steady rate from a pool of client sockets, answers matched.

    Each datagram goes out from the next socket of the pool (so the flows
    spread over the workers the way the kernel hashes them) and is answered
    once; ``answers`` keeps, per number, every answer that came (a duplicate
    would show as two).
    """

    def __init__(self, address: tuple[str, int], *, rate: float, flows: int = 48) -> None:
        self.address = address
        self.interval = 1.0 / rate
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
        self.sel = selectors.DefaultSelector()
        for sock in self.socks:
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ)
        self.sent: list[bytes] = []
        self.sent_at: dict[bytes, float] = {}
        self.answers: dict[bytes, list[bytes]] = {}
        self.next_send = time.monotonic()

    def close(self) -> None:
        self.sel.close()
        for sock in self.socks:
            sock.close()

    def _read(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            assert isinstance(key.fileobj, socket.socket)
            while True:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    break
                number = b"#" + data.rpartition(b"#")[2]
                self.answers.setdefault(number, []).append(data)

    def run(self, seconds: float, *, sending: bool = True) -> None:
        """Send (if ``sending``) and read for ``seconds``."""
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            if sending and now >= self.next_send:
                payload = b"#%d" % len(self.sent)
                self.socks[len(self.sent) % len(self.socks)].sendto(payload, self.address)
                self.sent.append(payload)
                self.sent_at[payload] = now
                self.next_send += self.interval
            self._read(max(0.0, min(end, self.next_send if sending else end) - now))

    def unanswered(self) -> list[bytes]:
        return [p for p in self.sent if p not in self.answers]

    def finish(self, timeout: float = 5.0) -> None:
        """Stop sending; read until every datagram is answered (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.unanswered() and time.monotonic() < deadline:
            self.run(0.05, sending=False)


def snapshot(control: Path) -> dict[str, Any]:
    return query(str(control), timeout=5.0)


# ------------------------------------------------------------------ reuseport spread
@requires_reuseport
def test_every_worker_answers_its_share_in_reuseport_mode(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    with Server("--mode", "reuseport", "-w", "3", *UDP_BIND, "--control", str(control)) as server:
        ready = server.wait_ready()
        assert ready["mode"] == "reuseport"
        (address,) = server.udp_addresses
        answers = ask(address, 120)
        workers = [demo_worker(answers[k], k) for k in sorted(answers)]
        slots = Counter(w["slot"] for w in workers)
        assert set(slots) == {0, 1, 2}, slots  # the kernel hashed flows to every worker
        assert {w["pid"] for w in workers} == set(server.worker_pids())
        assert {w["mode"] for w in workers} == {"reuseport"}
        # Each worker has its own socket in the group, and the master a copy of each.
        udp = snapshot(control)["udp"]
        assert sorted(row["slot"] for row in udp) == [0, 1, 2]
        assert len({row["inode"] for row in udp}) == 3
        assert all(row["bind"] == f"udp://127.0.0.1:{address[1]}" for row in udp)


@requires_reuseport
def test_a_datagram_protocol_app_is_detected_and_served(tmp_path: Path) -> None:
    with Server(
        "apps_udp:Echo", "--app-dir", TESTS, "--mode", "reuseport", "-w", "2", *UDP_BIND
    ) as server:
        ready = server.wait_ready()
        assert ready["interface"] == "datagram"
        (address,) = server.udp_addresses
        assert server.addresses == []  # no HTTP address: this server has UDP only
        answers = ask(address, 60)
        pids = {echo_pid(answer, sent) for sent, answer in answers.items()}
        assert pids == set(server.worker_pids())


# ------------------------------------------------------------------ scale-down
@requires_reuseport
@requires_cbpf
def test_a_ttou_scale_down_loses_no_datagram(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    with Server("--mode", "reuseport", "-w", "3", *UDP_BIND, "--control", str(control)) as server:
        server.wait_ready()
        (address,) = server.udp_addresses
        stream = Stream(address, rate=300)
        try:
            stream.run(1.0)
            before = Counter(demo_worker(a[0], p)["slot"] for p, a in stream.answers.items())
            server.send_signal(signal.SIGTTOU)

            def drained() -> bool:
                stream.run(0.1)
                snap = snapshot(control)
                return snap["events"]["drains"] == 1 and len(snap["workers"]) == 2

            wait_until(drained, timeout=20, message=lambda: server.stderr[-2000:])
            gone = ({0, 1, 2} - {w["slot"] for w in snapshot(control)["workers"]}).pop()
            drain_end = len(stream.sent)
            stream.run(0.5)
            stream.finish()
        finally:
            stream.close()
        lost = stream.unanswered()
        twice = [p for p, answers in stream.answers.items() if len(answers) > 1]
        assert not lost, f"{len(lost)} of {len(stream.sent)} datagrams lost: {lost[:10]}"
        assert not twice, f"answered more than once: {twice[:10]}"
        assert before[gone] > 0, f"slot {gone} served nothing before the TTOU: {before}"
        late = [
            p
            for p in stream.sent[drain_end:]
            if demo_worker(stream.answers[p][0], p)["slot"] == gone
        ]
        assert not late, "the retired slot still answered after its socket was released"
        assert server.count_lines(r"Worker \d drained in") == 1
        assert len(stream.sent) > 500  # the drain ran under load, not in a quiet moment


# ------------------------------------------------------------------ reload
@requires_reuseport
def test_a_reload_keeps_each_slots_socket_and_loses_nothing(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    args = ("apps_udp:Echo", "--app-dir", TESTS, "--mode", "reuseport", "-w", "2")
    with Server(*args, *UDP_BIND, "--control", str(control)) as server:
        server.wait_ready()
        (address,) = server.udp_addresses
        old_pids = set(server.worker_pids())
        inodes = {row["inode"] for row in snapshot(control)["udp"]}
        stream = Stream(address, rate=300)
        try:
            stream.run(0.5)
            server.send_signal(signal.SIGHUP)

            def reloaded() -> bool:
                stream.run(0.1)
                return bool(snapshot(control)["events"]["reloads"] == 1)

            wait_until(reloaded, timeout=30, message=lambda: server.stderr[-2000:])
            stream.run(0.5)
            stream.finish()
        finally:
            stream.close()
        lost = stream.unanswered()
        assert not lost, f"{len(lost)} of {len(stream.sent)} datagrams lost across the reload"
        new_pids = set(server.worker_pids())
        assert not new_pids & old_pids
        pids = {echo_pid(a[0], p) for p, a in stream.answers.items()}
        assert old_pids <= pids, "the old workers served before the reload"
        assert new_pids <= pids, "the new workers serve after it"
        # The new workers read the very sockets the old ones did.
        assert {row["inode"] for row in snapshot(control)["udp"]} == inodes
        assert server.stop() == 0  # a graceful stop of a datagram app


# ------------------------------------------------------------------ respawn
@requires_reuseport
def test_a_killed_workers_socket_waits_for_its_replacement(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    args = ("apps_udp:Echo", "--app-dir", TESTS, "--mode", "reuseport", "-w", "2")
    with Server(*args, *UDP_BIND, "--control", str(control)) as server:
        server.wait_ready()
        (address,) = server.udp_addresses
        inodes = {row["slot"]: row["inode"] for row in snapshot(control)["udp"]}
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), timeout=10)
        # Sent while the slot has no worker, or while its replacement boots: the
        # datagrams hashed to that slot wait in the socket the master holds.
        answers = ask(address, 60, timeout=15)
        pids = {echo_pid(answer, sent) for sent, answer in answers.items()}
        assert victim not in pids
        assert pids == set(server.worker_pids())  # the replacement answered its share
        assert {row["slot"]: row["inode"] for row in snapshot(control)["udp"]} == inodes
        assert snapshot(control)["events"]["spawns"]["respawn"] == 1
        assert server.stop() == 0


# ------------------------------------------------------------------ shared mode
def test_shared_mode_serves_one_socket_from_every_worker(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    args = ("apps_udp:make_echo", "--app-dir", TESTS, "--mode", "shared", "-w", "2")
    with Server(*args, *UDP_BIND, "--control", str(control)) as server:
        ready = server.wait_ready()
        assert ready["mode"] == "shared"
        (address,) = server.udp_addresses
        answers = ask(address, 60)
        pids = {echo_pid(answer, sent) for sent, answer in answers.items()}
        assert pids <= set(server.worker_pids())
        (row,) = snapshot(control)["udp"]
        assert row["slot"] is None
        assert row["queue"] == 0
        # One socket, held by the master and every worker (no per-worker sockets).
        holders = [
            pid
            for pid in [server.pid, *server.worker_pids()]
            if row["inode"] in socket_inodes_of(pid)
        ]
        assert len(holders) == 3


# ------------------------------------------------------------------ mixed server
@requires_reuseport
def test_a_mixed_server_runs_an_asgi_app_on_tcp_and_a_datagram_app_on_udp(
    tmp_path: Path,
) -> None:
    with Server(
        "apps_pool:app",
        "--datagram-app",
        "apps_udp:Echo",
        "--app-dir",
        TESTS,
        "--mode",
        "reuseport",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        *UDP_BIND,
    ) as server:
        ready = server.wait_ready()
        assert server.stderr.count("serving apps_pool:app as asgi+datagram") == 1, ready
        status, body = server.request("/hello")
        assert status == 200
        assert body["path"] == "/hello"
        (address,) = server.udp_addresses
        answers = ask(address, 40)
        pids = {echo_pid(answer, sent) for sent, answer in answers.items()}
        assert pids <= set(server.worker_pids())
        assert body["pid"] in server.worker_pids()


def test_a_datagram_app_on_a_tcp_bind_stops_the_start_with_the_fix() -> None:
    with Server("apps_udp:Echo", "--app-dir", TESTS, "-w", "2") as server:
        code = server.wait(timeout=20)
        assert code == ExitCode.BOOT_ERROR
        assert "which serves udp:// binds only" in server.stderr
        assert server.stderr.count("which serves udp:// binds only") <= 3


# ------------------------------------------------------------------ status
@requires_reuseport
def test_status_shows_each_udp_sockets_queue_and_drops(tmp_path: Path) -> None:
    control = tmp_path / "c.sock"
    args = ("apps_udp:Echo", "--app-dir", TESTS, "--mode", "reuseport", "-w", "1")
    with Server(*args, *UDP_BIND, "--control", str(control)) as server:
        server.wait_ready()
        (address,) = server.udp_addresses
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"stall", address)  # the worker blocks its loop for 2 s
            for n in range(2000):
                client.sendto(b"x%d" % n, address)  # more than its receive buffer holds
            (row,) = snapshot(control)["udp"]
        assert row["slot"] == 0
        assert row["queue"] > 0, row  # waiting while the worker is stuck
        assert row["drops"] > 0, row  # what did not fit was dropped

        def emptied() -> dict[str, Any] | None:
            (now,) = snapshot(control)["udp"]
            return now if now["queue"] == 0 else None

        after = wait_until(emptied, timeout=15)
        assert after["drops"] >= row["drops"]
        shown = subprocess.run(
            [sys.executable, "-m", "reuseport", "status", "--control", str(control)],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
            cwd=REPO_ROOT,
            check=True,
        ).stdout
        lines = shown.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("UDP SOCKET"))
        assert lines[header].split()[-3:] == ["SLOT", "QUEUE", "DROPS"]
        assert lines[header + 1].split() == [
            f"udp://127.0.0.1:{address[1]}",
            "0",
            "0",
            str(after["drops"]),
        ]


# ------------------------------------------------------------------ the bench
@requires_reuseport
def test_the_bench_udp_scenario_measures_both_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="reuseport bench")
    add_arguments(parser)
    out = tmp_path / "bench.json"
    argv = [
        "--scenario", "udp", "--duration", "1.5", "-w", "2", "--connections", "16",
        "--modes", "reuseport,shared", "--json", str(out),
    ]  # fmt: skip
    code = run_bench(parser.parse_args(argv))
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "udp: one request = one UDP datagram and its answer" in text.out
    doc = json.loads(out.read_text())
    assert doc["generators"] == {"udp": "builtin"}
    runs = doc["runs"]
    assert [(r["scenario"], r["mode"]) for r in runs] == [("udp", "reuseport"), ("udp", "shared")]
    for run_ in runs:
        assert run_["requests"] > 100, run_["requests"]
        assert run_["errors"] == {}, run_["errors"]  # nothing lost
        assert run_["modes_seen"] == [run_["mode"]]
        assert run_["connections"] == 16  # one socket per client
        assert sum(run_["requests_per_worker"].values()) == run_["requests"]
        assert set(run_["requests_per_worker"]) == {"0", "1"}
        assert any("--bind" in a or "udp://" in a for a in run_["server_argv"])
    reuseport = runs[0]
    # 16 flows hashed over 2 sockets: both get some (a 1 in 32768 chance of all on one).
    assert all(n > 0 for n in reuseport["requests_per_worker"].values())
    pids = {r["server_pid"] for r in runs} | {p for r in runs for p in r["worker_pids"]}
    wait_until(lambda: not [p for p in pids if alive(p)], timeout=5)
