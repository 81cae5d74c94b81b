"""The WSGI request cycle in-process: the loop side on a fake transport, real app threads.

Rules: a ``WsgiHarness`` is the HTTP harness (``http_harness.py``) with a
``WsgiServer``; bytes go in through ``data_received`` and the loop runs until
what a test waits for happened (``until``, bounded).  Flow control is driven
by hand (``pause_writing``/``resume_writing`` on the connection, the fake
transport's ``reading`` flag), so the back-pressure tests are exact.  Apps
that block wait on events the test sets, with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from http_harness import Conn, Harness

from reuseport.apps.base import WorkerContext
from reuseport.apps.wsgi import WsgiApp
from reuseport.config import Config, Mode
from reuseport.http.flow import HIGH_WATER
from reuseport.http.wsgi import WsgiServer

WAIT = 5.0
Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]


class WsgiHarness(Harness):
    """``Harness`` serving a WSGI app; ``until`` runs the loop while app threads work."""

    def __init__(self, app: Any, *, secure: bool = False, **config: Any) -> None:
        self.secure = secure  # as if the worker served TLS
        super().__init__(app, **config)

    async def _make(self, app: Any, config: Config) -> WsgiServer:  # type: ignore[override]
        return WsgiServer(app, config, self.stats, secure=self.secure)

    @property
    def wsgi(self) -> WsgiServer:
        server = self.server
        assert isinstance(server, WsgiServer)
        return server

    def until(self, predicate: Callable[[], object], timeout: float = WAIT) -> None:
        async def wait() -> None:
            # App threads post to the loop: poll between iterations, briefly.
            while not predicate():  # noqa: ASYNC110 - nothing to set an Event from
                await asyncio.sleep(0.001)

        try:
            self.run(asyncio.wait_for(wait(), timeout))
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {predicate}") from None

    def close(self) -> None:
        pool = self.wsgi.pool
        self.until(lambda: pool.active == 0)
        pool.close()
        for thread in pool.threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        super().close()


@contextlib.contextmanager
def harness(app: Any, **config: Any) -> Iterator[WsgiHarness]:
    h = WsgiHarness(app, **config)
    try:
        yield h
    finally:
        h.close()


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def post_head(path: str, length: int, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n" % (
        path.encode(),
        length,
        extra,
    )


def answered(conn: Conn, count: int = 1) -> Callable[[], bool]:
    def done() -> bool:
        try:
            responses = conn.responses()
        except Exception:  # what came so far does not parse yet
            return False
        return len(responses) >= count and all(r.complete for r in responses)

    return done


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = b"hello " + environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# --- requests and responses ----------------------------------------------------


def test_get_and_keep_alive_in_order() -> None:
    with harness(hello) as h:
        conn = h.connect().feed(get("/one") + get("/two"))
        h.until(answered(conn, 2))
        first, second = conn.responses()
        assert (first.status, first.body) == (200, b"hello /one")
        assert (second.status, second.body) == (200, b"hello /two")
        assert not conn.closed
        assert h.stats.requests == 2
        assert h.stats.in_flight == 0


def test_environ_scheme_client_and_script_name_come_from_the_connection() -> None:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(environ)
        start_response("204 No Content", [])
        return []

    forwarded = b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
    with harness(app, root_path="/mount", forwarded_allow_ips="*") as h:
        conn = h.connect().feed(get("/x?q=1", forwarded))
        h.until(answered(conn))
    with harness(app, forwarded_allow_ips="10.9.9.9") as h:  # X-Forwarded-* ignored
        conn = h.connect().feed(get("/y", forwarded))
        h.until(answered(conn))
    trusted, untrusted = seen
    assert trusted["SCRIPT_NAME"] == "/mount"
    assert trusted["PATH_INFO"] == "/x"
    assert trusted["QUERY_STRING"] == "q=1"
    assert trusted["wsgi.url_scheme"] == "https"
    assert trusted["REMOTE_ADDR"] == "203.0.113.9"
    assert (trusted["SERVER_NAME"], trusted["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert untrusted["SCRIPT_NAME"] == ""
    assert untrusted["wsgi.url_scheme"] == "http"
    assert (untrusted["REMOTE_ADDR"], untrusted["REMOTE_PORT"]) == ("127.0.0.1", "50000")


def test_a_tls_server_says_https() -> None:
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(environ["wsgi.url_scheme"])
        start_response("200 OK", [])
        return [b""]

    with harness(app, secure=True) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
    assert seen == ["https"]


def test_streamed_response_and_write_callable() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"")  # nothing: no empty chunk on the wire
        yield b"yielded "
        yield b""
        yield b"end"

    with harness(app) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
        (response,) = conn.responses()
        assert response.body == b"written yielded end"
        assert response.header(b"transfer-encoding") == b"chunked"
        assert b"0\r\n\r\n" in conn.output
        assert not conn.closed


def test_head_sends_no_body() -> None:
    with harness(hello) as h:
        conn = h.connect().feed(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after"))
        h.until(lambda: conn.output.count(b"HTTP/1.1 200") == 2)
        assert b"hello /h" not in conn.output
        assert conn.output.endswith(b"hello /after")
        assert b"content-length: 8" in conn.output.lower()


# --- request bodies ------------------------------------------------------------


def test_body_that_came_whole_and_body_that_streams_in() -> None:
    got: list[tuple[bytes, bytes, list[bytes], bytes]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        first = stream.readline()
        chunk = stream.read(5)
        lines = stream.readlines()
        rest = stream.read()
        got.append((first, chunk, lines, rest))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    body = b"line one\nabcdefgh\nline three\nlast"
    with harness(app) as h:
        conn = h.connect().feed(post_head("/", len(body)) + body)
        h.until(answered(conn))
        # The same body in small reads, while the app already waits for it.
        conn = h.connect().feed(post_head("/", len(body)))
        h.until(lambda: h.wsgi.pool.active == 1)
        for i in range(0, len(body), 3):
            conn.feed(body[i : i + 3])
        h.until(answered(conn))
    expected = (b"line one\n", b"abcde", [b"fgh\n", b"line three\n", b"last"], b"")
    assert got == [expected, expected]


def test_chunked_body_iterated_by_lines() -> None:
    got: list[list[bytes]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        got.append(list(environ["wsgi.input"]))
        assert "CONTENT_LENGTH" not in environ
        start_response("200 OK", [])
        return []

    with harness(app) as h:
        conn = h.connect().feed(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nab\ncd\r\n",
            b"3\r\nef\n\r\n0\r\n\r\n",
        )
        h.until(answered(conn))
        assert conn.statuses() == [200]
    assert got == [[b"ab\n", b"cdef\n"]]


def test_expect_100_continue_is_answered_on_the_first_read() -> None:
    may_read = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        assert may_read.wait(WAIT)
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    with harness(app) as h:
        conn = h.connect().feed(post_head("/", 4, b"Expect: 100-continue\r\n"))
        h.until(lambda: h.wsgi.pool.active == 1)
        h.settle()
        assert conn.output == b""  # not before the app reads
        may_read.set()
        h.until(lambda: conn.output.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        conn.feed(b"data")
        h.until(lambda: conn.output.endswith(b"data"))
        assert conn.output.count(b"100 Continue") == 1


def test_upload_pauses_reading_while_the_app_does_not_read() -> None:
    may_read = threading.Event()
    sizes: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        assert may_read.wait(WAIT)
        stream = environ["wsgi.input"]
        total = 0
        while data := stream.read(16384):
            total += len(data)
        sizes.append(total)
        start_response("200 OK", [])
        return []

    total = 8 * HIGH_WATER
    with harness(app) as h:
        conn = h.connect().feed(post_head("/", total))
        h.until(lambda: h.wsgi.pool.active == 1)
        piece = b"x" * 16384
        sent = 0
        while conn.transport.reading and sent < total:
            conn.feed(piece)
            sent += len(piece)
        # Reading paused once the buffer passed the high-water mark, long before the end.
        assert not conn.transport.reading
        assert HIGH_WATER < sent <= HIGH_WATER + len(piece)
        may_read.set()
        while sent < total:
            h.until(lambda: conn.transport.reading)
            conn.feed(piece)
            sent += len(piece)
        h.until(answered(conn))
    assert sizes == [total]


def test_a_client_gone_mid_body_raises_from_read() -> None:
    errors: list[BaseException] = []
    closed = threading.Event()

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter(())

        def close(self) -> None:
            closed.set()

    def app(environ: Environ, start_response: StartResponse) -> Body:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.append(exc)
            raise
        return Body()

    with harness(app) as h:
        conn = h.connect().feed(post_head("/", 100), b"partial")
        h.until(lambda: h.wsgi.pool.active == 1)
        conn.lose()
        h.until(lambda: bool(errors))
        h.until(lambda: h.wsgi.pool.active == 0)
    assert "went away" in str(errors[0])
    assert not closed.is_set()  # the app raised before returning an iterable


def test_stalled_body_gets_408_and_the_app_a_disconnect() -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read(10)
        except OSError as exc:
            errors.append(exc)
            raise
        return []

    with harness(app, body_read_timeout=30) as h:
        conn = h.connect().feed(post_head("/", 10), b"abc")
        h.until(lambda: conn.deadline_in() is not None)
        conn.expire()
        h.until(lambda: bool(errors))
        assert conn.statuses() == [408]


# --- flow control and close() ----------------------------------------------------


def test_a_paused_transport_blocks_the_app_thread() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for i in range(50):
                produced.append(i)
                yield b"%d;" % i
        finally:
            closed.set()

    with harness(app) as h:
        conn = h.connect()
        conn.proto.pause_writing()  # the client reads nothing: the buffer is full
        conn.feed(get())
        h.until(lambda: b"0;" in conn.output)
        h.settle()
        # One piece written, the thread waits for the transport before the next.
        assert produced == [0]
        conn.proto.resume_writing()
        h.until(answered(conn))
        assert conn.responses()[0].body == b"".join(b"%d;" % i for i in range(50))
        assert closed.is_set()


def test_close_is_called_when_the_client_goes_away_mid_stream() -> None:
    closed = threading.Event()
    produced: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for i in range(1_000_000):
                produced.append(i)
                yield b"x" * 1000
        finally:
            closed.set()

    with harness(app) as h:
        conn = h.connect()
        conn.proto.pause_writing()
        conn.feed(get())
        h.until(lambda: produced == [0])
        conn.lose()
        h.until(closed.is_set)
        assert len(produced) <= 2
        assert h.stats.in_flight == 0


# --- errors ----------------------------------------------------------------------


def _failing(where: str) -> Callable[[Environ, StartResponse], Any]:
    def app(environ: Environ, start_response: StartResponse) -> Any:
        if where == "before":
            raise RuntimeError("boom before start_response")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if where == "between":
            raise RuntimeError("boom before the body")

        def body() -> Iterator[bytes]:
            yield b"first part"
            raise RuntimeError("boom mid-body")

        return body()

    return app


@pytest.mark.parametrize("where", ["before", "between"])
def test_an_error_before_the_headers_went_out_is_a_500(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    with harness(_failing(where)) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
        assert conn.statuses() == [500]
        h.until(lambda: conn.closed)
    assert f"boom {'before start_response' if where == 'before' else 'before the body'}" in (
        caplog.text
    )
    assert "Exception in WSGI application" in caplog.text


def test_an_error_after_the_headers_went_out_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with harness(_failing("after")) as h:
        conn = h.connect().feed(get())
        h.until(lambda: conn.closed)
        assert conn.output.startswith(b"HTTP/1.1 200 OK")
        assert b"first part" in conn.output
        assert not conn.output.endswith(b"0\r\n\r\n")  # truncated: no last chunk
    assert "boom mid-body" in caplog.text


def test_exc_info_replaces_headers_not_sent_and_reraises_after() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("app error")
        except ValueError:
            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        yield b"sorry"
        if environ["PATH_INFO"] == "/again":
            try:
                raise KeyError("late")
            except KeyError:
                start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises

    with harness(app) as h:
        conn = h.connect().feed(get("/"))
        h.until(answered(conn))
        (response,) = conn.responses()
        assert (response.status, response.body) == (503, b"sorry")
        assert response.header(b"retry-after") == b"1"
        conn = h.connect().feed(get("/again"))
        h.until(lambda: conn.closed)
        assert conn.output.startswith(b"HTTP/1.1 503")


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    with harness(app) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
        assert conn.statuses() == [500]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([b"12345678"], 500),  # more than the Content-Length: nothing went out yet
        (["text"], 500),  # not bytes
    ],
)
def test_a_body_that_breaks_http_is_a_500(body: list[Any], status: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[Any]:
        start_response("200 OK", [("Content-Length", "4")])
        return body

    with harness(app) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
        assert conn.statuses() == [status]


def test_fewer_bytes_than_content_length_ends_the_connection() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        yield b"short"

    with harness(app) as h:
        conn = h.connect().feed(get())
        h.until(lambda: conn.closed)
        assert conn.output.endswith(b"short")


def test_wsgi_errors_go_to_the_error_log(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["wsgi.errors"].write("something odd\nand more")
        environ["wsgi.errors"].flush()
        start_response("200 OK", [])
        return []

    with harness(app) as h:
        conn = h.connect().feed(get())
        h.until(answered(conn))
    lines = [r.getMessage() for r in caplog.records if r.name == "reuseport.wsgi"]
    assert lines == ["something odd", "and more"]


# --- the thread pool -----------------------------------------------------------


def test_more_requests_than_threads_wait_their_turn() -> None:
    release = threading.Event()
    running: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        running.append(environ["PATH_INFO"])
        assert release.wait(WAIT)
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    with harness(app, threads=2) as h:
        conns = [h.connect().feed(get(f"/{i}")) for i in range(5)]
        h.until(lambda: len(running) == 2)
        h.settle()
        pool = h.wsgi.pool
        assert (len(running), pool.active, len(pool.threads)) == (2, 5, 2)
        assert h.stats.in_flight == 5
        release.set()
        for conn in conns:
            h.until(answered(conn))
        assert sorted(running) == [f"/{i}" for i in range(5)]
        assert len(pool.threads) == 2


def test_limit_concurrency_counts_queued_and_running_app_calls() -> None:
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        assert release.wait(WAIT)
        start_response("200 OK", [])
        return []

    with harness(app, threads=1, limit_concurrency=2) as h:
        first = h.connect().feed(get())
        second = h.connect().feed(get())
        third = h.connect().feed(get())
        h.until(answered(third))
        assert third.statuses() == [503]
        release.set()
        h.until(answered(first))
        h.until(answered(second))
        assert first.statuses() == second.statuses() == [200]


# --- files ---------------------------------------------------------------------


def _file_app(path: str) -> Callable[[Environ, StartResponse], Any]:
    def app(environ: Environ, start_response: StartResponse) -> Any:
        file = open(path, "rb")  # noqa: SIM115 - the server closes it through the wrapper
        file.seek(int(environ["QUERY_STRING"] or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](file, 4096)

    return app


def test_file_wrapper_without_sendfile_reads_blocks(tmp_path: Any) -> None:
    data = os.urandom(600_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with harness(_file_app(str(path))) as h:
        assert not h.wsgi.native_sendfile  # uvloop has no loop.sendfile
        conn = h.connect().feed(get("/?100"))
        h.until(answered(conn))
        (response,) = conn.responses()
        assert response.header(b"content-length") == b"%d" % (len(data) - 100)
        assert response.body == data[100:]


def test_file_wrapper_around_other_objects_and_for_head(tmp_path: Any) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789" * 1000)
    closed: list[bool] = []

    class Stream(io.BytesIO):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def app(environ: Environ, start_response: StartResponse) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/memory":  # no file descriptor: iterated
            return environ["wsgi.file_wrapper"](Stream(b"in memory " * 100), 64)
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    with harness(app) as h:
        conn = h.connect().feed(get("/memory") + b"HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n")
        h.until(lambda: conn.output.count(b"HTTP/1.1 200") == 2)
        h.until(lambda: conn.output.endswith(b"content-length: 10000\r\n\r\n"))
        assert conn.responses()[0].body == b"in memory " * 100
        assert closed == [True]


def test_file_wrapper_uses_loop_sendfile_on_the_asyncio_loop(tmp_path: Any) -> None:
    data = os.urandom(3_000_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    calls: list[tuple[int, int]] = []

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        real = loop.sendfile

        async def spy(transport: Any, file: Any, offset: int = 0, count: int | None = None,
                      **kw: Any) -> int:  # fmt: skip
            calls.append((offset, count or 0))
            return await real(transport, file, offset, count, **kw)

        loop.sendfile = spy  # type: ignore[method-assign]
        async with _serving(_file_app(str(path))) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/?7", b"Connection: close\r\n"))
            raw = await reader.read(-1)
            writer.close()
            return raw

    with asyncio.Runner() as runner:
        raw = runner.run(asyncio.wait_for(main(), 20))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: %d" % (len(data) - 7) in head.lower()
    assert body == data[7:]
    assert calls == [(7, len(data) - 7)]


@contextlib.asynccontextmanager
async def _serving(app: Any, grace: float = 2.0, **config: Any) -> Any:
    ctx = WorkerContext(
        pid=os.getpid(), slot=0, generation=0, mode=Mode.SHARED, config=Config(**config)
    )
    hosted = WsgiApp(app, ctx)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        await hosted.serve([sock])
        yield sock.getsockname()[1]
    finally:
        try:
            await hosted.shutdown(grace)
        finally:
            sock.close()


# --- graceful shutdown ---------------------------------------------------------


def test_shutdown_waits_for_app_threads_and_names_one_that_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    started = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        started.set()
        if environ["PATH_INFO"] == "/stuck":
            release.wait(WAIT)
        start_response("200 OK", [])
        return [b"done"]

    async def main() -> bytes:
        async with _serving(app, grace=0.5) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/stuck"))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
            hosted_shutdown = asyncio.ensure_future(reader.read(-1))
        # _serving's shutdown (0.5 s) ran: the connection was aborted near its deadline.
        raw = await asyncio.wait_for(hosted_shutdown, WAIT)
        writer.close()
        return raw

    caplog.set_level(logging.WARNING, logger="reuseport.wsgi")
    try:
        with asyncio.Runner() as runner:
            raw = runner.run(asyncio.wait_for(main(), 20))
    finally:
        release.set()
    assert raw == b""
    assert "a WSGI app thread still runs GET /stuck after the graceful timeout" in caplog.text
