"""Bytes on the wire that do not depend on a request: status lines, the Date
header, canned error responses.

Rules: everything here is computed once (status lines, header prefixes) or at
most once per second (Date), so the response fast path only joins bytes.
"""

from __future__ import annotations

import http
from email.utils import formatdate

__all__ = ["STATUS_LINES", "DateCache", "error_response", "status_line"]


def _phrase(code: int) -> bytes:
    try:
        return http.HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b""


STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, _phrase(code)) for code in range(100, 600)
}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <phrase>\\r\\n``; raises for a status outside 100-599."""
    line = STATUS_LINES.get(status)
    if line is None:
        raise RuntimeError(
            f"the ASGI app sent status {status!r}: an HTTP status is an int in 100-599"
        )
    return line


class DateCache:
    """``date: ...\\r\\n`` for the current second, refreshed by the server's tick."""

    __slots__ = ("header", "second")

    def __init__(self) -> None:
        self.second = -1
        self.header = b""

    def refresh(self, now: float) -> None:
        second = int(now)
        if second != self.second:
            self.second = second
            self.header = b"date: " + formatdate(second, usegmt=True).encode("ascii") + b"\r\n"


def error_response(status: int, prefix: bytes) -> bytes:
    """A complete ``Connection: close`` plain-text response for ``status``.

    ``prefix`` is the server-level header block (``server:``/``date:``).
    """
    body = _phrase(status) or b"Error"
    return b"".join(
        (
            status_line(status),
            prefix,
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: ",
            str(len(body)).encode("ascii"),
            b"\r\nconnection: close\r\n\r\n",
            body,
        )
    )
