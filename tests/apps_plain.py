"""Test applications for the plain asyncio interfaces (stream, protocol, socket).

Load them with ``reuseport serve apps_plain:NAME --app-dir tests``.  Each one
speaks just enough HTTP/1.0-style HTTP for ``support.Server.request``: it
reads the request head, answers ``200`` with a JSON body naming the interface
that served it, the worker pid and the path (the "echo"), then closes.

Two stream handlers exist for shutdown tests; both speak a line protocol
instead of HTTP so the test controls when the request ends:

- ``hold``: reads a first line, answers ``WAITING``, then waits for a second
  line and answers ``DONE <line>``: an in-flight request the client completes.
- ``stubborn``: answers ``WAITING`` and then ignores cancellation forever, so
  only the master's SIGKILL at the graceful timeout ends its worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import cast


def _response(interface: str, head: bytes) -> bytes:
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    path = parts[1] if len(parts) >= 2 else ""
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # "uvloop" or "asyncio"
    body = json.dumps(
        {"interface": interface, "pid": os.getpid(), "path": path, "loop": loop}
    ).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )


# ------------------------------------------------------------------ stream
async def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``async def handler(reader, writer)``: detected as the stream interface."""
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(_response("stream", head))
    await writer.drain()
    writer.close()


async def looks_like_socket_app(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None
) -> None:
    """A stream handler that auto-detection takes for a socket app (one required parameter).

    Served correctly only with ``--interface stream``.
    """
    assert writer is not None
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(_response("stream", head))
    await writer.drain()
    writer.close()


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"WAITING\n")
    await writer.drain()
    line = await reader.readline()
    writer.write(b"DONE " + line)
    await writer.drain()
    writer.close()


async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"WAITING\n")
    await writer.drain()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue  # refuses to stop: the worker can only be killed


# ------------------------------------------------------------------ protocol
class HttpProtocol(asyncio.Protocol):
    """An ``asyncio.Protocol`` subclass: detected as the protocol interface."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.transport is not None:
            self.transport.write(_response("protocol", self.buffer))
            self.transport.close()


class BrokenProtocol(asyncio.Protocol):
    """Raises in ``connection_made``: the server must close such a connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise RuntimeError("BrokenProtocol refuses the connection")


def protocol_factory() -> asyncio.Protocol:
    """A zero-argument function returning a Protocol: detected as the protocol interface."""
    return HttpProtocol()


# ------------------------------------------------------------------ socket
async def _socket_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(_response("socket", head))
    await writer.drain()
    writer.close()


async def serve_socket(sock: socket.socket) -> None:
    """``async def serve(sock)``: runs its own asyncio server on the listening socket."""
    server = await asyncio.start_server(_socket_connection, sock=sock)
    async with server:
        await server.serve_forever()
