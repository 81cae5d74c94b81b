"""The HTTP server of one worker, measured: run as a child by test_http_memory.

It serves an app that holds every request but ``/ok`` until released (so
hostile clients keep their connections as full as they can make them) on
127.0.0.1 port 0, with tracemalloc on and the cycle collector off, and talks
JSON lines:

* at start: ``{"port": N}``;
* ``measure``: the traced Python heap, its peak, the RSS, the live
  connections, and whether each has read all the kernel holds for it (or
  paused reading: flow control), "settled";
* ``hold``: ``{}``; from now on requests wait (all but ``/ok``);
* ``release``: ``{}`` once they may go on, until the next ``hold`` (a
  connection that paused reading sees its client's close only when it
  reads again);
* at EOF on stdin it exits.

Rules: limits and timeouts are the defaults of ``Config`` except the
header-read timeout (an hour: the measure must not race it); nothing here
waits without bound on its own, the test bounds every read of its output.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import gc
import json
import os
import socket
import sys
import termios
import tracemalloc
from typing import Any

import uvloop

from reuseport.apps.asgi import AsgiApp
from reuseport.apps.base import WorkerContext
from reuseport.config import Config, Lifespan, Mode
from reuseport.http import HttpProtocol

held = asyncio.Event()  # requests wait for it; replaced by each hold


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] != "/ok":
        await held.wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


async def main() -> None:
    loop = asyncio.get_running_loop()
    config = Config(lifespan=Lifespan.OFF, header_read_timeout=3600.0)
    ctx = WorkerContext(pid=os.getpid(), slot=0, generation=0, mode=Mode.SHARED, config=config)
    hosted = AsgiApp(app, ctx)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    await hosted.serve([listener])
    http = hosted.http
    assert http is not None
    done = loop.create_future()
    fds: dict[HttpProtocol, int] = {}  # asked once: the socket object is new each time

    def measure() -> dict[str, Any]:
        for conn in list(fds):
            if conn not in http.live:
                del fds[conn]
        settled = True
        for conn in http.live:
            fd = fds.get(conn)
            if fd is None:
                fd = fds[conn] = conn.transport.get_extra_info("socket").fileno()
            if not conn.flow.read_paused and unread(fd):
                settled = False
        traced, peak = tracemalloc.get_traced_memory()
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {
            "traced": traced,
            "peak": peak,
            "rss": rss,
            "live": len(http.live),
            "settled": settled,
        }

    def on_stdin() -> None:
        global held
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            done.set_result(None)
            return
        command = line.strip()
        if command == "measure":
            reply = measure()
        elif command == "hold":
            held = asyncio.Event()
            reply = {}
        elif command == "release":
            held.set()
            reply = {}
        else:
            reply = {"error": f"unknown command {command!r}"}
        print(json.dumps(reply), flush=True)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    await done
    held.set()
    for conn in list(http.live):
        conn.abort()
    http.stop()
    listener.close()


if __name__ == "__main__":
    gc.disable()
    tracemalloc.start()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
