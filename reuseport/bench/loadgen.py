"""The built-in HTTP/1.1 load generator: needs nothing beyond reuseport's own deps.

Rules: one client *process* runs one event loop (uvloop when available) with
``connections`` virtual clients; each client keeps exactly one request in
flight (closed loop, like wrk).  Every response is parsed with httptools and
checked; every failure is counted under one ``ErrorKind`` and never raised.
Every wait is bounded: connects by ``connect_timeout``, responses by
``request_timeout`` (a sweeper aborts overdue connections), and the whole run
stops by itself after ``duration`` seconds; requests still in flight at that
moment are neither counted nor treated as errors.

Processes talk to the runner through files, not pipes: the spec arrives as
JSON on the command line, the result is written as JSON to a path, so a
runner busy sending signals (churn) can never deadlock on a full pipe.

Latency is measured from "request written" to "response complete"; when each
request has its own connection, from "connect started", since the connect is
then part of what the client waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools

from .errors import BenchError
from .stats import Histogram

__all__ = [
    "ClientProcesses",
    "ErrorKind",
    "LoadResult",
    "LoadSpec",
    "WorkerKey",
    "build_request",
    "run_load",
]

# A worker as seen from responses: (pid, slot).
WorkerKey = tuple[int, int]

# After a failed connect, wait this long before the next attempt so a dead
# port does not turn the client into a busy loop of refused connects (and the
# error count into a measure of how fast we can fail).
_CONNECT_BACKOFF = 0.01
_SWEEP_INTERVAL = 0.1


class ErrorKind(enum.Enum):
    """Why a request failed, as the client saw it."""

    CONNECT_REFUSED = "connect_refused"  # RST to our SYN: nobody listening
    CONNECT_TIMEOUT = "connect_timeout"  # no SYN-ACK within connect_timeout
    CONNECT_ERROR = "connect_error"  # any other error while connecting
    RESET = "reset"  # connection reset with a request in flight
    EOF = "eof"  # server closed cleanly with a request in flight
    TIMEOUT = "timeout"  # no complete response within request_timeout
    BAD_STATUS = "bad_status"  # a status other than 200
    BAD_BODY = "bad_body"  # the demo app's JSON (pid, slot) missing or invalid
    BAD_RESPONSE = "bad_response"  # not parseable as HTTP/1.1
    LOST = "lost"  # UDP: no answer to a datagram within request_timeout


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadSpec:
    """What one client process does."""

    host: str
    port: int
    connections: int
    duration: float
    path: str = "/"
    keepalive: bool = True
    # The demo app must answer with {"pid":..,"slot":..}; other apps need
    # only answer 200 (their bodies are still parsed if they look like JSON).
    check_body: bool = True
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    # UDP datagrams instead of HTTP requests (``udpload``): each client a socket
    # of its own, one datagram in flight; the answer must echo it.
    datagram: bool = False

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, not {self.connections}")
        if self.duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, not {self.duration}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        return cls(**json.loads(text))


def build_request(host: str, port: int, path: str, *, keepalive: bool) -> bytes:
    connection = "keep-alive" if keepalive else "close"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: reuseport-bench\r\n"
        "Accept: */*\r\n"
        f"Connection: {connection}\r\n"
        "\r\n"
    ).encode("ascii")


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadResult:
    """What one or more client processes measured."""

    requests: int  # successful (status 200, body checked) responses
    elapsed: float  # seconds the load ran (per process; max over merged ones)
    histogram: Histogram  # latency of successful requests
    workers: Mapping[WorkerKey, int]  # successful requests per (pid, slot)
    errors: Mapping[str, int]  # ErrorKind value -> count
    statuses: Mapping[int, int] = field(default_factory=dict)  # non-200 statuses seen
    modes_seen: tuple[str, ...] = ()  # "mode" values in the demo app's bodies
    connections: int = 0  # connections opened
    processes: int = 1

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "elapsed": self.elapsed,
            "histogram": self.histogram.to_dict(),
            "workers": [
                {"pid": pid, "slot": slot, "requests": n}
                for (pid, slot), n in sorted(self.workers.items(), key=lambda kv: kv[0][::-1])
            ],
            "errors": dict(self.errors),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "modes_seen": list(self.modes_seen),
            "connections": self.connections,
            "processes": self.processes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(
            requests=int(data["requests"]),
            elapsed=float(data["elapsed"]),
            histogram=Histogram.from_dict(data["histogram"]),
            workers={(int(w["pid"]), int(w["slot"])): int(w["requests"]) for w in data["workers"]},
            errors={str(k): int(v) for k, v in data["errors"].items()},
            statuses={int(k): int(v) for k, v in data.get("statuses", {}).items()},
            modes_seen=tuple(data.get("modes_seen", ())),
            connections=int(data.get("connections", 0)),
            processes=int(data.get("processes", 1)),
        )

    @classmethod
    def merge(cls, results: Sequence[LoadResult]) -> LoadResult:
        """Combine the results of client processes that ran side by side."""
        hist = Histogram()
        workers: Counter[WorkerKey] = Counter()
        errors: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        modes: set[str] = set()
        for result in results:
            hist.merge(result.histogram)
            workers.update(result.workers)
            errors.update(result.errors)
            statuses.update(result.statuses)
            modes.update(result.modes_seen)
        return cls(
            requests=sum(r.requests for r in results),
            elapsed=max((r.elapsed for r in results), default=0.0),
            histogram=hist,
            workers=dict(workers),
            errors=dict(errors),
            statuses=dict(statuses),
            modes_seen=tuple(sorted(modes)),
            connections=sum(r.connections for r in results),
            processes=sum(r.processes for r in results),
        )


class Tally:
    """What one client process counts, for the HTTP and the UDP generator alike."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.histogram = Histogram()
        self.workers: Counter[WorkerKey] = Counter()
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.modes: set[str] = set()
        self.requests = 0
        self.stopping = False

    def error(self, kind: ErrorKind) -> None:
        # Failures caused by our own shutdown at the deadline are not the server's.
        if not self.stopping:
            self.errors[kind.value] += 1

    def answered(self, body: bytes, latency_ns: int) -> None:
        """One answer: its worker (from the demo's JSON), its latency."""
        key = _worker_of(body)
        if key is None:
            if self.spec.check_body:
                self.error(ErrorKind.BAD_BODY)
                return
        else:
            pid, slot, mode = key
            self.workers[pid, slot] += 1
            if mode:
                self.modes.add(mode)
        self.requests += 1
        self.histogram.record(latency_ns)

    def result(self, elapsed: float, connections: int) -> LoadResult:
        return LoadResult(
            requests=self.requests,
            elapsed=elapsed,
            histogram=self.histogram,
            workers=dict(self.workers),
            errors=dict(self.errors),
            statuses=dict(self.statuses),
            modes_seen=tuple(sorted(self.modes)),
            connections=connections,
        )


class _Generator(Tally):
    """Shared state of one client process's virtual clients."""

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self.request = build_request(spec.host, spec.port, spec.path, keepalive=spec.keepalive)
        self.live: set[_Connection] = set()
        self.connections = 0

    def complete(self, status: int, body: bytes, latency_ns: int) -> None:
        if self.stopping:
            return
        if status != 200:
            self.statuses[status] += 1
            self.error(ErrorKind.BAD_STATUS)
            return
        self.answered(body, latency_ns)

    async def sweep(self) -> None:
        """Abort connections whose response is overdue (counted as timeouts)."""
        limit = int(self.spec.request_timeout * 1e9)
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.perf_counter_ns()
            for conn in list(self.live):
                if conn.sent_at and now - conn.sent_at > limit:
                    conn.fail(ErrorKind.TIMEOUT)


def _worker_of(body: bytes) -> tuple[int, int, str] | None:
    """(pid, slot, mode) from the demo app's JSON body, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, slot, mode = data.get("pid"), data.get("slot"), data.get("mode", "")
    if type(pid) is not int or type(slot) is not int or pid <= 0 or slot < 0:
        return None
    return pid, slot, mode if isinstance(mode, str) else ""


class _Connection(asyncio.Protocol):
    """One client connection; drives its requests from parser callbacks."""

    def __init__(self, gen: _Generator, started_ns: int, done: asyncio.Future[None]) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.body = bytearray()
        # When the request in flight was started (0: none in flight).  The
        # first one counts from the connect when connecting is part of the
        # request (connection per request).
        self.sent_at = 0
        self._first_started = started_ns
        self.done = done

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.gen.live.add(self)
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail(ErrorKind.BAD_RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.live.discard(self)
        if self.sent_at:
            self.sent_at = 0
            self.gen.error(ErrorKind.EOF if exc is None else ErrorKind.RESET)
        if not self.done.done():
            self.done.set_result(None)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if not self.sent_at:
            return  # an answer we no longer wait for (already failed)
        latency = time.perf_counter_ns() - self.sent_at
        self.sent_at = 0
        self.gen.complete(self.parser.get_status_code(), bytes(self.body), latency)
        assert self.transport is not None
        if self.gen.spec.keepalive and not self.gen.stopping and self.parser.should_keep_alive():
            self.send()
        else:
            self.transport.close()

    def send(self) -> None:
        assert self.transport is not None
        self.body.clear()
        self.sent_at = self._first_started or time.perf_counter_ns()
        self._first_started = 0
        self.transport.write(self.gen.request)

    def fail(self, kind: ErrorKind) -> None:
        if self.sent_at:
            self.sent_at = 0
            self.gen.error(kind)
        if self.transport is not None:
            self.transport.abort()


async def _client(gen: _Generator) -> None:
    loop = asyncio.get_running_loop()
    spec = gen.spec
    while not gen.stopping:
        started = time.perf_counter_ns() if not spec.keepalive else 0
        done: asyncio.Future[None] = loop.create_future()
        try:
            async with asyncio.timeout(spec.connect_timeout):
                await loop.create_connection(
                    functools.partial(_Connection, gen, started, done), spec.host, spec.port
                )
        except ConnectionRefusedError:
            gen.error(ErrorKind.CONNECT_REFUSED)
            await asyncio.sleep(_CONNECT_BACKOFF)
            continue
        except TimeoutError:
            gen.error(ErrorKind.CONNECT_TIMEOUT)
            continue
        except ConnectionResetError:
            gen.error(ErrorKind.RESET)
            await asyncio.sleep(_CONNECT_BACKOFF)
            continue
        except OSError:
            gen.error(ErrorKind.CONNECT_ERROR)
            await asyncio.sleep(_CONNECT_BACKOFF)
            continue
        gen.connections += 1
        await done


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` in the current event loop; returns after ``spec.duration``."""
    gen = _Generator(spec)
    started = time.perf_counter()
    tasks = [asyncio.create_task(_client(gen)) for _ in range(spec.connections)]
    tasks.append(asyncio.create_task(gen.sweep()))
    try:
        await asyncio.sleep(spec.duration)
    finally:
        gen.stopping = True
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        for conn in list(gen.live):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
    return gen.result(elapsed, gen.connections)


def _run_in_process(spec: LoadSpec) -> LoadResult:
    if spec.datagram:
        from .udpload import run_udp_load

        main = run_udp_load(spec)
    else:
        main = run_load(spec)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def split_connections(total: int, processes: int) -> list[int]:
    """Spread ``total`` connections over at most ``processes`` processes."""
    processes = max(1, min(processes, total))
    base, extra = divmod(total, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


class ClientProcesses:
    """P load-generator processes (``python -m reuseport.bench.loadgen``).

    Subprocesses rather than multiprocessing: they start from a clean
    interpreter (no forked runner state), can be killed as a last resort, and
    report through a file each.
    """

    def __init__(self, spec: LoadSpec, processes: int, workdir: Path) -> None:
        self.spec = spec
        self._procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
        self._workdir = workdir
        self._counts = split_connections(spec.connections, processes)

    def start(self) -> None:
        env = dict(os.environ)
        # Make sure the children import this very package, wherever it lives.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        for i, count in enumerate(self._counts):
            spec = LoadSpec(**{**asdict(self.spec), "connections": count})
            out = self._workdir / f"client-{i}.json"
            err = self._workdir / f"client-{i}.err"
            with err.open("wb") as err_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "reuseport.bench.loadgen", spec.to_json(), str(out)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                    env=env,
                )
            self._procs.append((proc, out, err))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _, _ in self._procs]

    def running(self) -> bool:
        return any(proc.poll() is None for proc, _, _ in self._procs)

    def wait(self, timeout: float) -> LoadResult:
        """Wait (at most ``timeout`` s) for every process and merge their results."""
        deadline = time.monotonic() + timeout
        results: list[LoadResult] = []
        problems: list[str] = []
        for proc, out, err in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
                problems.append(f"load generator pid {proc.pid} overran its deadline; killed")
                continue
            if proc.returncode != 0 or not out.exists():
                tail = err.read_text(errors="replace").strip().splitlines()[-5:]
                problems.append(
                    f"load generator pid {proc.pid} exited with {proc.returncode}: "
                    + (" | ".join(tail) or "no output")
                )
                continue
            results.append(LoadResult.from_dict(json.loads(out.read_text())))
        self._procs.clear()
        if problems:
            raise BenchError("; ".join(problems))
        return LoadResult.merge(results)

    def kill(self) -> None:
        """Last resort on the way out (errors, ^C): no process is left behind."""
        for proc, _, _ in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m reuseport.bench.loadgen SPEC_JSON OUTPUT_FILE", file=sys.stderr)
        return 2
    spec = LoadSpec.from_json(args[0])
    result = _run_in_process(spec)
    out = Path(args[1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(out)  # the runner never sees a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main())
