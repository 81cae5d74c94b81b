"""HTTP/1.1 response framing, without I/O: response events in, bytes out.

Everything that decides what a response looks like on the wire lives here:
the status line, header validation, the server/date defaults, the choice
between Content-Length, chunked and close-delimited bodies, HEAD and the
statuses that have no body, HTTP/1.0 keep-alive, chunk encoding, and
counting body bytes against a declared Content-Length.  It knows nothing of
sockets, event loops or ASGI: ``ResponseFramer.start()`` takes a status and
headers, ``body()`` takes body bytes and returns the bytes to write, and
``keep_alive`` says afterwards whether the connection may carry another
request.  So it can be tested by feeding events, as h11's writers are.

Rules:

* The head is held back after ``start()``: the first ``body()`` joins it
  with the body bytes (one write for a small response) and, when that body
  is the last one, frames it with a Content-Length instead of chunks.  Whoever
  drives the framer must call ``flush_head()`` when the app waits for
  something else before its first body, so the client sees the head.
* The app's own framing headers are passed through: an app-set
  Content-Length is counted (more bytes raise, fewer end keep-alive), an
  app-set ``Transfer-Encoding: chunked`` gets its chunks encoded here.  With
  neither, we choose: a Content-Length when the whole body is known at the
  first ``body()``, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
* A response to HEAD and a 1xx/204/304 response carry no body bytes; a HEAD
  answered with a computed non-empty body gets that body's Content-Length.
* ``RuntimeError`` from ``start()``/``body()`` means the app broke HTTP (a
  header with CR or LF, a status outside 100-599, too many body bytes): the
  caller answers 500 or closes.  Message order (no body before the start, no
  second start) is the caller's contract, enforced by its own interface
  (ASGI today, WSGI next); ``state`` tells it where the response is.
* ``DefaultHeaders`` holds the server-wide header lines; the server refreshes
  it (the Date second) and every framer reads it when the response starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from ._wire import STATUS_LINES, error_response, status_line

__all__ = [
    "BODY",
    "COMPLETE",
    "HEAD_HELD",
    "NO_BODY_STATUS",
    "WAITING",
    "DefaultHeaders",
    "Framing",
    "ResponseFramer",
    "ResponseState",
]

NO_BODY_STATUS = frozenset({204, 304, *range(100, 200)})
_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection", b"server", b"date"})
_LAST_CHUNK = b"0\r\n\r\n"


class ResponseState(IntEnum):
    """How far one response has got."""

    WAITING = 0  # no start yet
    HEAD_HELD = 1  # started; the head waits to leave with the first body
    BODY = 2  # the head is out, more body may follow
    COMPLETE = 3  # the last body bytes were handed out


class Framing(IntEnum):
    """How the end of the response body is marked on the wire."""

    UNDECIDED = 0  # the app gave no length: decided when the head leaves
    LENGTH = 1  # Content-Length: body bytes are counted against it
    CHUNKED = 2  # chunked transfer coding
    CLOSE = 3  # HTTP/1.0 without a length: closing the connection ends the body
    NONE = 4  # no body bytes at all: a HEAD request, or a 1xx/204/304 status


# Module-level aliases (also for the callers): a global lookup is cheaper than
# an enum class attribute on the per-request path.
WAITING = ResponseState.WAITING
HEAD_HELD = ResponseState.HEAD_HELD
BODY = ResponseState.BODY
COMPLETE = ResponseState.COMPLETE
_UNDECIDED = Framing.UNDECIDED
_LENGTH = Framing.LENGTH
_CHUNKED = Framing.CHUNKED
_CLOSE = Framing.CLOSE
_NONE = Framing.NONE


class DefaultHeaders:
    """``server:`` and ``date:`` lines added to every response that lacks its own.

    ``extra`` (``--header``) lines go into every response, whatever the app sent.
    """

    __slots__ = ("both", "date", "extra", "server")

    def __init__(self, server: bytes = b"", date: bytes = b"", extra: bytes = b"") -> None:
        self.server = server
        self.date = date
        self.extra = extra
        self.both = server + extra + date

    def set_date(self, date: bytes) -> None:
        self.date = date
        self.both = self.server + self.extra + date

    def error_response(self, status: int) -> bytes:
        """A complete ``Connection: close`` plain-text response for ``status``."""
        return error_response(status, self.both)


class ResponseFramer:
    """Frames one response (see the module docstring for the rules).

    ``head`` is True for a response to HEAD, ``http10`` for an HTTP/1.0
    request, ``keep_alive`` whether the request allows another one after it.
    """

    __slots__ = (
        "_app_close",
        "_defaults",
        "_framing",
        "_head",
        "_held",
        "_http10",
        "bytes_sent",
        "keep_alive",
        "left",
        "state",
        "status",
    )

    def __init__(
        self, defaults: DefaultHeaders, head: bool, http10: bool, keep_alive: bool
    ) -> None:
        self._defaults = defaults
        self._head = head
        self._http10 = http10
        self.keep_alive = keep_alive
        self.state = WAITING
        self.status = 0
        self.bytes_sent = 0  # body bytes the app gave (also for HEAD)
        self.left = 0  # with Framing.LENGTH: bytes still owed; after the end, missing
        self._framing = _UNDECIDED
        self._app_close = False
        self._held: bytes | None = None

    def start(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], close: bool = False
    ) -> None:
        """Encode the status line and the app's headers and hold them back.

        ``close`` asks for ``Connection: close`` whatever the request said
        (the server is shutting down, or the request body is in doubt).
        """
        parts: list[bytes] = []
        has_server = has_date = app_close = False
        length: int | None = None
        chunked = False
        for name, value in headers:
            lname = name.lower()
            if lname in _SPECIAL:
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"transfer-encoding":
                    # (find, not `in`: cheaper on 3.11, see _HASH in protocol.py)
                    chunked = value.lower().find(b"chunked") >= 0
                elif lname == b"connection":
                    app_close = value.lower().find(b"close") >= 0
                elif lname == b"server":
                    has_server = True
                else:
                    has_date = True
            parts += (name, b": ", value, b"\r\n")
        block = b"".join(parts)
        # One line per field (four parts each): any other CR or LF, alone or
        # paired, is the app's and makes another line.  (splitlines() is the
        # cheapest such test on 3.11: count() parses its arguments the slow
        # way, two of them or a translate() cost ~1k instructions more.)
        if len(block.splitlines()) != len(parts) >> 2:
            raise RuntimeError(
                "the app sent a response header containing CR or LF; refusing to send it"
            )
        line = STATUS_LINES.get(status) or status_line(status)  # (the latter raises)
        if app_close or close:
            self.keep_alive = False
        self._app_close = app_close
        if status in NO_BODY_STATUS:
            self._framing = _NONE
        elif length is not None:
            if self._head:
                self._framing = _NONE
            else:
                self._framing = _LENGTH
                self.left = length
        elif chunked:
            self._framing = _NONE if self._head else _CHUNKED
        # else: UNDECIDED (also for HEAD: a computed body gives a Content-Length)
        defaults = self._defaults
        if has_server or has_date:
            prefix = (
                (b"" if has_server else defaults.server)
                + defaults.extra
                + (b"" if has_date else defaults.date)
            )
        else:
            prefix = defaults.both
        self._held = line + prefix + block
        self.status = status
        self.state = HEAD_HELD

    def body(self, data: bytes, more: bool) -> bytes:
        """The bytes to write for one piece of body; ``more=False`` ends the response."""
        head = self._held
        if head is not None:
            self._held = None
            if self._framing is _UNDECIDED or not self.keep_alive or self._http10:
                head = self._end_head(head, None if more else len(data))
            else:  # what _end_head adds when it has nothing to add: the common case
                head += b"\r\n"
        framing = self._framing
        if framing is _LENGTH:
            left = self.left - len(data)
            if left < 0:
                raise RuntimeError(
                    "the app sent more body bytes than its Content-Length header says"
                )
            self.left = left
            out = data
        elif framing is _CHUNKED:
            if data:
                out = b"%x\r\n%b\r\n" % (len(data), data)
                if not more:
                    out += _LAST_CHUNK
            else:
                out = b"" if more else _LAST_CHUNK
        elif framing is _NONE:
            out = b""
        else:  # _CLOSE
            out = data
        self.bytes_sent += len(data)
        if more:
            self.state = BODY
        else:
            self.state = COMPLETE
            if self.left:
                self.keep_alive = False  # the peer would wait for the missing bytes
        if head is None:
            return out
        return head + out if out else head

    def flush_head(self) -> bytes:
        """The held head, framed for a body of unknown length; ``b""`` if none is held."""
        head = self._held
        if head is None:
            return b""
        self._held = None
        self.state = BODY
        return self._end_head(head, None)

    def refuse(self, status: int) -> bytes:
        """End a response that never started with a canned error; closes the connection."""
        self.status = status
        self.keep_alive = False
        self.state = COMPLETE
        return self._defaults.error_response(status)

    def _end_head(self, head: bytes, length: int | None) -> bytes:
        """Add framing and connection headers; ``length`` is the whole body's if known."""
        if self._framing is _UNDECIDED:
            if self._head:
                # Answering HEAD: a non-empty body the app computed says how
                # long the GET answer would be; an empty one tells nothing.
                if length:
                    head += b"content-length: %d\r\n" % length
                self._framing = _NONE
            elif length is not None:
                head += b"content-length: %d\r\n" % length
                self._framing = _LENGTH
                self.left = length
            elif not self._http10:
                head += b"transfer-encoding: chunked\r\n"
                self._framing = _CHUNKED
            else:
                self._framing = _CLOSE
                self.keep_alive = False  # the close ends the body
        if not self.keep_alive:
            if not self._app_close:
                head += b"connection: close\r\n"
        elif self._http10:
            head += b"connection: keep-alive\r\n"
        return head + b"\r\n"
