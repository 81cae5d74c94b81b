"""Drive ``wrk`` (the reference HTTP load generator) and parse what it prints.

Rules: wrk is a Debian package; we never install it, we only find it on PATH
(``apt-get install wrk``).  Every wrk command line reuseport runs (the
benchmark, ``scripts/soak.py``, ``scripts/bench_peers.py``) is built by
``wrk_command`` and its output read by ``parse_wrk``.

A small Lua script counts responses per worker from the demo app's JSON body
and prints, in ``done()``, the figures the report needs (p99.9 and max are
not in ``--latency``'s table) on lines that start with ``REUSEPORT_BENCH``.
Without those lines (no script, an old wrk, a script error) the plain
``--latency`` text is parsed instead and per-worker counts are unknown.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BenchError, MissingToolError
from .loadgen import WorkerKey
from .results import Measurement

__all__ = [
    "INSTALL_HINT",
    "SOCKET_ERRORS",
    "WRK_LUA",
    "WrkProcess",
    "WrkReport",
    "find_wrk",
    "parse_wrk",
    "parse_wrk_output",
    "wrk_command",
    "wrk_seconds",
]

INSTALL_HINT = "wrk is not installed: apt-get install wrk (or use --load-generator builtin)"

# Globals (not locals) so that done() can read them with thread:get().
WRK_LUA = r"""
-- reuseport bench: per-worker counts from {"pid":..,"slot":..} bodies.
counts = {}
bad_body = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status == 200 then
    local pid = string.match(body, '"pid":%s*(%d+)')
    local slot = string.match(body, '"slot":%s*(%d+)')
    if pid and slot then
      local key = pid .. ":" .. slot
      counts[key] = (counts[key] or 0) + 1
    else
      bad_body = bad_body + 1
    end
  end
end

function done(summary, latency, requests)
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("REUSEPORT_BENCH latency p%g %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("REUSEPORT_BENCH latency max %d\n", latency.max))
  io.write(string.format("REUSEPORT_BENCH latency mean %d\n", latency.mean))
  local e = summary.errors
  io.write(string.format("REUSEPORT_BENCH summary %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  for _, thread in ipairs(threads) do
    io.write(string.format("REUSEPORT_BENCH bad_body %d\n", thread:get("bad_body")))
    for key, n in pairs(thread:get("counts")) do
      io.write(string.format("REUSEPORT_BENCH worker %s %d\n", key, n))
    end
  end
end
"""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def wrk_seconds(duration: float) -> int:
    """wrk's ``-d`` takes whole seconds: ``duration`` rounded up, at least 1."""
    return max(1, math.ceil(duration))


def wrk_command(
    wrk: str,
    *,
    port: int,
    connections: int,
    duration: float,
    threads: int = 1,
    path: str = "/",
    keepalive: bool = True,
    script: Path | None = None,
    timeout: float | None = None,
) -> list[str]:
    """``wrk -tT -cC -dDs [--timeout=Ns] --latency [-s SCRIPT] [-H Connection: close] URL``.

    The benchmark, the soak script and the peer comparison all build their
    wrk command here, so they load the server the same way.  ``timeout``
    None keeps wrk's own (2 s); ``script`` None runs without Lua (the text
    report is parsed then).
    """
    threads = max(1, min(threads, connections))
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{wrk_seconds(duration)}s"]
    if timeout is not None:
        cmd.append(f"--timeout={max(1, math.ceil(timeout))}s")
    cmd.append("--latency")
    if script is not None:
        cmd += ["-s", str(script)]
    if not keepalive:
        # wrk reconnects after a response that closes the connection.
        cmd += ["-H", "Connection: close"]
    return [*cmd, f"http://127.0.0.1:{port}{path}"]


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
SOCKET_ERRORS = ("connect", "read", "write", "timeout")  # wrk's "Socket errors" kinds


def _to_ms(number: str, unit: str) -> float:
    return float(number) * _UNITS_MS[unit]


@dataclass(frozen=True, kw_only=True, slots=True)
class WrkReport:
    """Everything one wrk run printed, in numbers.

    ``requests`` counts every response wrk completed, whatever its status
    (wrk's own figure); ``non_2xx`` and ``bad_body`` say how many of them
    were not successes.
    """

    requests: int
    elapsed: float  # seconds
    rps: float  # wrk's "Requests/sec" (requests / elapsed without it)
    latency_ms: dict[str, float]  # p50, p90, p99 (p99.9, mean, max when known)
    socket_errors: dict[str, int]  # SOCKET_ERRORS -> count
    non_2xx: int = 0  # "Non-2xx or 3xx responses"
    bad_body: int = 0  # 200 responses whose body named no worker (Lua script only)
    workers: dict[WorkerKey, int] = field(default_factory=dict)  # (pid, slot) -> responses
    note: str = ""

    @property
    def ok(self) -> int:
        """Successful responses."""
        return max(0, self.requests - self.non_2xx - self.bad_body)

    def measurement(self) -> Measurement:
        """The benchmark's record of this run: successes, and the errors by kind."""
        # The benchmark's error kinds: "read_error", ..., but "timeout" as it is.
        errors = {
            kind if kind == "timeout" else f"{kind}_error": n
            for kind, n in self.socket_errors.items()
        }
        errors.update(bad_status=self.non_2xx, bad_body=self.bad_body)
        return Measurement(
            generator="wrk",
            requests=self.ok,
            elapsed=self.elapsed,
            latency_ms=dict(self.latency_ms),
            workers=dict(self.workers),
            errors={k: v for k, v in errors.items() if v},
            note=self.note,
        )


def parse_wrk(text: str) -> WrkReport:
    """Turn wrk's stdout (with or without our Lua lines) into a ``WrkReport``.

    Raises ``BenchError`` (with the end of the text) if it is not wrk's report.
    """
    latency: dict[str, float] = {}
    workers: Counter[WorkerKey] = Counter()
    socket_errors = dict.fromkeys(SOCKET_ERRORS, 0)
    non_2xx = bad_body = 0
    requests: int | None = None
    elapsed = 0.0
    note = ""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "REUSEPORT_BENCH":
            continue
        if parts[1] == "latency":
            latency[parts[2]] = int(parts[3]) / 1e3  # wrk reports microseconds
        elif parts[1] == "summary":
            n, duration_us, connect, read, write, status, timeout = map(int, parts[2:9])
            requests, elapsed = n, duration_us / 1e6
            socket_errors.update(connect=connect, read=read, write=write, timeout=timeout)
            non_2xx = status
        elif parts[1] == "bad_body":
            bad_body += int(parts[2])
        elif parts[1] == "worker":
            pid, _, slot = parts[2].partition(":")
            workers[int(pid), int(slot)] += int(parts[3])
    if requests is None:  # no Lua output: fall back to the human-readable text
        note = "parsed from wrk's text output; no per-worker counts"
        m = re.search(r"(\d+) requests in " + _TIME, text)
        if m is None:
            raise BenchError("cannot parse wrk's output:\n" + text[-2000:])
        requests, elapsed = int(m.group(1)), _to_ms(m.group(2), m.group(3)) / 1e3
        for q in ("50", "90", "99"):
            if mq := re.search(rf"^\s+{q}%\s+{_TIME}", text, re.MULTILINE):
                latency[f"p{q}"] = _to_ms(mq.group(1), mq.group(2))
        if ml := re.search(r"Latency\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME, text):
            latency["mean"] = _to_ms(ml.group(1), ml.group(2))
            latency["max"] = _to_ms(ml.group(5), ml.group(6))
        if me := re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
        ):
            socket_errors = dict(zip(SOCKET_ERRORS, map(int, me.groups()), strict=True))
        if ms := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            non_2xx = int(ms.group(1))
    if rps_line := re.search(r"Requests/sec:\s+([\d.]+)", text):
        rps = float(rps_line.group(1))
    else:
        rps = requests / elapsed if elapsed > 0 else 0.0
    return WrkReport(
        requests=requests,
        elapsed=elapsed,
        rps=rps,
        latency_ms=latency,
        socket_errors=socket_errors,
        non_2xx=non_2xx,
        bad_body=bad_body,
        workers=dict(workers),
        note=note,
    )


def parse_wrk_output(text: str) -> Measurement:
    """``parse_wrk(text).measurement()``: what the benchmark records of a wrk run."""
    return parse_wrk(text).measurement()


class WrkProcess:
    """One wrk run in the background (the runner may send churn signals meanwhile)."""

    def __init__(self, cmd: list[str], workdir: Path) -> None:
        self.cmd = cmd
        self._out = workdir / "wrk.out"
        self._err = workdir / "wrk.err"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._out.open("wb") as out, self._err.open("wb") as err:
            try:
                self._proc = subprocess.Popen(
                    self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err
                )
            except FileNotFoundError:
                raise MissingToolError(INSTALL_HINT) from None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> Measurement:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(
                f"wrk did not finish within {timeout:g} s: {' '.join(self.cmd)}"
            ) from None
        out = self._out.read_text(errors="replace")
        if code != 0:
            err = self._err.read_text(errors="replace").strip()
            raise BenchError(f"wrk exited with {code}: {err or out.strip()}")
        return parse_wrk_output(out)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
