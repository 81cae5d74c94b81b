"""The built-in UDP load generator: closed-loop datagram clients.

Rules: one client process runs ``connections`` virtual clients, each with a
UDP socket of its own (its own source port, so the server's kernel hashes
each client to one worker, as it hashes a TCP connection); each keeps one
datagram in flight: it sends a numbered datagram, waits for the answer that
echoes it, then sends the next.  A datagram not answered within
``request_timeout`` is *lost* (``ErrorKind.LOST``) and the client sends the
next one; an answer that arrives later is ignored.  The run stops by itself
after ``duration`` seconds; datagrams in flight then are neither counted nor
lost.  Results are a ``LoadResult``, like the HTTP client's, so the runner,
the report and the JSON treat both alike (one datagram answered = one
request).

An answer must end with the datagram it answers (an echo).  The built-in
demo puts ``{"pid", "slot", "mode"}`` and a newline first, which gives the
exact per-worker counts; with ``check_body`` that header is required.

Latency is from ``sendto`` to the answer's arrival.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .loadgen import ErrorKind, LoadResult, LoadSpec, Tally

__all__ = ["run_udp_load"]

_SWEEP_INTERVAL = 0.05
_RETRY_AFTER_ERROR = 0.01  # an ICMP error (nobody bound): wait before the next datagram
_PAD = 32  # bytes of each datagram: small, as DNS queries and metrics lines are


class _Udp(Tally):
    """Shared state of one client process's virtual clients."""

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self.clients: list[_Client] = []

    def complete(self, head: bytes, latency_ns: int) -> None:
        if not self.stopping:
            self.answered(head, latency_ns)

    async def sweep(self) -> None:
        """Count overdue datagrams as lost and send the next one."""
        limit = int(self.spec.request_timeout * 1e9)
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.perf_counter_ns()
            for client in self.clients:
                if client.sent_at and now - client.sent_at > limit:
                    self.error(ErrorKind.LOST)
                    client.send()


class _Client(asyncio.DatagramProtocol):
    """One virtual client: one socket, one datagram in flight."""

    def __init__(self, gen: _Udp, index: int) -> None:
        self.gen = gen
        self.index = index
        self.seq = 0
        self.sent_at = 0  # perf_counter_ns of the datagram in flight; 0: none
        self.payload = b""
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport
        self.send()

    def send(self) -> None:
        if self.transport is None or self.gen.stopping:
            self.sent_at = 0
            return
        self.seq += 1
        self.payload = f"{self.index}:{self.seq}:".encode().ljust(_PAD, b".")
        self.sent_at = time.perf_counter_ns()
        self.transport.sendto(self.payload)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.sent_at or not data.endswith(self.payload):
            return  # late (already counted lost) or not ours
        latency = time.perf_counter_ns() - self.sent_at
        self.sent_at = 0
        head = data[: len(data) - len(self.payload)].rstrip(b"\n")
        self.gen.complete(head, latency)
        self.send()

    def error_received(self, exc: Exception) -> None:
        if not self.sent_at:
            return
        self.sent_at = 0
        refused = isinstance(exc, ConnectionRefusedError)
        self.gen.error(ErrorKind.CONNECT_REFUSED if refused else ErrorKind.CONNECT_ERROR)
        asyncio.get_running_loop().call_later(_RETRY_AFTER_ERROR, self.send)


async def run_udp_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` (a datagram one) in the current event loop; returns after ``spec.duration``."""
    loop = asyncio.get_running_loop()
    gen = _Udp(spec)
    transports: list[asyncio.DatagramTransport] = []
    started = time.perf_counter()
    sweeper = asyncio.create_task(gen.sweep())
    try:
        for index in range(spec.connections):
            client = _Client(gen, index)
            gen.clients.append(client)
            transport, _ = await loop.create_datagram_endpoint(
                lambda c=client: c,  # type: ignore[misc]
                remote_addr=(spec.host, spec.port),
            )
            transports.append(transport)
        await asyncio.sleep(max(0.0, spec.duration - (time.perf_counter() - started)))
    finally:
        gen.stopping = True
        elapsed = time.perf_counter() - started
        sweeper.cancel()
        for transport in transports:
            transport.abort()
        await asyncio.gather(sweeper, return_exceptions=True)
    return gen.result(elapsed, len(gen.clients))
