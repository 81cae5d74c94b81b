#!/usr/bin/env python3
"""Compare the sans-IO WebSocket libraries on an in-process echo, no sockets.

Why: reuseport's WebSocket support (``reuseport/http/websocket.py``) leaves
framing and the handshake to a maintained sans-IO library, and picks the
library by what it costs per message on the server side.  This script feeds
pre-masked client frames into each library's server-side connection object,
reads the messages back out as the ASGI layer would (text decoded to ``str``,
fragments joined), and frames the same message back, as an echo does.

Libraries (``--lib``): ``websockets`` (``websockets.protocol`` sans-IO, with
its C masking speed-up) and ``wsproto`` (not a dependency of reuseport:
``.venv/bin/pip install wsproto`` to compare).  Messages (``--size``): ``small``
(a 32-character text message) or ``64k`` (a 64 KiB binary message).
``--lib none`` only builds the client frames: the baseline ``--callgrind``
subtracts.

``--lib reuseport`` measures our ASGI glue on top of websockets: one
``HttpServer`` connection (a fake transport, no sockets, uvloop) gets the
upgrade request, the echo app of ``scripts/apps/hello.py`` (the one the peer
benchmark's ws-echo runs) accepts, and each client frame is fed to
``data_received`` from a loop callback once the previous echo was written, as
a client keeping one message in flight would.  Its count minus ``--lib
websockets``' is what the glue, the app and the event loop cost per message.

    .venv/bin/python scripts/profile_ws.py --lib websockets --size small -n 20000
    .venv/bin/python scripts/profile_ws.py --lib wsproto --size 64k --callgrind
    .venv/bin/python scripts/profile_ws.py --lib reuseport --size small --callgrind

``--callgrind`` runs this script twice under callgrind (``--messages`` and
twice that) with ``PYTHONHASHSEED=0`` and prints the instruction count per
message: the difference of the two totals divided by the difference in
messages, so start-up and imports cancel out.  Without it the script prints a
wall-clock rate, which drifts on a busy machine.

Rules: nothing here opens a socket or starts a process, except
``--callgrind``, which runs valgrind (bounded by ``--timeout``) and removes
its output files.
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
from collections.abc import Callable
from pathlib import Path

import uvloop
from _callgrind import instructions
from _transport import FakeTransport

SIZES = {"small": 32, "64k": 64 * 1024}

Echo = Callable[[bytes], bytes]


def client_frames(size: str, count: int) -> list[bytes]:
    """``count`` masked client frames (one message each), framed by websockets' client."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State

    client = ClientProtocol("ws://localhost/", state=State.OPEN)  # type: ignore[arg-type]
    frames = []
    for i in range(count):
        if size == "small":
            client.send_text(f"{i:08d}".encode() + b"x" * (SIZES["small"] - 8))
        else:
            client.send_binary(i.to_bytes(8, "big") + b"y" * (SIZES["64k"] - 8))
        frames.append(b"".join(client.data_to_send()))
    return frames


def websockets_echo() -> Echo:
    from websockets.frames import Opcode
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    server = ServerProtocol(state=State.OPEN, max_size=None)
    text, binary = Opcode.TEXT, Opcode.BINARY

    def echo(data: bytes) -> bytes:
        server.receive_data(data)
        for frame in server.events_received():
            if frame.opcode is text:
                server.send_text(frame.data.decode().encode())
            elif frame.opcode is binary:
                server.send_binary(frame.data)
        return b"".join(server.data_to_send())

    return echo


def wsproto_echo() -> Echo:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, Message, TextMessage

    server = Connection(ConnectionType.SERVER)
    parts: list[bytes | str] = []

    def echo(data: bytes) -> bytes:
        server.receive_data(data)
        out = []
        for event in server.events():
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    whole = parts[0] if len(parts) == 1 else type(parts[0])().join(parts)  # type: ignore[attr-defined]
                    parts.clear()
                    out.append(server.send(Message(data=whole)))
        return b"".join(out)

    return echo


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost:8000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
APP_DIR = Path(__file__).resolve().parent / "apps"


async def reuseport_drive(frames: list[bytes]) -> tuple[float, int, int]:
    """Echo ``frames`` through our WebSocket connection: seconds, bytes and writes."""
    from reuseport.apps.base import WorkerStats
    from reuseport.config import Config, Lifespan
    from reuseport.http import HttpServer

    sys.path.insert(0, str(APP_DIR))
    app = importlib.import_module("hello").app
    config = Config(lifespan=Lifespan.OFF, access_log=False)
    server = HttpServer(app, config, WorkerStats())
    loop = asyncio.get_running_loop()
    transport = FakeTransport()
    http = server()
    http.connection_made(transport)  # type: ignore[arg-type]
    http.data_received(UPGRADE)
    for _ in range(10):  # the app task starts, takes websocket.connect and accepts
        await asyncio.sleep(0)
    ws = transport.protocol
    if ws is None or transport.writes != 1:
        raise RuntimeError("the WebSocket handshake was not answered")
    base_written, base_writes = transport.written, transport.writes
    done: asyncio.Future[None] = loop.create_future()
    fed = 0
    expected = base_written

    def step() -> None:
        nonlocal fed, expected
        if transport.written >= expected:  # the previous echo is out
            if fed == len(frames):
                done.set_result(None)
                return
            frame = frames[fed]
            fed += 1
            expected += len(frame) - 4  # the echo is the same frame, unmasked
            ws.data_received(frame)
        elif transport.closed:
            done.set_exception(RuntimeError("the server closed the WebSocket"))
            return
        loop.call_soon(step)

    started = time.perf_counter()
    loop.call_soon(step)
    await done
    elapsed = time.perf_counter() - started
    ws.connection_lost(None)
    for _ in range(10):
        await asyncio.sleep(0)
    return elapsed, transport.written - base_written, transport.writes - base_writes


def no_echo() -> Echo:
    """The baseline: building the client frames and the loop, no library."""

    def echo(data: bytes) -> bytes:
        return b""

    return echo


LIBS: dict[str, Callable[[], Echo]] = {
    "websockets": websockets_echo,
    "wsproto": wsproto_echo,
    "none": no_echo,
    "reuseport": no_echo,  # not a library: run() drives our WebSocket connection
}


def run(args: argparse.Namespace) -> int:
    frames = client_frames(args.size, args.messages)
    if args.lib == "reuseport":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            elapsed, sent, writes = runner.run(reuseport_drive(frames))
        return report(args, elapsed, sent, f", {writes / args.messages:.2f} writes per message")
    echo = LIBS[args.lib]()
    sent = 0
    started = time.perf_counter()
    for frame in frames:
        sent += len(echo(frame))
    elapsed = time.perf_counter() - started
    return report(args, elapsed, sent, "")


def report(args: argparse.Namespace, elapsed: float, sent: int, extra: str) -> int:
    expected = args.messages * (SIZES[args.size] + (2 if args.size == "small" else 10))
    if sent != expected and args.lib != "none":
        print(f"error: {sent} bytes echoed, expected {expected}", file=sys.stderr)
        return 1
    rate = args.messages / elapsed if elapsed > 0 else float("inf")
    print(
        f"{args.lib} {args.size}: {args.messages} messages in {elapsed:.3f} s, "
        f"{rate:,.0f} msg/s{extra}"
    )
    return 0


def callgrind_total(args: argparse.Namespace, messages: int, outdir: Path) -> int:
    out = outdir / f"callgrind.{args.lib}.{args.size}.{messages}"
    argv = ["--lib", args.lib, "--size", args.size, "--messages", str(messages)]
    return instructions(__file__, argv, out, args.timeout)


def callgrind(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("error: valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 2
    outdir = Path(tempfile.mkdtemp(prefix="profile_ws."))
    lib = args.lib
    try:
        small = callgrind_total(args, args.messages, outdir)
        large = callgrind_total(args, 2 * args.messages, outdir)
        args.lib = "none"
        base = callgrind_total(args, 2 * args.messages, outdir)
        base -= callgrind_total(args, args.messages, outdir)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        args.lib = lib
        shutil.rmtree(outdir, ignore_errors=True)
    # The client frames are built in the same run: the baseline ("none") is
    # what building them and the loop cost, subtracted here.
    per_message = (large - small - base) / args.messages
    print(f"{lib} {args.size}: {per_message:,.0f} instructions per message")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lib", choices=sorted(LIBS), default="websockets")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("-n", "--messages", type=int, default=None)
    parser.add_argument("--callgrind", action="store_true", help="instructions per message")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per callgrind run")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 1000 if args.callgrind else 20000
    return callgrind(args) if args.callgrind else run(args)


if __name__ == "__main__":
    sys.exit(main())
