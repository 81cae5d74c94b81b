"""A fake ``asyncio.Transport`` for the in-process profiles (no sockets).

Shared by ``profile_http.py`` and ``profile_ws.py``: it counts the bytes and
the writes the protocol makes (``totals``, if given, counts them too, across
the transports of several connections) and never pauses the protocol.
"""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """Just enough of ``asyncio.Transport`` for our HTTP and WebSocket protocols; never pauses."""

    def __init__(self, totals: FakeTransport | None = None) -> None:
        self.totals = totals  # also counts the writes here (one per connection)
        self.written = 0
        self.writes = 0
        self.closed = False
        self.reading = True
        self.protocol: Any = None  # set by a WebSocket hand-over
        self._extra = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1
        if self.totals is not None:
            self.totals.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

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
