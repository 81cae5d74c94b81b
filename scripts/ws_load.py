#!/usr/bin/env python3
"""WebSocket echo load: N connections, each sends a message and waits for its echo.

    python scripts/ws_load.py --port 8000 --connections 64 --duration 10 --size 32

Used by ``scripts/bench_peers.py`` (the ``ws-echo`` scenario), run with the
benchmark venv's Python.  Prints one JSON object: ``messages`` echoed,
``seconds`` measured, ``rate`` (messages per second), ``errors`` (connections
that failed or closed early) and latency percentiles in milliseconds.

Why not a WebSocket library: the client must cost less than the servers it
measures, on the same two cores.  Each connection is an asyncio Protocol that
writes one pre-masked text frame (no compression is offered, so frames stay
plain), reads the server's frames with a minimal parser (answering pings),
and sends the next message when the echo is complete: one message in flight
per connection, as a chat client or a request/response protocol would have.

Rules: loopback only, every wait bounded (the handshake by ``--timeout``, the
run by ``--duration``), every connection closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench venv has it
    uvloop = None  # type: ignore[assignment]

_PING, _PONG, _CLOSE, _TEXT = 0x9, 0xA, 0x8, 0x1


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class EchoClient(asyncio.Protocol):
    def __init__(self, host: str, port: int, frame: bytes, payload_len: int, run: Run) -> None:
        self.host, self.port = host, port
        self.frame = frame
        self.payload_len = payload_len
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.sent_at = 0.0
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.handshaken.set_exception(RuntimeError(head.split(b"\r\n")[0].decode()))
                return
            self.handshaken.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode == _PING:
                assert self.transport is not None
                self.transport.write(client_frame(_PONG, payload))
            elif opcode == _CLOSE:
                self.open = False
                self.run.errors += 1 if self.run.measuring else 0
                return
            elif opcode == _TEXT:
                self._echoed()

    def _echoed(self) -> None:
        run = self.run
        now = time.perf_counter()
        if run.measuring:
            run.messages += 1
            run.latencies.append(now - self.sent_at)
        if run.running:
            self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open and self.run.running:
            self.run.errors += 1
        self.open = False
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("closed during the handshake"))


class Run:
    def __init__(self) -> None:
        self.running = True
        self.measuring = False
        self.messages = 0
        self.errors = 0
        self.latencies: list[float] = []


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    payload = b"x" * args.size
    frame = client_frame(_TEXT, payload)
    run = Run()
    clients: list[EchoClient] = []
    for _ in range(args.connections):
        _, client = await asyncio.wait_for(
            loop.create_connection(
                lambda: EchoClient(args.host, args.port, frame, len(payload), run),
                args.host,
                args.port,
            ),
            args.timeout,
        )
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.handshaken for c in clients)), args.timeout)
    for client in clients:
        client.send()
    await asyncio.sleep(args.warmup)
    run.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    run.measuring = False
    seconds = time.perf_counter() - started
    run.running = False
    for client in clients:
        if client.transport is not None:
            client.transport.write(client_frame(_CLOSE, struct.pack("!H", 1000)))
            client.transport.close()
    lat = sorted(run.latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {
        "messages": run.messages,
        "seconds": seconds,
        "rate": run.messages / seconds if seconds > 0 else 0.0,
        "errors": run.errors,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=32, help="message bytes (text)")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect + handshake bound")
    args = parser.parse_args(argv)
    factory = uvloop.new_event_loop if uvloop is not None else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(main_async(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
