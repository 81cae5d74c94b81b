#!/usr/bin/env python3
"""Profile the HTTP hot path in-process: N requests through a fake transport, no sockets.

Why: wall-clock benchmarks on a shared 2-core machine drift by more than the
few per cent a refactoring of the HTTP layer may cost.  This script drives one
``HttpProtocol`` through a fake transport, so only our code, httptools, the
app and the event loop run; under ``valgrind --tool=callgrind`` the
instruction count of that is the same from run to run however busy the
machine is.

How: one connection (keep-alive), one request per loop iteration (as a client
would deliver them), each fed to ``data_received`` from a ``call_soon``
callback (no task running, as for a real read).  The next request is fed once
the previous response is complete.  The fake transport counts bytes and
responses; a wrong count fails the run.  The server's tick is not started,
so no timer fires.

Apps (``--app``): ``hello`` (raw ASGI, one fixed response), ``starlette``
(``scripts/apps/starlette_json.py``: a Starlette ``JSONResponse`` endpoint),
``fastapi`` (``scripts/apps/fastapi_body.py``: ``POST /items`` with a JSON body
parsed into a pydantic model and answered with it), ``echo`` (raw ASGI: reads
a 1 KiB POST body and streams it back in two parts, so the response is
chunked).  The starlette and fastapi apps are the peer benchmark's own
(``scripts/bench_peers.py``), so profile and benchmark run the same code.

``--close`` makes a connection per request (``Connection: close``): each is
made, fed one request, answered, closed by the server and lost, so the
per-connection work counts too.  ``--server uvicorn`` drives uvicorn's
httptools protocol (as ``uvicorn --no-access-log`` builds it) through the same
fake transport instead of ours, for a same-profile comparison; run it with a
Python that has uvicorn (the benchmark venv, ``build/bench-venv/bin/python``).

    .venv/bin/python scripts/profile_http.py --app hello -n 20000
    .venv/bin/python scripts/profile_http.py --app starlette --callgrind
    build/bench-venv/bin/python scripts/profile_http.py --server uvicorn --app fastapi --callgrind

``--server minimal`` serves through ``MinimalProtocol`` below: the least any
ASGI server on uvloop and httptools does per keep-alive request (parse, scope,
run the app, one write), with none of a real server's checks, limits or
timers.  It is the floor of this stack, a yardstick for how much of a
server's cost per request is its own; it refuses ``--close`` and the echo app.

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
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httptools
import uvloop
from _callgrind import instructions
from _transport import FakeTransport

from reuseport.apps.base import WorkerStats
from reuseport.config import Config, Lifespan
from reuseport.http import HttpServer
from reuseport.http._eager import start_eager

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
POST_JSON = (
    b"POST /items HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: profile_http\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
)
APP_DIR = Path(__file__).resolve().parent / "apps"


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


def _scripts_app(module: str) -> App:
    """An app of ``scripts/apps`` (the peer benchmark's), so both run the same code."""
    sys.path.insert(0, str(APP_DIR))
    app: App = importlib.import_module(module).app
    return app


def build(name: str) -> tuple[App, bytes]:
    """The app and the request bytes it is profiled with."""
    if name == "hello":
        return hello, GET % b"/"
    if name == "echo":
        return echo, POST
    if name == "fastapi":
        app = _scripts_app("fastapi_body")
        body: bytes = sys.modules["fastapi_body"].BODY
        return app, POST_JSON % (len(body), body)
    return _scripts_app("starlette_json"), GET % b"/"


class Served:
    """How many responses the server under test completed, whichever it is."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count


Factory = Callable[[], asyncio.Protocol]


def reuseport_protocol(app: App) -> tuple[Factory, Served, Callable[[], int]]:
    """Our protocol factory, as a worker builds it (access log off); its counters."""
    stats = WorkerStats()
    config = Config(lifespan=Lifespan.OFF, access_log=False)
    server = HttpServer(app, config, stats)
    return server, Served(lambda: stats.requests), lambda: stats.in_flight


def uvicorn_protocol(app: App) -> tuple[Factory, Served, Callable[[], int]]:
    """uvicorn's httptools protocol, as ``uvicorn --no-access-log`` builds it.

    Needs uvicorn (the benchmark venv has it: ``build/bench-venv/bin/python``).
    Its default headers (server, date) are set once, as its main loop would.
    """
    from email.utils import formatdate

    # (imported by name: uvicorn is not in the project's venv, mypy cannot see it)
    uvicorn_config: Any = importlib.import_module("uvicorn.config")
    httptools_impl: Any = importlib.import_module("uvicorn.protocols.http.httptools_impl")
    uvicorn_server: Any = importlib.import_module("uvicorn.server")
    UvicornConfig, ServerState = uvicorn_config.Config, uvicorn_server.ServerState

    config = UvicornConfig(app, lifespan="off", access_log=False, http="httptools")
    config.load()
    state = ServerState()
    date = formatdate(time.time(), usegmt=True).encode()
    state.default_headers = [(b"date", date), *config.encoded_headers]
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        proto: asyncio.Protocol = httptools_impl.HttpToolsProtocol(config, state, {}, loop)
        return proto

    return factory, Served(lambda: state.total_requests), lambda: len(state.tasks)


class MinimalProtocol(asyncio.Protocol):
    """The least an ASGI server on uvloop and httptools does per keep-alive request.

    Not a server, a yardstick (``--server minimal``): httptools callbacks, a
    scope, the app's first step run inline with our ``_eager.start_eager``,
    one write per response.  No limits, timeouts, Date header, validation of
    what the app sends, error answers, pipelining or flow control: what a
    real server adds on top of this is its own cost per request.
    """

    def __init__(self, app: App, served: list[int]) -> None:
        self.app = app
        self.served = served
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.scope: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": self.parser.get_http_version(),
            "method": self.parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": url.path.decode("ascii"),
            "raw_path": url.path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self.headers,
            "client": self.transport.get_extra_info("peername"),
            "server": self.transport.get_extra_info("sockname"),
            "state": {},
        }

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        request = {"type": "http.request", "body": self.body, "more_body": False}
        transport, served, out = self.transport, self.served, []

        async def receive() -> Message:
            return request

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                out.append(b"HTTP/1.1 %d %s\r\n" % (message["status"], _REASONS[message["status"]]))
                out.extend(b"%s: %s\r\n" % header for header in message["headers"])
                out.append(b"\r\n")
            else:
                out.append(message.get("body", b""))
                if not message.get("more_body", False):
                    transport.write(b"".join(out))
                    served[0] += 1

        self.task = start_eager(self.loop, self.app(self.scope, receive, send), _ignore)


_REASONS = {200: b"OK", 422: b"Unprocessable Entity"}


def _ignore(exc: BaseException | None) -> None:
    if exc is not None:
        raise RuntimeError("the app failed under the minimal protocol") from exc


def minimal_protocol(app: App) -> tuple[Factory, Served, Callable[[], int]]:
    """The yardstick above: what this stack costs with no server around it."""
    served = [0]
    return (lambda: MinimalProtocol(app, served)), Served(lambda: served[0]), lambda: 0


async def drive(
    app: App, request: bytes, count: int, server_name: str = "reuseport", close: bool = False
) -> tuple[float, FakeTransport, int]:
    """Serve ``count`` requests; the seconds taken, the bytes written, and the
    requests still in flight at the end (0 unless something is wrong).

    Keep-alive: all on one connection.  ``close``: one connection per request,
    made, fed, answered (the server closes it after its response, as the
    request asks) and lost, so the per-connection work is counted too.
    """
    loop = asyncio.get_running_loop()
    make = {
        "uvicorn": uvicorn_protocol,
        "minimal": minimal_protocol,
    }.get(server_name, reuseport_protocol)
    factory, served, in_flight = make(app)
    if close:
        request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    totals = FakeTransport()
    transport = FakeTransport(totals)
    proto = factory()
    proto.connection_made(transport)  # type: ignore[arg-type]
    done = loop.create_future()
    fed = 0

    def step() -> None:
        nonlocal fed, proto, transport
        if served.count() == fed:  # the previous response is complete
            if close and fed:
                if not transport.closed:
                    done.set_exception(RuntimeError("the server kept the connection open"))
                    return
                proto.connection_lost(None)
                transport = FakeTransport(totals)
                proto = factory()
                proto.connection_made(transport)  # type: ignore[arg-type]
            if fed == count:
                done.set_result(None)
                return
            fed += 1
            proto.data_received(request)
        elif transport.closed:
            done.set_exception(RuntimeError("the server closed the connection early"))
            return
        loop.call_soon(step)

    started = time.perf_counter()
    loop.call_soon(step)
    await done
    elapsed = time.perf_counter() - started
    if served.count() != count:
        raise RuntimeError(f"{served.count()} responses for {count} requests")
    # Let a server whose app Tasks end one callback after the response finish.
    for _ in range(3):
        await asyncio.sleep(0)
    left = in_flight()
    proto.connection_lost(None)
    return elapsed, totals, left


def run(args: argparse.Namespace) -> int:
    app, request = build(args.app)
    loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        elapsed, transport, left = runner.run(
            drive(app, request, args.requests, args.server, args.close)
        )
    if left:
        print(f"error: {left} requests still in flight", file=sys.stderr)
        return 1
    rate = args.requests / elapsed if elapsed > 0 else float("inf")
    print(
        f"{args.server} {args.app}{' close' if args.close else ''} on {args.loop}: "
        f"{args.requests} requests in {elapsed:.3f} s, "
        f"{rate:,.0f} req/s, {transport.written / args.requests:.0f} bytes and "
        f"{transport.writes / args.requests:.2f} writes per response"
    )
    return 0


def callgrind_total(args: argparse.Namespace, requests: int, outdir: Path) -> int:
    out = outdir / f"callgrind.{args.server}.{args.app}.{args.loop}.{requests}"
    argv = ["--app", args.app, "--server", args.server, *(["--close"] if args.close else [])]
    argv += ["--loop", args.loop, "--requests", str(requests)]
    total = instructions(__file__, argv, out, args.timeout)
    print(f"  {requests} requests: {total:,} instructions", flush=True)
    return total


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
    mode = " close" if args.close else ""
    print(
        f"{args.server} {args.app}{mode} on {args.loop}: "
        f"{per_request:,.0f} instructions per request"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("hello", "starlette", "fastapi", "echo"), default="hello")
    parser.add_argument(
        "--server",
        choices=("reuseport", "uvicorn", "minimal"),
        default="reuseport",
        help="whose protocol serves (uvicorn: run with build/bench-venv/bin/python; "
        "minimal: the least a server on this stack does, a yardstick)",
    )
    parser.add_argument(
        "--close",
        action="store_true",
        help="a connection per request (Connection: close): connection set-up counts too",
    )
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
    if args.server == "minimal" and (args.close or args.app == "echo"):
        parser.error(
            "--server minimal keeps connections open and frames no body itself: "
            "use it with keep-alive and the hello, starlette or fastapi app"
        )
    return callgrind(args) if args.callgrind else run(args)


if __name__ == "__main__":
    sys.exit(main())
