"""The server under test: one ``reuseport serve`` master in a subprocess.

Rules: every wait is bounded; the master's stderr is drained by a thread for
the process's whole life so its pipe never fills (churn makes the master log
a lot); ``stop()`` never leaves a process behind (SIGTERM, then SIGKILL of the
master *and* of the workers it had, since an orphaned worker would keep the
port and skew the next run).  Signals go only to the master we started or to
its own children.

What happened to the pool (reloads, recycles, drains, crashes, spawns and
exits by cause) is read from the master's own counters over its control
socket (``--control``, ``pool_state()``), before and after a run, never from
its log: rewording a log line must not zero a count.  The log gives only the
port and readiness (the ``Listening at`` and ``Ready:`` lines) and the
warning and error lines a run shows.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .. import procfs
from ..control import query
from ..errors import ControlError
from .errors import BenchError
from .events import PoolState

__all__ = ["ServerProcess", "fetch_worker"]

_LISTENING = re.compile(r"Listening at http://127\.0\.0\.1:(\d+)")
_LISTENING_UDP = re.compile(r"Listening at udp://127\.0\.0\.1:(\d+)")
_READY = re.compile(r"Ready: (\d+) workers?")
_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) ")
_LOG_TAIL = 200
_PROBLEMS_KEPT = 50
_QUERY_TIMEOUT = 5.0  # the master answers between two turns of its loop
_SETTLE_POLL = 0.05


def fetch_worker(port: int, *, timeout: float = 1.0) -> tuple[int, int] | None:
    """(pid, slot) of the worker that answers one request, or None on any failure."""
    import json

    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    _, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        data = json.loads(body)
        return int(data["pid"]), int(data["slot"])
    except (ValueError, KeyError, TypeError):
        return None


def _mode_args(mode: str) -> list[str]:
    """``reuseport+p2c+norescue`` -> ``--mode reuseport --steering p2c --no-rescue``.

    ``+hash`` is the kernel's plain hash: it turns sibling rescue off too.
    """
    base, *options = mode.split("+")
    args = ["--mode", base]
    for option in options:
        if option == "norescue":
            args.append("--no-rescue")
        elif option == "hash":
            args += ["--steering", "hash", "--no-rescue"]
        else:
            args += ["--steering", option]
    return args


class ServerProcess:
    """``python -m reuseport serve`` on 127.0.0.1:0 in one mode.

    ``reuseport+STEERING`` is reuseport mode with ``--steering STEERING``
    and ``+norescue`` adds ``--no-rescue``; ``reuseport+hash`` turns sibling
    rescue off too (the kernel alone).
    """

    def __init__(
        self,
        *,
        mode: str,
        workers: int,
        app: str | None,
        command: Sequence[str] = (sys.executable, "-m", "reuseport"),
        start_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        control: Path | None = None,
    ) -> None:
        self.mode = mode
        self.workers = workers
        self.app = app
        self.start_timeout = start_timeout
        # A private folder for the control socket unless the caller names one;
        # stop() removes it.
        self._own_dir: str | None = None
        if control is None:
            self._own_dir = tempfile.mkdtemp(prefix="reuseport-srv-")
            control = Path(self._own_dir, "control.sock")
        self.control = control
        self.argv = [
            *command,
            "serve",
            "--bind",
            "127.0.0.1:0",
            *_mode_args(mode),
            "-w",
            str(workers),
            "--log-level",
            "info",
            "--control",
            str(self.control),
            *extra_args,
            *([app] if app else []),
        ]
        self.log_path = log_path  # every line of the master's log, when given
        self.port = 0
        self.udp_port = 0  # the udp:// bind's, when the scenario adds one
        self._proc: subprocess.Popen[str] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        self._cond = threading.Condition()
        self._ready = False
        self._reader: threading.Thread | None = None
        self.known_workers: set[int] = set()  # every worker pid we ever saw
        self._log_counts: Counter[str] = Counter()  # "warning" / "error" lines
        self._problems: list[str] = []  # the first warning and error lines

    @property
    def log_problems(self) -> dict[str, int]:
        """How many warning and error lines the master's log has had so far."""
        with self._cond:
            return dict(self._log_counts)

    @property
    def problems(self) -> list[str]:
        """The first warning/error lines of the master's log."""
        with self._cond:
            return list(self._problems)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def log_tail(self, lines: int = 15) -> str:
        with self._cond:
            return "\n".join(list(self._log)[-lines:])

    def _drain(self, stream: IO[str]) -> None:
        with contextlib.ExitStack() as stack:
            copy = stack.enter_context(self.log_path.open("w")) if self.log_path else None
            for line in stream:
                if copy is not None:
                    copy.write(line)
                self._take(line.rstrip("\n"))
        with self._cond:
            self._cond.notify_all()  # EOF: the master is gone

    def _take(self, line: str) -> None:
        with self._cond:
            self._log.append(line)
            if problem := _PROBLEM.search(line):
                self._log_counts["warning" if problem.group(1) == "WARNING" else "error"] += 1
                if len(self._problems) < _PROBLEMS_KEPT:
                    self._problems.append(line)
            if not self.port and (m := _LISTENING.search(line)):
                self.port = int(m.group(1))
                self._cond.notify_all()
            if not self.udp_port and (m := _LISTENING_UDP.search(line)):
                self.udp_port = int(m.group(1))
            if not self._ready and _READY.search(line):
                self._ready = True
                self._cond.notify_all()

    def start(self) -> None:
        """Start the master and wait until it says all workers are up."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._drain, args=(self._proc.stderr,), name="server-stderr", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        with self._cond:
            while not (self.port and self._ready):
                left = deadline - time.monotonic()
                if self._proc.poll() is not None or left <= 0:
                    break
                self._cond.wait(timeout=min(left, 0.2))
        if not (self.port and self._ready):
            code = self._proc.poll()
            self.stop()
            what = (
                f"exited with code {code}"
                if code is not None
                else f"did not report 'Ready' within {self.start_timeout:g} s"
            )
            raise BenchError(
                f"server under test ({' '.join(self.argv[self.argv.index('serve') :])}) {what}; "
                "its last log lines:\n" + (self.log_tail() or "(none)")
            )
        self.known_workers.update(self.worker_pids())

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pool_state(self, *, settle: float = 0.0) -> PoolState:
        """Workers and event counters, from the master's status snapshot.

        With ``settle`` > 0, waits up to that many seconds for the pool to
        settle (no worker starting, draining or stopping: see ``events``) and
        returns the last state read either way.  Raises ``BenchError`` when
        the control socket does not answer.
        """
        deadline = time.monotonic() + settle
        while True:
            try:
                snapshot = query(str(self.control), timeout=_QUERY_TIMEOUT)
            except ControlError as exc:
                raise BenchError(
                    f"cannot read the status of the server under test: {exc}"
                ) from None
            state = PoolState.from_snapshot(snapshot)
            if state.settled or time.monotonic() >= deadline:
                return state
            time.sleep(_SETTLE_POLL)

    def worker_pids(self) -> list[int]:
        pids = procfs.children_of(self.pid) if self.running() else []
        self.known_workers.update(pids)
        return pids

    def send(self, sig: signal.Signals) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def kill_worker(self, pid: int) -> bool:
        """SIGKILL ``pid`` if (and only if) it is still a child of our master."""
        info = procfs.proc_info(pid)
        if not self.running() or info is None or info.ppid != self.pid:
            return False
        self.known_workers.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        try:
            return self._stop(timeout)
        finally:
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)
                self._own_dir = None

    def _stop(self, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.worker_pids()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.worker_pids()
                proc.kill()
                proc.wait(timeout=5)
        # Whatever the master left behind (it was killed, or lost track of a
        # child) must not outlive the run: it would hold the port and eat CPU.
        for pid in self.known_workers:
            if _looks_like_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            # EOF comes once the master and every worker (which inherit the
            # pipe) are gone; bounded anyway.
            self._reader.join(timeout=5)
        if proc.stderr is not None and (self._reader is None or not self._reader.is_alive()):
            proc.stderr.close()
        return proc.returncode


def _looks_like_ours(pid: int) -> bool:
    # A worker whose master died is re-parented, so its parent no longer
    # tells; the pid was recorded while it was our master's child, and only
    # a process that still runs Python/reuseport is killed (pid reuse guard).
    command = procfs.cmdline(pid)
    return "python" in command or "reuseport" in command
