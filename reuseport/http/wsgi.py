"""WSGI apps (PEP 3333) on a thread pool behind the worker's event loop.

The split: the event loop does all the HTTP (the same ``HttpProtocol`` as for
ASGI apps: parsing, limits, deadlines, keep-alive, framing with
``framing.py``, flow control with ``flow.py``) and the app runs on one of the
worker's ``--threads`` app threads.  A ``WsgiCycle`` is one request; it has a
loop side (methods called on the loop: ``run``, ``wake``, ``client_gone`` and
the ``l_*`` callbacks) and a thread side (``call_app`` and what it calls:
``WsgiInput``, ``_Response``), and the two meet only through:

* ``loop.call_soon_threadsafe`` from the thread (a response piece, a request
  for body bytes, the file to send, an app error), and
* a ``_Baton`` per request back to the thread: one lock the thread blocks on
  and the loop releases, exactly once per wait, with the answer (body bytes,
  "go on", "gone", "send it yourself").

Rules:

* One request runs at a time per connection (HTTP/1.1 order), so requests
  waiting for a thread are at most one per open connection, in a FIFO;
  while one waits, its connection reads no further than the body high-water
  mark (``flow.py``) and parses nothing after the request.  More requests
  than threads queue, bounded that way; ``--limit-concurrency`` counts
  queued and running app calls and answers 503 above it.
* ``wsgi.input`` pulls: a body that arrived whole before the app started is
  handed over with the request (no round trip); otherwise each read asks
  the loop for what is buffered and blocks until bytes, the end, or a
  disconnect come.  The loop keeps reading the socket only while less than
  ``HIGH_WATER`` waits for the app, so a large upload is never held whole.
  The first read of a request with ``Expect: 100-continue`` sends
  ``100 Continue``.  A disconnect (or a body that stalls past
  ``--body-read-timeout``, or breaks the framing) raises ``ClientDisconnected``
  (an ``OSError``) from ``read()``.
* The response streams: every body piece but the last waits until the loop
  wrote it and the transport takes more (a slow client blocks the app
  thread, never grows the worker's memory).  The last piece, known by the
  app's Content-Length, a list/tuple body or the end of the iterable, goes
  without waiting, so the common response costs one hop each way.  Headers
  go with the first non-empty piece (PEP 3333), so ``start_response`` with
  ``exc_info`` can replace them until then.
* ``close()`` of the app's iterable is always called, on the app thread,
  after the last piece was handed over, also after an error or a client
  disconnect (the thread learns of it at its next piece or read).
* An exception before the headers went out is logged and answered with 500;
  after, the connection is closed (the client sees a truncated body).
  After the client went away it is logged at DEBUG only.
* ``wsgi.file_wrapper`` around a regular file is sent by ``loop.sendfile``
  when the loop has it natively and the connection is not TLS (the asyncio
  loop; uvloop has no ``sendfile``); otherwise the app thread reads the file
  in 256 KiB blocks.  A Content-Length is added when the app gave none.
* Threads cannot be stopped: on a graceful stop the connections drain as for
  ASGI, and then the worker waits for running app calls up to the rest of
  ``--graceful-timeout``, names the ones still running and exits without
  them (app threads are daemon threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .. import __version__
from ..config import Config, WebSocketKind
from ..connections import WorkerStats
from .cycle import DELIVERED, GONE, RECEIVED, RECEIVING, ClientDisconnected, RequestCycle
from .framing import COMPLETE, HEAD_HELD, NO_BODY_STATUS, WAITING, ResponseFramer
from .server import HttpServer
from .wsgi_environ import (
    ErrorStream,
    FileWrapper,
    base_environ,
    build_environ,
    encode_headers,
    parse_status,
)

if TYPE_CHECKING:
    from .protocol import HttpProtocol

__all__ = ["ThreadPool", "WSGIApp", "WsgiCycle", "WsgiInput", "WsgiServer"]

logger = logging.getLogger("reuseport.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BLOCK = 256 * 1024  # bytes read per block when the app thread sends a file itself


class _Answer:
    """What the loop hands a waiting app thread besides body bytes."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_OK = _Answer("ok")  # written, and the transport takes more: go on
_GONE = _Answer("gone")  # the client went away, or the response cannot go on
_FALLBACK = _Answer("fallback")  # no sendfile here: the head is out, send the file in blocks


class _Baton:
    """One request's app thread waiting for the loop: one ``give`` per ``take``."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: object = None

    def take(self) -> object:
        """Block until the loop gives; return what it gave (app thread)."""
        self._lock.acquire()
        value, self._value = self._value, None
        return value

    def give(self, value: object) -> None:
        """Wake the thread blocked in ``take`` (loop)."""
        self._value = value
        self._lock.release()


async def _not_asgi(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("reuseport bug: the ASGI entry of a WSGI server was called")


class WsgiCycle(RequestCycle):
    """One request to a WSGI app (see the module docstring for the two sides)."""

    __slots__ = ("baton", "body_complete", "halted", "prefill", "stalled", "wsgi")

    def __init__(
        self,
        proto: HttpProtocol,
        response: ResponseFramer,
        method: str,
        http_version: str,
        path: str,
        raw_path: bytes,
        query: bytes,
        client: tuple[str, int] | None,
        scheme: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        super().__init__(
            proto, response, method, http_version, path, raw_path, query, client, scheme, headers
        )
        self.wsgi = cast("WsgiServer", proto.server)
        # self.baton: made by the app thread (call_app); the loop gives on it
        # only in answer to something the thread posted, so always after that.
        self.baton: _Baton
        # Set on the loop, read by the app thread: stop producing the response.
        self.halted = False
        self.body_complete = False  # the app thread got the last body bytes
        self.prefill: bytes | None = None  # the whole body, when it came before the app ran
        self.stalled = False  # the app thread waits for body bytes not here yet

    # --- loop side -----------------------------------------------------------

    def run(self) -> None:
        """Queue the app call for a thread (the connection made us current)."""
        proto = self.proto
        server = self.wsgi
        pool = server.pool
        limit = server.limit_concurrency
        if pool.closed or (limit is not None and pool.active >= limit):
            proto.transport.write(self.response.refuse(503))
            proto.response_complete(self)
            return
        if self.request is RECEIVED:
            # The whole body is here: the app reads it without asking the loop.
            chunks = self.body
            self.prefill = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.body = []
            self.body_size = 0
            self.request = DELIVERED
            self.body_complete = True
        pool.submit(self)

    def wake(self) -> None:
        # The connection calls this when body bytes, the body's end or the
        # response's end came; only a thread waiting for body bytes cares.
        if self.waiter is not None:
            self._deliver()

    def client_gone(self) -> None:
        self.request = GONE
        self.halted = True
        self.wake()

    def _deliver(self) -> None:
        """Hand the waiting app thread what there is, or let it wait on."""
        state = self.request
        value: object
        if state is GONE or self.halted:
            value = _GONE
        elif self.response.state is COMPLETE:
            value = b""  # answered already: the rest of the body is dropped
            self.body_complete = True
        elif self.body:
            chunks = self.body
            value = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.body = []
            self.body_size = 0
            if state is RECEIVED:
                self.request = DELIVERED
                self.body_complete = True
        elif state is RECEIVING:
            if not self.stalled:
                self.stalled = True
                self.proto.body_wait(True)  # --body-read-timeout runs while it waits
            return
        else:
            value = b""
            self.request = DELIVERED
            self.body_complete = True
        self.waiter = None
        if self.stalled:
            self.stalled = False
            self.proto.body_wait(False)
        self.baton.give(value)

    def l_pull(self) -> None:
        """The app thread reads the body and has nothing buffered."""
        proto = self.proto
        if self.expect_100:
            self.expect_100 = False
            if self.response.state is WAITING and not proto.closed:
                proto.transport.write(_CONTINUE)
        self.waiter = self.wsgi.reading
        self._deliver()
        proto.update_reading()

    def l_send(
        self,
        head: tuple[int, list[tuple[bytes, bytes]]] | None,
        data: bytes,
        more: bool,
        ack: bool,
    ) -> None:
        """Frame and write one piece of the response; with ``ack``, the thread waits."""
        proto = self.proto
        response = self.response
        if self.halted or proto.closed or response.state is COMPLETE:
            if ack:
                self.baton.give(_GONE)
            return
        try:
            if head is not None:
                response.start(head[0], head[1], self._must_close())
            out = response.body(data, more)
        except (RuntimeError, ValueError) as exc:
            logger.error("the WSGI app's response breaks HTTP: %s", exc)
            self.l_abandon()
            if ack:
                self.baton.give(_GONE)
            return
        if out:
            proto.transport.write(out)
        if response.state is COMPLETE:
            if response.left:
                logger.error(
                    "the WSGI app sent %d body bytes fewer than its Content-Length header says; "
                    "closing the connection",
                    response.left,
                )
            proto.response_complete(self)
        if ack:
            if proto.flow.write_paused and not proto.closed:
                self._track(self._ack_when_drained())
            else:
                self.baton.give(_OK)

    def l_sendfile(
        self, head: tuple[int, list[tuple[bytes, bytes]]], file: Any, offset: int, count: int
    ) -> None:
        """Send the head, then ``count`` bytes of ``file`` from ``offset`` with sendfile."""
        proto = self.proto
        response = self.response
        if self.halted or proto.closed:
            self.baton.give(_GONE)
            return
        try:
            response.start(head[0], head[1], self._must_close())
        except (RuntimeError, ValueError) as exc:
            logger.error("the WSGI app's response breaks HTTP: %s", exc)
            self.l_abandon()
            self.baton.give(_GONE)
            return
        proto.transport.write(response.flush_head())
        self._track(self._sendfile(file, offset, count))

    def l_abandon(self) -> None:
        """The response cannot be completed: 500 if nothing went out, else close."""
        self.halted = True
        proto = self.proto
        if proto.closed or self.request is GONE:
            return
        response = self.response
        state = response.state
        if state is WAITING or state is HEAD_HELD:  # (a held head was never written)
            proto.transport.write(response.refuse(500))
            proto.response_complete(self)
        elif state is not COMPLETE:
            proto.close()

    def _must_close(self) -> bool:
        # A client still waiting for "100 Continue" may or may not send its
        # body now: the connection is in an unknown state, so it ends.
        return self.proto.shutting_down or (self.expect_100 and self.request is RECEIVING)

    def _track(self, coro: Any) -> None:
        task: asyncio.Task[None] = self.proto.loop.create_task(coro)
        tasks = self.wsgi.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _ack_when_drained(self) -> None:
        proto = self.proto
        try:
            # Checked in this step: a resume between l_send and now must not
            # leave us waiting for a drain that already happened.
            while proto.flow.write_paused and not proto.closed and not self.halted:
                await proto.flow.drain()
        finally:
            self.baton.give(_GONE if self.halted or proto.closed else _OK)

    async def _sendfile(self, file: Any, offset: int, count: int) -> None:
        proto = self.proto
        answer: object = _GONE
        try:
            sent = await proto.loop.sendfile(proto.transport, file, offset, count, fallback=False)
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            answer = _FALLBACK
        except (OSError, RuntimeError) as exc:
            logger.debug("sendfile to %s failed: %r", proto.client, exc)
            self.halted = True
            proto.abort()
        else:
            if not self.halted and not proto.closed:
                response = self.response
                response.left -= sent
                response.bytes_sent += sent
                response.body(b"", False)
                if response.left:
                    logger.error(
                        "the file the WSGI app sent ended %d bytes before its Content-Length; "
                        "closing the connection",
                        response.left,
                    )
                proto.response_complete(self)
                answer = _OK
        finally:
            self.baton.give(answer)

    # --- app thread side -----------------------------------------------------

    def post(self, callback: Callable[..., None], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop; False if the loop is gone (worker exiting)."""
        try:
            self.wsgi.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def pull_body(self) -> bytes:
        """The next body bytes from the loop, b"" at the end (app thread)."""
        if not self.post(self.l_pull):
            raise ClientDisconnected("the server is stopping")
        value = self.baton.take()
        if value is _GONE:
            raise ClientDisconnected("the client went away before the request body was complete")
        return cast(bytes, value)

    def call_app(self) -> None:
        """Build the environ, call the app, send what it returns (app thread)."""
        server = self.wsgi
        scope = self.scope
        self.baton = _Baton()
        prefill = self.prefill
        wsgi_input = WsgiInput(self, prefill or b"", prefill is not None)
        environ = build_environ(
            server.base_environ,
            method=scope["method"],
            raw_path=scope["raw_path"][server.root_len :],
            query=scope["query_string"],
            http_version=scope["http_version"],
            headers=scope["headers"],
            client=scope["client"],
            server=scope["server"],
            scheme=scope["scheme"],
            wsgi_input=wsgi_input,
        )
        response = _Response(self, environ["REQUEST_METHOD"] == "HEAD")
        result: object = None
        try:
            result = server.wsgi_app(environ, response.start_response)
            response.send(result)
        except BaseException as exc:
            response.failed(exc)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    response.failed(exc)


class _Response:
    """The app thread's half of one response: ``start_response``, ``write``, the body."""

    __slots__ = ("cycle", "done", "head", "headers", "length", "sent", "status", "written")

    def __init__(self, cycle: WsgiCycle, head: bool) -> None:
        self.cycle = cycle
        self.head = head  # a HEAD request: no body goes out, whatever the app makes
        self.status = 0  # 0: start_response not called yet
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None  # the app's Content-Length
        self.written = 0
        self.sent = False  # the head was handed to the loop
        self.done = False  # the last piece was handed to the loop (or the response failed)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status:
            raise RuntimeError(
                "start_response() was called a second time without exc_info (PEP 3333)"
            )
        code = parse_status(status)
        self.headers, self.length = encode_headers(headers)
        self.status = code
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's ``write()`` callable: send now, blocking while the client is slow."""
        if not self.status:
            raise RuntimeError("write() was called before start_response()")
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise TypeError(f"write() takes bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self.done:
            raise RuntimeError("write() after the response was complete (its Content-Length)")
        if not self._piece(data):
            raise ClientDisconnected("the client closed the connection")

    def send(self, result: object) -> None:
        """Send the app's iterable (see the module docstring)."""
        if type(result) is FileWrapper and self.status:
            self._file(result)
            return
        if isinstance(result, list | tuple):
            self._last(b"".join(result))
            return
        if not isinstance(result, Iterable):
            raise TypeError(f"the WSGI app returned {type(result).__name__}, not an iterable")
        self._stream(result)

    def _stream(self, result: Iterable[bytes]) -> None:
        cycle = self.cycle
        for data in result:
            if type(data) is not bytes:
                raise TypeError(f"the WSGI app's iterable gave {type(data).__name__}, not bytes")
            if not data:
                continue
            if not self.status:
                raise RuntimeError("the WSGI app gave a body before calling start_response()")
            if self.done:
                raise RuntimeError("the WSGI app gave more body bytes than its Content-Length")
            if not self._piece(data) or self.done or cycle.halted:
                return
        if not self.done and not cycle.halted:
            self._last(b"")

    def failed(self, exc: BaseException) -> None:
        """The app raised: log it, and let the loop answer 500 or close."""
        cycle = self.cycle
        if cycle.halted:
            logger.debug("WSGI app ended with %r after the client went away", exc)
            return
        logger.error("Exception in WSGI application", exc_info=exc)
        if not self.done:
            self.done = True
            cycle.post(cycle.l_abandon)

    def _take_head(self) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        if self.sent:
            return None
        self.sent = True
        return (self.status, self.headers)

    def _piece(self, data: bytes) -> bool:
        """Hand over one non-empty piece; False if the response cannot go on."""
        cycle = self.cycle
        if cycle.halted:
            return False
        head = self._take_head()
        length = self.length
        if length is not None:
            self.written += len(data)
            if self.written >= length:  # the last piece (more is the framer's error)
                self.done = True
                return cycle.post(cycle.l_send, head, data, False, False)
        if not cycle.post(cycle.l_send, head, data, True, True):
            return False
        return cycle.baton.take() is _OK

    def _last(self, data: bytes) -> None:
        if not self.status:
            raise RuntimeError("the WSGI app returned without calling start_response()")
        if self.done:
            if data:
                raise RuntimeError("the WSGI app gave more body bytes than its Content-Length")
            return
        self.done = True
        cycle = self.cycle
        cycle.post(cycle.l_send, self._take_head(), data, False, False)

    def _file(self, wrapper: FileWrapper) -> None:
        """``wsgi.file_wrapper``: sendfile for a regular file, else its blocks."""
        file = wrapper.filelike
        try:
            st = os.fstat(file.fileno())
            offset = file.tell()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or self.status in NO_BODY_STATUS:
            self._stream(wrapper)  # not a file we can measure: iterate it
            return
        count = max(st.st_size - offset, 0)
        if self.length is None:
            self.headers.append((b"content-length", b"%d" % count))
            self.length = count
        else:
            count = min(count, self.length)
        if self.head:  # its length is all a HEAD request gets
            self._last(b"")
            return
        cycle = self.cycle
        if count and cycle.wsgi.native_sendfile:
            head = self._take_head()
            assert head is not None
            if not cycle.post(cycle.l_sendfile, head, file, offset, count):
                return
            answer = cycle.baton.take()
            if answer is not _FALLBACK:
                self.done = True
                return
        left = count
        while left > 0 and not cycle.halted:
            data = file.read(min(_BLOCK, left))
            if not data:
                break
            left -= len(data)
            if not self._piece(data) or self.done:
                return
        if not cycle.halted:
            self._last(b"")


class WsgiInput:
    """``wsgi.input``: the request body, pulled from the loop as the app reads it."""

    __slots__ = ("_buf", "_cycle", "_eof", "_pos")

    def __init__(self, cycle: WsgiCycle, data: bytes, eof: bool) -> None:
        self._cycle = cycle
        self._buf = data
        self._pos = 0
        self._eof = eof

    def _more(self) -> bytes:
        if self._eof:
            return b""
        cycle = self._cycle
        data = cycle.pull_body()
        if not data or cycle.body_complete:
            self._eof = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        buf, pos = self._buf, self._pos
        if size is None or size < 0:
            parts = [buf[pos:]]
            self._buf, self._pos = b"", 0
            while data := self._more():
                parts.append(data)
            return b"".join(parts)
        end = pos + size
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._buf, self._pos = b"", 0
        while have < size:
            data = self._more()
            if not data:
                break
            need = size - have
            if len(data) > need:
                parts.append(data[:need])
                self._buf, self._pos = data, need
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None or size < 0 else size
        parts: list[bytes] = []
        while True:
            buf, pos = self._buf, self._pos
            stop = len(buf) if limit < 0 else min(len(buf), pos + limit)
            nl = buf.find(b"\n", pos, stop)
            if nl >= 0 or stop < len(buf):
                end = nl + 1 if nl >= 0 else stop
                self._pos = end
                parts.append(buf[pos:end])
                return b"".join(parts)
            parts.append(buf[pos:])
            if limit >= 0:
                limit -= len(buf) - pos
                if limit == 0:
                    self._buf, self._pos = b"", 0
                    return b"".join(parts)
            data = self._more()
            self._buf, self._pos = data, 0
            if not data:
                return b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> WsgiInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _AppThread(threading.Thread):
    """One app thread: takes requests from the pool's FIFO until told to stop."""

    def __init__(self, pool: ThreadPool, index: int) -> None:
        super().__init__(name=f"reuseport-wsgi-{index}", daemon=True)
        self.pool = pool
        self.current: WsgiCycle | None = None
        self.finished = 0  # requests done; written by this thread only

    def run(self) -> None:
        pool = self.pool
        get = pool.queue.get
        while True:
            cycle = get()
            if cycle is None:
                return
            self.current = cycle
            try:
                cycle.call_app()
            except BaseException:  # pragma: no cover - call_app handles the app's errors
                logger.exception("reuseport bug in a WSGI app thread")
            finally:
                self.current = None
                self.finished += 1
                if pool.idle is not None:
                    pool.notify_idle()


class ThreadPool:
    """The app threads of one worker and their FIFO of requests.

    Threads start as requests need them, up to ``size``.  ``active`` (app
    calls queued or running) is computed on the loop from counters each side
    writes alone (``submitted`` by the loop, ``finished`` by each thread), so
    no lock is taken per request.
    """

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.size = size
        self.loop = loop
        self.queue: queue.SimpleQueue[WsgiCycle | None] = queue.SimpleQueue()
        self.threads: list[_AppThread] = []
        self.submitted = 0
        self.closed = False
        self.idle: asyncio.Event | None = None  # set once wait_idle() watches

    @property
    def active(self) -> int:
        return self.submitted - sum(t.finished for t in self.threads)

    def submit(self, cycle: WsgiCycle) -> None:
        self.submitted += 1
        threads = self.threads
        if len(threads) < self.size and self.active > len(threads):
            thread = _AppThread(self, len(threads))
            threads.append(thread)
            thread.start()
        self.queue.put(cycle)

    def running(self) -> list[WsgiCycle]:
        """The requests app threads are busy with now."""
        return [cycle for t in self.threads if (cycle := t.current) is not None]

    def notify_idle(self) -> None:
        """A thread finished a request while someone waits for idle (app thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._check_idle)

    def _check_idle(self) -> None:
        if self.idle is not None and self.active == 0:
            self.idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no app call is queued or running; False after ``timeout``."""
        # The event first, then the count: a thread finishing in between
        # either sees the event and notifies, or is counted here.
        if self.idle is None:
            self.idle = asyncio.Event()
        if self.active == 0:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), max(timeout, 0.0))
        except TimeoutError:
            return self.active == 0
        return True

    def close(self) -> None:
        """No more requests: every thread exits once its current one is done."""
        self.closed = True
        for _ in self.threads:
            self.queue.put(None)


class WsgiServer(HttpServer):
    """``HttpServer`` for a WSGI app: the same connections, ``WsgiCycle`` requests."""

    cycle_class = WsgiCycle

    def __init__(
        self,
        app: WSGIApp,
        config: Config,
        stats: WorkerStats,
        *,
        secure: bool = False,
    ) -> None:
        # No WebSocket for WSGI apps: an upgrade request is a plain request.
        super().__init__(
            _not_asgi, dataclasses.replace(config, ws=WebSocketKind.NONE), stats, secure=secure
        )
        self.wsgi_app = app
        self.pool = ThreadPool(config.threads, self.loop)
        self.root_len = len(self.root_path_bytes)
        self.errors = ErrorStream()
        self.base_environ = base_environ(
            script_name=config.root_path,
            errors=self.errors,
            server_software=f"reuseport/{__version__}",
        )
        # The waiter a cycle shows the connection while its app thread waits
        # for body bytes (never resolved: the cycle's wake() hands them over).
        self.reading: asyncio.Future[None] = self.loop.create_future()
        self.call_soon_threadsafe = self.loop.call_soon_threadsafe
        # loop.sendfile: the asyncio loop has it for plain TCP; uvloop does not.
        self.native_sendfile = (
            not secure and type(self.loop).sendfile is not asyncio.AbstractEventLoop.sendfile
        )
