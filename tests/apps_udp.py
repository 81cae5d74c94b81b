"""Datagram apps for the UDP tests (imported by workers as ``apps_udp:NAME``).

Every answer starts with the worker's pid and a space, then echoes the
datagram, so a test knows which process read each one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any


class Echo(asyncio.DatagramProtocol):
    """The README's echo, with the pid in front."""

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport
        self.prefix = f"{os.getpid()} ".encode()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data == b"stall":  # block the loop: the socket's queue fills meanwhile
            time.sleep(2.0)
            return
        self.transport.sendto(self.prefix + data, addr)


def make_echo() -> Echo:
    """A factory: detected as a datagram app by its return annotation."""
    return Echo()


def plain_factory():  # type: ignore[no-untyped-def]  # no return annotation, on purpose
    """A factory nothing marks as datagram: detected as one only when every bind is udp://."""
    return Echo()


partial_echo = functools.partial(Echo)


class Both(asyncio.Protocol, asyncio.DatagramProtocol):
    """Ambiguous on purpose: both a stream and a datagram protocol."""
