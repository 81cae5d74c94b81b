#!/usr/bin/env python3
"""Benchmark reuseport's HTTP server against its peers: ASGI hello-world, or WSGI Flask.

    .venv/bin/python scripts/bench_peers.py --rounds 3
    .venv/bin/python scripts/bench_peers.py --suite wsgi --rounds 3

Run it with the project's venv: it builds wrk's command line and reads wrk's
report with ``reuseport.bench.wrk``, and /proc with ``reuseport.procfs``.

What it does, in order:

1. Set-up: installs ``wrk`` with apt-get if it is missing, and makes a
   separate venv (default ``build/bench-venv``, git-ignored) holding
   uvicorn[standard] (httptools + uvloop), gunicorn, granian, websockets,
   flask, starlette, fastapi and this checkout (``pip install -e .[websockets]``).
   ``--skip-setup`` uses the venv as is.
2. Throughput: every server (reuseport in both modes, uvicorn,
   gunicorn+UvicornWorker, granian; 2 workers each, on 127.0.0.1) runs at
   once on its own port with ``scripts/apps/hello.py``.  For each round and
   scenario (keep-alive; ``Connection: close``), the servers are measured one
   after the other, A B C D E, with a one-second warm-up before each
   ``wrk -t1 -c64 -d10s --latency``; the order rotates by one every round so
   no server always runs first.  Medians over the rounds are reported, and
   the ratio against uvicorn is the median of the per-round ratios (a
   same-run comparison, as docs/architecture.md asks).
   ``--suite wsgi`` measures WSGI servers instead, on a Flask JSON endpoint
   (``scripts/apps/flask_json.py``): reuseport ``--interface wsgi``,
   gunicorn's ``gthread`` worker and granian's WSGI mode, each with
   ``--threads`` app threads per worker (``--wsgi-threads``, default 8); the
   ratio is against gunicorn gthread.
   The ``starlette`` and ``fastapi`` scenarios are keep-alive wrk runs
   against real-app endpoints (each server is restarted with that app):
   ``scripts/apps/starlette_json.py`` (``GET /``, a ``JSONResponse``) and
   ``scripts/apps/fastapi_body.py`` (``POST /items`` with a JSON body parsed
   into a pydantic model and returned; wrk posts it from a Lua script).
   The ``ws-echo`` scenario is a WebSocket echo instead of wrk:
   ``scripts/ws_load.py`` (run with the benchmark venv's Python) opens
   ``--ws-connections`` WebSockets to ``/ws`` and keeps one ``--ws-size``-byte
   text message in flight on each; the figure is echoed messages per second.
3. Memory: each server is started afresh, served 100k keep-alive requests,
   and the RSS (and PSS) of its worker processes is summed from /proc.

The machine is shared: during each wrk run the script measures how much CPU
processes other than the server under test and wrk used ("foreign" CPU, in
cores, from /proc/stat minus the processes' own counters).  A run with more
foreign CPU than ``--max-foreign`` is repeated (up to ``--retries`` times)
and the quietest attempt kept; the figure is printed with every run.

Every server is stopped when the script ends, even on error or Ctrl-C:
SIGTERM to its master, a bounded wait, then SIGKILL to its process group.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from reuseport import procfs
from reuseport.bench.report import machine_info, machine_line
from reuseport.bench.wrk import WrkReport, parse_wrk, wrk_command

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "scripts" / "apps"
APP = "hello:app"
WSGI_APP = "flask_json:app"
STARLETTE_APP = "starlette_json:app"
FASTAPI_APP = "fastapi_body:app"
PEER_PACKAGES = [
    "uvicorn[standard]", "gunicorn", "granian", "websockets", "flask", "starlette", "fastapi",
]  # fmt: skip
VERSIONED = [
    "reuseport", "uvicorn", "uvloop", "httptools", "gunicorn", "granian", "websockets", "flask",
    "starlette", "fastapi", "pydantic",
]  # fmt: skip
WS_LOAD = REPO / "scripts" / "ws_load.py"
HZ = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- set-up
def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    log("wrk is missing: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, env=env)
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk still not found after apt-get install")
    return wrk


def ensure_venv(venv: Path, skip: bool) -> Path:
    python = venv / "bin" / "python"
    if skip:
        if not python.exists():
            raise SystemExit(f"--skip-setup: no venv at {venv}")
        return python
    if not python.exists():
        log(f"creating the benchmark venv at {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log("installing peers and this checkout into the benchmark venv")
    install = [str(python), "-m", "pip", "install", "-q", "--upgrade", *PEER_PACKAGES]
    subprocess.run([*install, "-e", f"{REPO}[websockets]"], check=True)
    return python


def package_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        f"names = {VERSIONED!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


def describe_machine(python: Path, wrk: str) -> str:
    """The benchmark's machine line, with the benchmark venv's Python, wrk and package versions."""
    py = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split()
    versions = package_versions(python)
    uvloop = versions.get("uvloop")
    info = {**machine_info(), "python": py, "uvloop": None if uvloop == "missing" else uvloop}
    packages = ", ".join(f"{k} {v}" for k, v in versions.items())
    return (
        f"{machine_line(info)}; {' '.join(wrk_version[:2]) if wrk_version else 'wrk'}, {packages}"
    )


# ----------------------------------------------------------------------- /proc
def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of ``pids`` (clock ticks); vanished ones count 0."""
    return sum(info.cpu_ticks for pid in pids if (info := procfs.proc_info(pid)) is not None)


def system_ticks() -> tuple[int, int]:
    """(user + nice + system, steal) over all CPUs, in clock ticks."""
    with open("/proc/stat", encoding="ascii") as fh:
        parts = fh.readline().split()
    user, nice, system = int(parts[1]), int(parts[2]), int(parts[3])
    steal = int(parts[8]) if len(parts) > 8 else 0
    return user + nice + system, steal


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc; (0, 0) if it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return rss, pss


# ----------------------------------------------------------------------- servers
def free_port() -> int:
    """A port that was free a moment ago (racy, acceptable for a script)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# (venv bin, port, workers, threads, app) -> the server's command line
Argv = Callable[[Path, int, int, int, str], list[str]]


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: Argv


# How each app's answer to GET / ends (the readiness probe).
EXPECT = {
    APP: b"Hello, world!",
    WSGI_APP: b'"message":"Hello, world!"}\n',
    STARLETTE_APP: b'"path":"/"}',
    FASTAPI_APP: b"Hello, world!",
}


def _reuseport(mode: str, *extra: str) -> Argv:
    def argv(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
        return [
            str(bin_ / "python"), "-m", "reuseport", "serve", app,
            "--app-dir", str(APP_DIR), "-b", f"127.0.0.1:{port}",
            "-w", str(workers), "--mode", mode, "--log-level", "warning", *extra,
        ]  # fmt: skip

    return argv


def _reuseport_wsgi(mode: str) -> Argv:
    def argv(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
        return [
            str(bin_ / "python"), "-m", "reuseport", "serve", app,
            "--app-dir", str(APP_DIR), "-b", f"127.0.0.1:{port}", "--interface", "wsgi",
            "-w", str(workers), "--threads", str(threads), "--mode", mode,
            "--log-level", "warning",
        ]  # fmt: skip

    return argv


def _gunicorn_gthread(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
    return [
        str(bin_ / "gunicorn"), app, "--chdir", str(APP_DIR),
        "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread",
        "--threads", str(threads), "--log-level", "warning", "--no-control-socket",
    ]  # fmt: skip


def _granian_wsgi(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
    return [
        str(bin_ / "granian"), "--interface", "wsgi", "--workers", str(workers),
        "--blocking-threads", str(threads),
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(APP_DIR),
        "--no-access-log", "--log-level", "warning", app,
    ]  # fmt: skip


def _uvicorn(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
    return [
        str(bin_ / "uvicorn"), app, "--app-dir", str(APP_DIR),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _gunicorn(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
    return [
        str(bin_ / "gunicorn"), app, "--chdir", str(APP_DIR),
        "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "uvicorn.workers.UvicornWorker",
        "--log-level", "warning", "--no-control-socket",
    ]  # fmt: skip


def _granian(bin_: Path, port: int, workers: int, threads: int, app: str) -> list[str]:
    return [
        str(bin_ / "granian"), "--interface", "asgi", "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(APP_DIR),
        "--no-access-log", "--log-level", "warning", app,
    ]  # fmt: skip


SPECS = {
    spec.name: spec
    for spec in (
        ServerSpec("reuseport", _reuseport("reuseport")),
        ServerSpec("reuseport-shared", _reuseport("shared")),
        ServerSpec("reuseport-pinned", _reuseport("reuseport", "--cpu-affinity")),
        ServerSpec("uvicorn", _uvicorn),
        ServerSpec("gunicorn", _gunicorn),
        ServerSpec("granian", _granian),
        ServerSpec("reuseport-wsgi", _reuseport_wsgi("reuseport")),
        ServerSpec("reuseport-wsgi-shared", _reuseport_wsgi("shared")),
        ServerSpec("gunicorn-gthread", _gunicorn_gthread),
        ServerSpec("granian-wsgi", _granian_wsgi),
    )
}


@dataclasses.dataclass(frozen=True)
class Suite:
    """What ``--suite`` measures: its servers, the ratio's baseline, its scenarios.

    ``app`` serves the scenarios that name none, and the memory measurement.
    """

    servers: tuple[str, ...]
    baseline: str
    scenarios: tuple[str, ...]
    app: str


SUITES = {
    "asgi": Suite(
        servers=("reuseport", "reuseport-shared", "uvicorn", "gunicorn", "granian"),
        baseline="uvicorn",
        scenarios=("keep-alive", "close", "ws-echo", "starlette", "fastapi"),
        app=APP,
    ),
    "wsgi": Suite(
        servers=("reuseport-wsgi", "reuseport-wsgi-shared", "gunicorn-gthread", "granian-wsgi"),
        baseline="gunicorn-gthread",
        scenarios=("keep-alive", "close"),
        app=WSGI_APP,
    ),
}


def _http_ok(port: int, expect: bytes, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200") and data.endswith(expect)


class Server:
    """One server under test: its master process, in a process group of its own."""

    def __init__(
        self, spec: ServerSpec, bin_: Path, workers: int, threads: int, log_dir: Path, app: str
    ) -> None:
        self.spec = spec
        self.app = app
        self.port = free_port()
        self.workers = workers
        self.argv = spec.argv(bin_, self.port, workers, threads, app)
        self.log_path = log_dir / f"{spec.name}.{app.partition(':')[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REUSEPORT_")}
        env["PYTHONPATH"] = str(APP_DIR)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(APP_DIR),
                start_new_session=True,  # its own process group: killpg reaches every worker
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _http_ok(self.port, EXPECT[self.app]):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT}s")
            time.sleep(0.05)
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: fewer than {self.workers} workers")
            time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The processes below the master that serve (not multiprocessing's helpers)."""
        return [
            p
            for p in procfs.descendants_of(self.pid)
            if "resource_tracker" not in procfs.cmdline(p)
        ]

    def all_pids(self) -> list[int]:
        return [self.pid, *procfs.descendants_of(self.pid)]

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        pgid = proc.pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: still running {STOP_TIMEOUT}s after SIGTERM; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(5.0)
        # Workers must go with their master; whatever is left gets SIGKILL.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        log(f"{self.name}: processes left in group {pgid}; SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    try:
        for server in servers:
            log(f"starting {server.name} on port {server.port}: {' '.join(server.argv)}")
            server.start()
        yield
    finally:
        for server in servers:
            server.stop()


# ----------------------------------------------------------------------- wrk
@dataclasses.dataclass
class Run:
    server: str
    scenario: str
    round: int
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non2xx: int
    foreign_cores: float
    steal_cores: float
    attempts: int


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One load: wrk (keep-alive or a connection per request), or the WebSocket echo."""

    title: str
    keepalive: bool | None  # False: a new connection per request; None: ws_load.py, not wrk
    app: str | None = None  # None: the suite's app
    path: str = "/"
    post_json: bool = False  # POST fastapi_body.BODY as JSON (a wrk Lua script)


WS_ECHO = "ws-echo"
SCENARIOS = {
    "keep-alive": Scenario("keep-alive", True),
    "close": Scenario("`Connection: close`", False),
    WS_ECHO: Scenario("WebSocket echo (messages/s)", None),
    "starlette": Scenario("Starlette JSON endpoint, keep-alive", True, STARLETTE_APP),
    "fastapi": Scenario(
        "FastAPI pydantic body (POST /items), keep-alive",
        True,
        FASTAPI_APP,
        "/items",
        post_json=True,
    ),
}


def post_json_script(log_dir: Path) -> Path:
    """A wrk Lua script that POSTs the FastAPI app's own request body."""
    source = (APP_DIR / "fastapi_body.py").read_text()
    body: bytes | None = None
    for node in ast.parse(source).body:  # the BODY constant, without importing FastAPI
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "BODY" for t in node.targets
        ):
            body = ast.literal_eval(node.value)
    if not isinstance(body, bytes):
        raise SystemExit(f"no BODY bytes constant in {APP_DIR / 'fastapi_body.py'}")
    script = log_dir / "post_json.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    return script


@dataclasses.dataclass(frozen=True)
class Load:
    """What one load run measured, from wrk or from ws_load.py."""

    rps: float  # requests (or echoed messages) per second
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non2xx: int

    @classmethod
    def from_wrk(cls, report: WrkReport) -> Load:
        return cls(
            rps=report.rps,
            requests=report.requests,
            p50_ms=report.latency_ms.get("p50", float("nan")),
            p99_ms=report.latency_ms.get("p99", float("nan")),
            socket_errors=sum(report.socket_errors.values()),
            non2xx=report.non_2xx,
        )

    @classmethod
    def from_ws_load(cls, text: str) -> Load:
        doc = json.loads(text)
        return cls(
            rps=float(doc["rate"]),
            requests=int(doc["messages"]),
            p50_ms=float(doc["p50_ms"]),
            p99_ms=float(doc["p99_ms"]),
            socket_errors=int(doc["errors"]),
            non2xx=0,
        )


def load_once(
    wrk: str, server: Server, scenario: str, args: argparse.Namespace, duration: float
) -> tuple[Load, float, float]:
    """One load run; returns what it measured and the foreign and steal CPU (cores) meanwhile."""
    spec = SCENARIOS[scenario]
    keepalive = spec.keepalive
    if keepalive is None:
        argv = [
            str(args.bench_python), str(WS_LOAD), "--port", str(server.port),
            "--connections", str(args.ws_connections), "--size", str(args.ws_size),
            "--duration", str(duration), "--warmup", "0",
        ]  # fmt: skip
    else:
        argv = wrk_command(
            wrk,
            port=server.port,
            connections=args.connections,
            duration=duration,
            threads=args.threads,
            keepalive=keepalive,
            path=spec.path,
            script=args.post_json_script if spec.post_json else None,
        )
    pids = server.all_pids()
    ours0 = cpu_ticks(pids) + _children_ticks()
    busy0, steal0 = system_ticks()
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    elapsed = time.monotonic() - t0
    busy1, steal1 = system_ticks()
    ours1 = cpu_ticks(pids) + _children_ticks()
    foreign = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / HZ / elapsed)
    steal = (steal1 - steal0) / HZ / elapsed
    if keepalive is None:
        return Load.from_ws_load(out.stdout), foreign, steal
    return Load.from_wrk(parse_wrk(out.stdout)), foreign, steal


def _children_ticks() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * HZ)


def measure(wrk: str, server: Server, scenario: str, round_: int, args: argparse.Namespace) -> Run:
    best: Run | None = None
    for attempt in range(1, args.retries + 2):
        load_once(wrk, server, scenario, args, args.warmup)  # warm-up, discarded
        load, foreign, steal = load_once(wrk, server, scenario, args, args.duration)
        run = Run(
            server=server.name,
            scenario=scenario,
            round=round_,
            rps=load.rps,
            requests=load.requests,
            p50_ms=load.p50_ms,
            p99_ms=load.p99_ms,
            socket_errors=load.socket_errors,
            non2xx=load.non2xx,
            foreign_cores=foreign,
            steal_cores=steal,
            attempts=attempt,
        )
        log(
            f"  round {round_} {scenario:10} {server.name:17} {run.rps:>9.0f} /s  "
            f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
            f"errors {run.socket_errors}  non-2xx {run.non2xx}  "
            f"foreign CPU {foreign:.2f} steal {steal:.2f}"
        )
        if best is None or run.foreign_cores < best.foreign_cores:
            best = run
        if foreign <= args.max_foreign:
            break
        if attempt <= args.retries:
            log(f"    disturbed (foreign CPU {foreign:.2f} > {args.max_foreign}); again")
    assert best is not None
    best.attempts = attempt
    return best


# ----------------------------------------------------------------------- memory
@dataclasses.dataclass
class Memory:
    server: str
    requests: int
    workers: int
    worker_rss_kib: int
    worker_pss_kib: int
    master_rss_kib: int


def measure_memory(
    wrk: str, spec: ServerSpec, bin_: Path, args: argparse.Namespace, log_dir: Path
) -> Memory:
    server = Server(spec, bin_, args.workers, args.wsgi_threads, log_dir, args.app)
    with running([server]):
        served = 0
        for _ in range(100):  # bound: 100 runs of 3 s
            if served >= args.rss_requests:
                break
            load, _, _ = load_once(wrk, server, "keep-alive", args, 3.0)
            served += load.requests
        time.sleep(0.5)  # let the last responses and any post-request work settle
        workers = server.worker_pids()
        sizes = [memory_kib(pid) for pid in workers]
        master_rss = memory_kib(server.pid)[0]
    memory = Memory(
        server=spec.name,
        requests=served,
        workers=len(workers),
        worker_rss_kib=sum(s[0] for s in sizes),
        worker_pss_kib=sum(s[1] for s in sizes),
        master_rss_kib=master_rss,
    )
    log(
        f"  memory {spec.name:17} after {served} requests: {len(workers)} workers, "
        f"RSS {memory.worker_rss_kib / 1024:.1f} MiB, PSS {memory.worker_pss_kib / 1024:.1f} MiB, "
        f"master RSS {master_rss / 1024:.1f} MiB"
    )
    return memory


# ----------------------------------------------------------------------- report
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    runs: list[Run], memories: list[Memory], names: Sequence[str], rounds: int, baseline: str
) -> str:
    lines: list[str] = []
    for scenario, spec in SCENARIOS.items():
        if not any(r.scenario == scenario for r in runs):
            continue
        unit = "msg/s" if spec.keepalive is None else "req/s"
        lines += [
            f"**{spec.title}** (median of {rounds} rounds; ratio = median of per-round ratios)",
            "",
            f"| server | {unit} | vs {baseline} | p50 ms | p99 ms | socket errors | non-2xx |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        mine = [r for r in runs if r.scenario == scenario]
        base = {r.round: r.rps for r in mine if r.server == baseline}
        for name in names:
            rs = [r for r in mine if r.server == name]
            if not rs:
                continue
            ratios = [r.rps / base[r.round] for r in rs if base.get(r.round)]
            ratio = f"{_median(ratios):.2f}x" if ratios else "-"
            lines.append(
                f"| {name} | {_median([r.rps for r in rs]):,.0f} | {ratio} "
                f"| {_median([r.p50_ms for r in rs]):.2f} | {_median([r.p99_ms for r in rs]):.2f} "
                f"| {sum(r.socket_errors for r in rs)} | {sum(r.non2xx for r in rs)} |"
            )
        lines.append("")
    if memories:
        lines += [
            "**Worker memory** (fresh server, after the requests shown; sum over workers)",
            "",
            "| server | requests | workers | worker RSS MiB | worker PSS MiB | master RSS MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for m in memories:
            lines.append(
                f"| {m.server} | {m.requests:,} | {m.workers} | {m.worker_rss_kib / 1024:.1f} "
                f"| {m.worker_pss_kib / 1024:.1f} | {m.master_rss_kib / 1024:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--suite",
        choices=list(SUITES),
        default="asgi",
        help="asgi: hello-world ASGI against uvicorn, gunicorn+UvicornWorker, granian; "
        "wsgi: a Flask JSON endpoint against gunicorn gthread and granian's WSGI mode",
    )
    parser.add_argument(
        "--wsgi-threads",
        type=int,
        default=8,
        help="app threads per worker of every WSGI server (default 8, reuseport's default)",
    )
    parser.add_argument(
        "--servers", help=f"comma-separated subset of {','.join(SPECS)} (default: the suite's)"
    )
    parser.add_argument(
        "--scenarios", help=f"comma-separated: {','.join(SCENARIOS)} (default: the suite's)"
    )
    parser.add_argument(
        "--ws-connections", type=int, default=64, help="ws-echo: WebSocket connections"
    )
    parser.add_argument("--ws-size", type=int, default=32, help="ws-echo: message bytes")
    parser.add_argument("--rss-requests", type=int, default=100_000)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--max-foreign", type=float, default=0.25, help="cores; retry above")
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run")
    parser.add_argument("--venv", type=Path, default=REPO / "build" / "bench-venv")
    parser.add_argument("--skip-setup", action="store_true", help="use the venv as it is")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--log-dir", type=Path, default=REPO / "build" / "bench-peers-logs")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    args.baseline = suite.baseline
    args.app = suite.app
    args.servers = args.servers or ",".join(suite.servers)
    args.scenarios = args.scenarios or ",".join(suite.scenarios)
    args.server_names = [s for s in args.servers.split(",") if s]
    for name in args.server_names:
        if name not in SPECS:
            parser.error(f"unknown server {name!r}; known: {', '.join(SPECS)}")
    args.scenario_names = [s for s in args.scenarios.split(",") if s]
    for name in args.scenario_names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that stop the servers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    wrk = ensure_wrk()
    python = ensure_venv(args.venv, args.skip_setup)
    args.bench_python = python
    bin_ = python.parent
    args.log_dir.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(python, wrk)
    command = "python scripts/bench_peers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log(machine)

    args.post_json_script = post_json_script(args.log_dir)

    names = args.server_names
    runs: list[Run] = []
    # The servers run one app at a time: the scenarios are grouped by app.
    by_app: dict[str, list[str]] = {}
    for scenario in args.scenario_names:
        by_app.setdefault(SCENARIOS[scenario].app or args.app, []).append(scenario)
    for app, scenarios in by_app.items():
        servers = [
            Server(SPECS[name], bin_, args.workers, args.wsgi_threads, args.log_dir, app)
            for name in names
        ]
        with running(servers):
            for round_ in range(1, args.rounds + 1):
                shift = (round_ - 1) % len(servers)
                order = servers[shift:] + servers[:shift]
                for scenario in scenarios:
                    for server in order:
                        runs.append(measure(wrk, server, scenario, round_, args))
    memories: list[Memory] = []
    if not args.no_memory:
        for name in names:
            memories.append(measure_memory(wrk, SPECS[name], bin_, args, args.log_dir))

    text = report(runs, memories, names, args.rounds, args.baseline)
    print(f"Command: `{command.strip()}`\n")
    print(f"{machine}\n")
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine,
                    "runs": [dataclasses.asdict(r) for r in runs],
                    "memory": [dataclasses.asdict(m) for m in memories],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
