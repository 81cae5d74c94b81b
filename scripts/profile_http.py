#!/usr/bin/env python3
"""Profile the HTTP hot path in-process: N keep-alive requests, no sockets.

Why: wall-clock benchmarks on a shared 2-core machine drift by more than the
few per cent a refactoring of the HTTP layer may cost.  This script drives one
``HttpProtocol`` through a fake transport, so only our code, httptools, the
app and the event loop run; under ``valgrind --tool=callgrind`` the
instruction count of that is the same from run to run however busy the
machine is.

How: one connection, one request per loop iteration (as a keep-alive client
would deliver them), each fed to ``data_received`` from a ``call_soon``
callback (no task running, as for a real read).  The next request is fed once
the previous response is complete.  The fake transport counts bytes and
responses; a wrong count fails the run.  The server's tick is not started,
so no timer fires.

Apps (``--app``): ``hello`` (raw ASGI, one fixed response), ``starlette`` (a
Starlette ``JSONResponse`` endpoint), ``echo`` (raw ASGI: reads a 1 KiB POST
body and streams it back in two parts, so the response is chunked).

    .venv/bin/python scripts/profile_http.py --app hello -n 20000
    .venv/bin/python scripts/profile_http.py --app starlette --callgrind

``--callgrind`` runs this script twice under callgrind (``--requests`` and
twice that) with ``PYTHONHASHSEED=0`` and prints the instruction count per
request: the difference of the two totals divided by the difference in
requests, so start-up and imports cancel out.  The same by hand:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        .venv/bin/python scripts/profile_http.py --app hello -n 2000

Rules: nothing here opens a socket or starts a process, except
``--callgrind``, which runs valgrind (bounded by ``--timeout``) and removes its
output files unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvloop

from reuseport.apps.base import WorkerStats
from reuseport.config import Config, Lifespan
from reuseport.http import HttpServer

Message = MutableMapping[str, Any]
App = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]

GET = b"GET %s HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: profile_http\r\nAccept: */*\r\n\r\n"
ECHO_BODY = bytes(range(256)) * 4
POST = (
    b"POST /echo HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: profile_http\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%b"
    % (len(ECHO_BODY), ECHO_BODY)
)
_SUMMARY = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    half = len(body) // 2
    await send({"type": "http.response.body", "body": body[:half], "more_body": True})
    await send({"type": "http.response.body", "body": body[half:]})


def starlette() -> App:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return JSONResponse({"hello": "world", "path": request.url.path})

    app: App = Starlette(routes=[Route("/json", endpoint)])
    return app


def build(name: str) -> tuple[App, bytes]:
    """The app and the request bytes it is profiled with."""
    if name == "hello":
        return hello, GET % b"/"
    if name == "echo":
        return echo, POST
    return starlette(), GET % b"/json"


class FakeTransport:
    """Just enough of ``asyncio.Transport`` for ``HttpProtocol``; never pauses."""

    def __init__(self) -> None:
        self.written = 0
        self.writes = 0
        self.closed = False
        self.reading = True
        self._extra = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def drive(app: App, request: bytes, count: int) -> tuple[float, FakeTransport, WorkerStats]:
    """Serve ``count`` requests on one connection; return the seconds it took."""
    loop = asyncio.get_running_loop()
    stats = WorkerStats()
    config = Config(lifespan=Lifespan.OFF, access_log=False)
    server = HttpServer(app, config, stats)
    transport = FakeTransport()
    proto = server()
    proto.connection_made(transport)  # type: ignore[arg-type]
    done = loop.create_future()
    fed = 0

    def step() -> None:
        nonlocal fed
        if transport.closed:
            done.set_exception(RuntimeError("the server closed the connection"))
            return
        if stats.requests == fed:  # the previous response is complete
            if fed == count:
                done.set_result(None)
                return
            fed += 1
            proto.data_received(request)
        loop.call_soon(step)

    started = time.perf_counter()
    loop.call_soon(step)
    await done
    elapsed = time.perf_counter() - started
    proto.connection_lost(None)
    return elapsed, transport, stats


def run(args: argparse.Namespace) -> int:
    app, request = build(args.app)
    loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        elapsed, transport, stats = runner.run(drive(app, request, args.requests))
    if stats.requests != args.requests or stats.in_flight != 0:
        print(f"error: {stats.requests} responses, {stats.in_flight} in flight", file=sys.stderr)
        return 1
    rate = args.requests / elapsed if elapsed > 0 else float("inf")
    print(
        f"{args.app} on {args.loop}: {args.requests} requests in {elapsed:.3f} s, "
        f"{rate:,.0f} req/s, {transport.written / args.requests:.0f} bytes and "
        f"{transport.writes / args.requests:.2f} writes per response"
    )
    return 0


def callgrind_total(args: argparse.Namespace, requests: int, outdir: Path) -> int:
    out = outdir / f"callgrind.{args.app}.{args.loop}.{requests}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--app",
        args.app,
        "--loop",
        args.loop,
        "--requests",
        str(requests),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    match = _SUMMARY.search(out.read_text())
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    print(f"  {requests} requests: {int(match.group(1)):,} instructions", flush=True)
    return int(match.group(1))


def callgrind(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("error: valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 2
    outdir = Path(tempfile.mkdtemp(prefix="profile_http."))
    try:
        small = callgrind_total(args, args.requests, outdir)
        large = callgrind_total(args, 2 * args.requests, outdir)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"callgrind output kept in {outdir}")
        else:
            shutil.rmtree(outdir, ignore_errors=True)
    per_request = (large - small) / args.requests
    print(f"{args.app} on {args.loop}: {per_request:,.0f} instructions per request")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("hello", "starlette", "echo"), default="hello")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("-n", "--requests", type=int, default=None, help="requests to serve")
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per request under callgrind"
    )
    parser.add_argument("--keep", action="store_true", help="keep the callgrind output files")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds each callgrind run may take"
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 2000 if args.callgrind else 20000
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    return callgrind(args) if args.callgrind else run(args)


if __name__ == "__main__":
    sys.exit(main())
