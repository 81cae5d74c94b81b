"""Helpers for tests that run real ``reuseport serve`` processes.

Rules: every wait here has a bound and fails with an ``AssertionError`` that
says what was awaited and shows the server's stderr; nothing sleeps to
synchronise (``wait_until`` polls a predicate with a small interval).  A
``Server`` never leaks a process: on exit it stops the master, then checks
that the master and every worker it ever saw are gone, SIGKILLing whatever is
left as a last resort (and failing the test, because a leak is a bug).

Process facts come from ``reuseport.procfs`` (re-exported here): a process
is alive while /proc/<pid>/stat exists with the start time we first saw (so a
recycled pid is not mistaken for ours) and its state is not zombie/dead.

    with Server("--mode", "reuseport", "-w", "2") as server:
        server.wait_ready()
        status, body = server.request("/")
        assert status == 200 and body["mode"] == "reuseport"
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

# The checkout under test; put first on the path of every process we start, so
# a stale installed copy of the package can never be what runs.  This process
# too: ``reuseport`` below must be the working tree's.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from reuseport.procfs import (  # noqa: E402 - needs REPO_ROOT on sys.path first
    ProcInfo,
    alive,
    children_of,
    descendants_of,
    proc_info,
    socket_inodes_of,
    tcp_listeners,
)

__all__ = [
    "REPO_ROOT",
    "ProcInfo",
    "Server",
    "alive",
    "assert_closed_by_peer",
    "child_env",
    "children_of",
    "descendants_of",
    "http_get",
    "listening_inodes",
    "load",
    "proc_info",
    "read_responses",
    "send_requests",
    "signal_all",
    "socket_inodes_of",
    "still_running",
    "wait_until",
]

DEFAULT_TIMEOUT = 10.0
POLL_INTERVAL = 0.01
LOADCLIENT = os.path.join(REPO_ROOT, "tests", "loadclient.py")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``python -m reuseport`` child.

    The checkout comes first on PYTHONPATH; REUSEPORT_* variables of the outer
    environment are dropped so they cannot change a test; ``extra`` is added.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REUSEPORT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_serve(
    *argv: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m reuseport serve ARGV`` to its end (a refusal, ``--check-config``).

    Output captured as text; ``env`` is added to ``child_env()``; never
    raises on a non-zero exit (the test looks at ``returncode``).
    """
    return subprocess.run(
        [sys.executable, "-m", "reuseport", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
        cwd=None if cwd is None else str(cwd),
        check=False,
    )


# --------------------------------------------------------------------- waiting
def wait_until(
    predicate: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = POLL_INTERVAL,
    message: str | Callable[[], str] = "",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``AssertionError`` naming the predicate (and ``message``, which may
    be a callable so it is built only on failure, e.g. to show a log) once
    ``timeout`` seconds pass.  ``interval`` is a polling period, not a way to
    wait for something to happen: keep it small.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {name}" + (f": {text}" if text else "")
            )
        time.sleep(interval)


# --------------------------------------------------------------------- load
@contextlib.contextmanager
def load(
    port: int, duration: float, concurrency: int, *, keep_alive: bool = False
) -> Iterator[dict[str, Any]]:
    """Run ``loadclient.py`` for ``duration`` s; on exit, fill the dict with its report.

    The load client is its own process, so the test stays free to send
    signals; every request is a new connection (``Connection: close``)
    unless ``keep_alive``: then each of the ``concurrency`` clients keeps
    one connection for as long as the server allows.
    """
    argv = [sys.executable, LOADCLIENT, "--port", str(port), "--duration", str(duration)]
    argv += ["--concurrency", str(concurrency), *(["--keep-alive"] if keep_alive else [])]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )
    report: dict[str, Any] = {"proc": proc}
    try:
        yield report
        out, err = proc.communicate(timeout=duration + 30)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    assert proc.returncode == 0, f"load client failed ({proc.returncode}): {err}"
    del report["proc"]
    report.update(json.loads(out))


def still_running(report: dict[str, Any], seconds: float) -> bool:
    """Wait up to ``seconds`` for the load client to end; True if it still runs.

    Paces a signal loop without a bare sleep: the loop stops as soon as the
    load does.
    """
    proc: subprocess.Popen[str] = report["proc"]
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


# --------------------------------------------------------------------- /proc
def listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets in LISTEN state on ``port``, IPv4 and IPv6."""
    inodes: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            rows = tcp_listeners(family)
        except FileNotFoundError:  # no /proc/net/tcp6: a kernel without IPv6
            continue
        inodes.update(row.inode for row in rows if row.port == port)
    return inodes


# --------------------------------------------------------------------- HTTP
def _parse_response(raw: bytes) -> tuple[int, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def http_get(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, Any]:
    """One ``GET`` over a fresh connection: (status, parsed JSON or raw body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    finally:
        conn.close()


def assert_closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> None:
    """Fail unless the peer closes ``sock`` (FIN or RST) within ``timeout``; no data allowed."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {timeout}s") from None
    assert data == b"", f"expected the peer to close, got {data[:100]!r}"


def send_requests(
    address: tuple[str, int], count: int, path: str = "/", timeout: float = 5.0
) -> list[socket.socket]:
    """Open ``count`` connections and send one ``GET`` on each; do not read.

    Each connect is bounded by ``timeout``; the sockets come back
    non-blocking, ready for ``read_responses``.  The caller closes them.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    request = (f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n").encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(request)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def read_responses(socks: Sequence[socket.socket], timeout: float) -> list[tuple[int, Any]]:
    """Read every socket to EOF, all at once, within ``timeout`` seconds.

    Returns (status, body) per socket, in order.  A connection reset, or one
    still open at the deadline, fails the test with a count of each.
    """
    raw: dict[int, bytearray] = {i: bytearray() for i in range(len(socks))}
    errors: dict[int, str] = {}
    open_ = set(range(len(socks)))
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ, i)
        while open_:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                i = key.data
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    data = b""
                    errors[i] = type(exc).__name__
                if data:
                    raw[i] += data
                else:
                    sel.unregister(socks[i])
                    open_.discard(i)
    if open_ or errors:
        raise AssertionError(
            f"{len(socks)} requests: {len(open_)} got no complete answer within {timeout}s, "
            f"{len(errors)} failed ({sorted(set(errors.values()))})"
        )
    return [_parse_response(bytes(raw[i])) for i in range(len(socks))]


# --------------------------------------------------------------------- Server
# "Bound http://127.0.0.1:PORT (reuseport mode)" at bind time; the same address
# again in "Listening at ..." once the first worker is ready.
_LISTENING = re.compile(
    r"(?:Bound|Listening at) https?://(\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\s]+)):(?P<port>\d+) "
)
_LISTENING_UDP = re.compile(
    r"Listening at udp://(\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\s]+)):(?P<port>\d+) "
)
# "Ready: 2 workers serving demo as protocol (reuseport mode)"; an ondemand pool
# says "Ready: 0 workers (ondemand pool: ...) (reuseport mode)".
_READY = re.compile(
    r"Ready: (?P<workers>\d+) workers(?: serving (?P<app>\S+) as (?P<interface>\w+))?"
    r".*\((?P<mode>\w+) mode\)"
)


class Server:
    """A ``reuseport serve`` master under test, as a context manager.

    ``args`` go after ``serve``; ``-b 127.0.0.1:0`` is added unless a bind is
    given.  stderr is read by a thread into ``lines`` (so the pipe never
    fills); stdout likewise into ``stdout_lines``.  ``argv`` may be changed
    before ``start()`` (e.g. to run the server through a launcher), and
    ``pass_fds`` are inherited by the master.  REUSEPORT_* variables of
    the outer environment are dropped so they cannot change the test; pass
    ``env`` to set some.
    """

    def __init__(
        self,
        *args: str,
        log_level: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        argv = list(args)
        if not any(a in {"-b", "--bind"} or a.startswith("--bind=") for a in argv):
            argv += ["-b", "127.0.0.1:0"]
        if log_level is not None:
            argv += ["--log-level", log_level]
        self.argv = [sys.executable, "-m", "reuseport", "serve", *argv]
        self.env = child_env(env)
        self.cwd = cwd
        self.pass_fds = tuple(pass_fds)  # inherited by the master (``--fd``)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []  # stderr, one entry per line, without newline
        self.stdout_lines: list[str] = []
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._eof = 0
        self._seen: dict[int, int] = {}  # pid -> start time, of every process we saw

    # -- lifecycle
    def start(self) -> Server:
        assert self.proc is None, "already started"
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=self.env,
            cwd=self.cwd,
            pass_fds=self.pass_fds,
        )
        self._remember(self.proc.pid)
        for stream, sink in ((self.proc.stderr, self.lines), (self.proc.stdout, self.stdout_lines)):
            thread = threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            thread.start()
            self._readers.append(thread)
        return self

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None, "not started"
        return self.proc.poll()

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    # -- output
    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def _tail(self, count: int = 40) -> str:
        with self._cond:
            tail = self.lines[-count:]
        return "server stderr (last lines):\n    " + "\n    ".join(tail)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first stderr line from index ``start`` on matching ``pattern`` (re.search).

        Fails at once if the server's output ends (every process exited)
        without such a line, and after ``timeout`` seconds otherwise.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    index += 1
                if self._eof >= len(self._readers) and self._readers:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        why = "output ended" if self._eof >= len(self._readers) else f"timed out after {timeout}s"
        raise AssertionError(f"no stderr line matches {regex.pattern!r} ({why})\n{self._tail()}")

    def count_lines(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def wait_ready(self, timeout: float = 20.0) -> re.Match[str]:
        """Wait for the ``Ready:`` line; its match has groups workers, app, interface, mode."""
        return self.wait_for_line(_READY, timeout)

    # -- addresses
    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every TCP bind so far (``Bound`` lines, at bind time), in order."""
        found: dict[tuple[str, int], None] = {}
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            match = _LISTENING.search(line)
            if match:
                found[(match["v6"] or match["v4"], int(match["port"]))] = None
        return list(found)

    @property
    def udp_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every ``Listening at udp://`` line so far, in order."""
        with self._cond:
            lines = list(self.lines)
        return [
            (match["v6"] or match["v4"], int(match["port"]))
            for line in lines
            if (match := _LISTENING_UDP.search(line))
        ]

    @property
    def port(self) -> int:
        addresses = self.addresses
        assert addresses, f"no 'Bound' line yet\n{self._tail()}"
        return addresses[0][1]

    @property
    def address(self) -> tuple[str, int]:
        addresses = self.addresses
        assert addresses, f"no 'Bound' line yet\n{self._tail()}"
        return addresses[0]

    # -- processes
    def _remember(self, pid: int) -> None:
        if pid not in self._seen:
            info = proc_info(pid)
            if info is not None:
                self._seen[pid] = info.start_time

    def worker_pids(self) -> list[int]:
        """The master's live child processes (its workers), sorted."""
        pids = children_of(self.pid)
        for pid in pids:
            self._remember(pid)
        return pids

    def wait_workers(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """Wait until the master has exactly ``count`` live workers; return their pids."""
        pids: list[int] = []

        def exactly() -> bool:
            nonlocal pids
            pids = self.worker_pids()
            return len(pids) == count

        wait_until(exactly, timeout, message=lambda: f"workers now {pids}\n{self._tail()}")
        return pids

    def leftovers(self) -> list[int]:
        """Processes this server started that still run."""
        return sorted(pid for pid, start in self._seen.items() if alive(pid, start))

    # -- requests
    def request(
        self, path: str = "/", timeout: float = 5.0, address: tuple[str, int] | None = None
    ) -> tuple[int, Any]:
        """``GET path`` over a fresh connection: (status, parsed JSON or raw body)."""
        host, port = address or self.address
        return http_get(host, port, path, timeout)

    # -- stopping
    def send_signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the master to exit; return its exit code (fail on timeout)."""
        assert self.proc is not None, "not started"
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"master {self.pid} still runs after {timeout}s\n{self._tail()}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to the master and wait for it to exit; return its exit code."""
        for pid in descendants_of(self.pid):
            self._remember(pid)
        self.send_signal(sig)
        return self.wait(timeout)

    def close(self) -> None:
        """Stop everything; fail if any process of ours outlives a bounded wait."""
        if self.proc is None:
            return
        problems: list[str] = []
        if self.proc.poll() is None:
            try:
                self.stop(signal.SIGTERM, timeout=15.0)
            except AssertionError as exc:
                problems.append(str(exc))
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5.0)
        try:
            wait_until(lambda: not self.leftovers(), timeout=10.0)
        except AssertionError:
            left = self.leftovers()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            problems.append(f"processes left behind (now SIGKILLed): {left}")
        for thread in self._readers:
            thread.join(5.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        # Shown by pytest only when the test fails.
        print(f"--- {' '.join(self.argv[1:])} (exit {self.proc.returncode}) stderr:")
        print(self.stderr)
        if problems:
            raise AssertionError("; ".join(problems))


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
