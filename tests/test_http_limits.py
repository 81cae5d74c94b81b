"""Limits that hold while bytes arrive, the body read timeout, and freeing a
closed connection without the cycle collector (issue 10).

Most tests drive one connection in-process (``http_harness``: a fake
transport, every read delivered by hand, time advanced by ``expire()``), so
they can say exactly after which read a limit fired.  The ``*_over_loopback``
tests replay the issue's hostile clients against a real server socket.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from asgi_apps import WAIT, Probe, parse_responses, run, serving, until, wait_for
from http_harness import Conn, Harness

from reuseport.config import Config

HEAD = b"GET / HTTP/1.1\r\nHost: t\r\n"
CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
FIELD_LIMIT = Config().limit_request_field_size
SLACK = 64  # separators a raw line may carry beyond its limit (protocol.py)


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(Probe()) as h:
        yield h


def refused(conn: Conn, status: int) -> None:
    """``conn`` answered ``status`` (only that) and is ending."""
    assert conn.statuses() == [status], conn.output[:300]
    assert conn.responses()[0].header(b"connection") == b"close"
    assert conn.transport.eof or conn.closed
    assert not conn.transport.after_close


def feed_until_answered(conn: Conn, pieces: Iterator[bytes]) -> int:
    """Feed pieces until something is written back; return the bytes fed by then."""
    fed = 0
    for piece in pieces:
        conn.feed(piece)
        fed += len(piece)
        if conn.output:
            return fed
    raise AssertionError(f"nothing answered after {fed} bytes")


def repeat(piece: bytes, times: int) -> Iterator[bytes]:
    for _ in range(times):
        yield piece


# --- one unfinished line, fed as it arrives --------------------------------------


@pytest.mark.parametrize("size", [1000, 3000, 65536])
def test_unfinished_header_value_is_refused_once_past_the_limit(
    harness: Harness, size: int
) -> None:
    # The issue: 600 KiB of one unfinished value was held, 100x the limit.
    conn = harness.connect().feed(HEAD + b"X-Big: ")
    parser = conn.proto.parser  # it holds the unfinished value
    fed = len(b"X-Big: ") + feed_until_answered(conn, repeat(b"v" * size, 600 * 1024 // size))
    refused(conn, 431)
    # In the read that took the line past its limit (a read longer than the
    # limit is parsed in pieces of the limit's length, and the answer comes
    # after the first piece past it), and the parser's buffer is dropped.
    assert fed - size <= FIELD_LIMIT + SLACK < fed
    assert conn.proto.parser is not parser
    assert conn.proto._headers == []


def test_unfinished_header_name_is_refused_once_past_the_limit(harness: Harness) -> None:
    conn = harness.connect().feed(HEAD)
    fed = feed_until_answered(conn, repeat(b"n" * 1000, 100))
    refused(conn, 431)
    assert fed <= FIELD_LIMIT + SLACK + 1000


def test_a_field_within_the_limit_spread_over_many_reads_is_fine(harness: Harness) -> None:
    value = b"v" * (FIELD_LIMIT - len(b"x-ok"))
    data = HEAD + b"X-Ok: " + value + b"\r\nConnection: close\r\n\r\n"
    conn = harness.connect().feed(*[data[i : i + 100] for i in range(0, len(data), 100)])
    assert conn.statuses() == [200]


def test_whitespace_padding_cannot_stretch_a_line(harness: Harness) -> None:
    # The padding is not part of the value httptools reports, so only the
    # line measure sees it; in one read or many.
    padded = HEAD + b"X-Pad:" + b" " * 20000 + b"v\r\n\r\n"
    refused(harness.connect().feed(padded), 431)
    refused(harness.connect().feed(*[padded[i : i + 512] for i in range(0, len(padded), 512)]), 431)
    spaced = b"GET" + b" " * 20000 + b"/ HTTP/1.1\r\nHost: t\r\n\r\n"
    refused(harness.connect().feed(spaced), 414)


def test_long_target_is_414_whole_or_in_pieces(harness: Harness) -> None:
    line = b"GET /" + b"a" * 9000
    refused(harness.connect().feed(line + b" HTTP/1.1\r\nHost: t\r\n\r\n"), 414)
    refused(harness.connect().feed(*[line[i : i + 700] for i in range(0, len(line), 700)]), 414)


def test_header_count_and_total(harness: Harness) -> None:
    many = HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
    conn = harness.connect()
    conn.feed(*[many[i : i + 64] for i in range(0, len(many), 64)])
    refused(conn, 431)  # the 100th field after Host is the 101st
    limits = {"limit_request_line": 100, "limit_request_fields": 4, "limit_request_field_size": 100}
    with Harness(Probe(), **limits) as small:
        # Four fields each within 100 bytes, yet more bytes than four fields
        # may take in all (the padding): the total is held too.
        fields = b"".join(b"X-%d:%s%s\r\n" % (i, b" " * 60, b"v" * 90) for i in range(4))
        refused(small.connect().feed(b"GET / HTTP/1.1\r\n", fields), 431)


def test_requests_after_a_large_body_in_the_same_read_are_measured(harness: Harness) -> None:
    # A head that begins right after a body in the same read: its first
    # piece is counted from the next one on, never falsely refused.
    body = b"b" * 40000  # no LF: the unfinished head cannot be told from the body
    conn = harness.connect()
    conn.feed(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        + b"GET /after HTTP/1.1\r\nHost: t\r\nX-Long: "
        + b"v" * 4000,
        b"v" * 4000 + b"\r\nConnection: close\r\n\r\n",
    )
    assert conn.statuses() == [200, 200]


# --- the trailer section and chunk-size lines ------------------------------------


def test_request_trailer_over_the_field_limit_is_refused(harness: Harness) -> None:
    # The issue: a 24 MiB trailer field was accepted and answered 200.
    conn = harness.connect().feed(CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: ")
    fed = feed_until_answered(conn, repeat(b"t" * 65536, 24 * 16))
    refused(conn, 431)
    assert fed <= FIELD_LIMIT + SLACK + 65536


def test_request_trailer_count_is_limited(harness: Harness) -> None:
    trailers = b"".join(b"X-T%d: 1\r\n" % i for i in range(101))
    conn = harness.connect().feed(CHUNKED + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")
    refused(conn, 431)


def test_request_trailers_within_limits_are_dropped_quietly(harness: Harness) -> None:
    trailers = b"".join(b"X-T%d: 1\r\n" % i for i in range(50))
    data = CHUNKED + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"
    conn = harness.connect().feed(*[data[i : i + 40] for i in range(0, len(data), 40)])
    (response,) = conn.responses()
    assert (response.status, response.body) == (200, b"hello")


@pytest.mark.parametrize(
    "trailer",
    [b"", b"X-T: 1\r\n", b"X-T: 1\r\nX-Slow: dri"],
    ids=["before-any-field", "after-a-field", "inside-a-field"],
)
def test_slow_trailer_section_gets_the_header_timeout(harness: Harness, trailer: bytes) -> None:
    conn = harness.connect().feed(CHUNKED + b"5\r\nhello\r\n0\r\n" + trailer)
    # The app waits for the end of the body: the trailer section's own
    # header-read deadline (10 s) comes before the body's (30 s).
    due = conn.deadline_in()
    assert due is not None
    assert due <= harness.server.header_timeout
    conn.expire()
    refused(conn, 408)


@pytest.mark.parametrize(
    "size_line",
    [b"5;" + b"e" * 20000, b"5;a=" + b"v" * 20000, b"0" * 20000 + b"5"],
    ids=["extension-name", "extension-value", "leading-zeros"],
)
def test_over_long_chunk_size_line_is_refused(harness: Harness, size_line: bytes) -> None:
    data = CHUNKED + size_line + b"\r\nhello\r\n0\r\n\r\n"
    refused(harness.connect().feed(data), 400)
    refused(harness.connect().feed(*[data[i : i + 1000] for i in range(0, len(data), 1000)]), 400)


def test_chunk_extensions_within_the_limit_are_accepted(harness: Harness) -> None:
    data = CHUNKED + b'5;name=value;q="x y"\r\nhello\r\n0;last\r\n\r\n'
    conn = harness.connect().feed(data[:70], data[70:])
    assert [r.body for r in conn.responses()] == [b"hello"]


def chunked_body(sizes: list[int]) -> tuple[bytes, bytes]:
    """A chunked encoding of a body with chunks of ``sizes``, and the body."""
    body = bytes(i % 251 for i in range(sum(sizes)))
    out, at = [], 0
    for n, size in enumerate(sizes):
        ext = b";n=%d" % n if n % 3 == 0 else b""
        out.append(b"%x%s\r\n%s\r\n" % (size, ext, body[at : at + size]))
        at += size
    return b"".join(out), body


@pytest.mark.parametrize("read", [1000, 65536, 262144])
def test_large_chunked_body_arrives_whole_in_any_reads(harness: Harness, read: int) -> None:
    # Reads longer than a piece go to the parser chunk by chunk (whole chunks
    # at once when their size lines can be vouched for): the body must come
    # out the same.
    sizes = [1, 17, 8190, 8191, 20000, 3, 65536, 100000, *range(1, 4000, 397)]
    encoded, body = chunked_body(sizes)
    data = CHUNKED + encoded + b"0\r\nX-Sum: 1\r\n\r\n"
    conn = harness.connect().feed(*[data[i : i + read] for i in range(0, len(data), read)])
    (response,) = conn.responses()
    assert response.body == body


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        (b"5;e=" + b"v" * 9000 + b"\r\nhello\r\n0\r\n\r\n", 400),
        (b"0" * 9000 + b"5\r\nhello\r\n0\r\n\r\n", 400),
        (b"0\r\nX-T: " + b"t" * 9000 + b"\r\n\r\n", 431),
    ],
    ids=["extension", "zeros", "trailer"],
)
def test_over_long_line_after_good_chunks_in_the_same_read(
    harness: Harness, tail: bytes, status: int
) -> None:
    encoded, _ = chunked_body([1000] * 20)
    refused(harness.connect().feed(CHUNKED + encoded + tail), status)


# --- pipelining: what waits is raw bytes, not parsed requests ---------------------


def test_a_pipelining_client_gets_one_piece_of_requests_parsed_ahead() -> None:
    request = b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n"
    probe = Probe()
    with Harness(probe) as h:
        conn = h.connect().feed(request * (250_000 // len(request)))
        # Before: the whole read (7,800 requests, ~9.5 MB of request objects).
        assert len(conn.proto.queue) <= h.server.piece_size // len(request)
        assert not conn.transport.reading
        probe.event("release").set()
        h.settle(2000)
        assert len(conn.responses()) == 250_000 // len(request)
        assert conn.transport.reading


# --- the header read timeout ----------------------------------------------------


def test_header_read_timeout_runs_only_while_a_head_is_unfinished() -> None:
    # Set when a read leaves a head unfinished (not by every head: protocol.py).
    with Harness(Probe(), header_read_timeout=7.0, timeout_keep_alive=20.0) as h:
        conn = h.connect()
        assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)  # from accept
        conn.feed(HEAD + b"\r\n")
        assert conn.deadline_in() == pytest.approx(20.0, abs=0.5)  # idle, kept alive
        conn.feed(b"GET / HT", b"TP/1.1\r\nHo")  # a head begins, then goes on
        assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)
        conn.feed(b"st: t\r\n\r\n")
        assert conn.statuses() == [200, 200]
        assert conn.deadline_in() == pytest.approx(20.0, abs=0.5)
        # One read: a whole request, then the head of the next one.
        conn.feed(HEAD + b"\r\n" + HEAD)
        assert conn.statuses() == [200] * 3
        assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)
        conn.feed(b"\r\n")
        assert conn.deadline_in() == pytest.approx(20.0, abs=0.5)
        # A read parsed in pieces, the head still unfinished at its end.
        fields = b"".join(b"X-%d: %b\r\n" % (i, b"v" * 4000) for i in range(3))
        conn.feed(HEAD + fields)
        assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)
        conn.feed(b"\r\n")
        assert conn.statuses() == [200] * 5
        # The head complete but not the body: no header deadline (the body's
        # runs only while the app waits for it, and this one does not).
        conn.feed(b"POST /nobody HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert conn.statuses() == [200] * 6
        assert conn.deadline_in() == pytest.approx(20.0, abs=0.5)
        assert not h.errors


# --- the body read timeout ------------------------------------------------------


def test_stalled_body_is_answered_408_when_nothing_was_sent() -> None:
    with Harness(Probe(), body_read_timeout=7.0) as h:
        conn = h.connect().feed(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf."
        )
        assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)
        conn.expire()
        refused(conn, 408)
        assert h.stats.in_flight == 1  # the app saw a disconnect; counted at close
        conn.lose()
        assert h.stats.in_flight == 0
        assert not h.errors


def test_every_body_byte_restarts_the_body_read_timeout() -> None:
    with Harness(Probe(), body_read_timeout=7.0) as h:
        conn = h.connect().feed(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
        for byte in (b"a", b"b"):
            assert conn.deadline_in() == pytest.approx(7.0, abs=0.5)
            conn.feed(byte)
        conn.feed(b"c")
        assert conn.statuses() == [200]
        assert conn.deadline_in() == pytest.approx(h.server.keep_alive_timeout, abs=0.5)


def test_stalled_body_after_the_response_started_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while (await receive()).get("more_body"):
            pass

    with Harness(app, body_read_timeout=3.0) as h:
        conn = h.connect().feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert b"early" in conn.output
        conn.expire()
        assert conn.closed
        assert b"408" not in conn.output


def test_body_read_timeout_only_while_the_app_waits_for_body() -> None:
    probe = Probe()
    with Harness(probe, body_read_timeout=3.0) as h:
        # The app answers without reading: no body deadline, only keep-alive.
        conn = h.connect().feed(b"POST /nobody HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert conn.statuses() == [200]
        assert conn.deadline_in() == pytest.approx(h.server.keep_alive_timeout, abs=0.5)
        # A complete body, then the app waits for a disconnect: no deadline.
        conn = h.connect().feed(b"GET /disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
        assert probe.event("disconnect-entered").is_set()
        assert conn.deadline_in() is None
    with Harness(Probe(), body_read_timeout=0) as h:
        conn = h.connect().feed(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert conn.deadline_in() is None


def test_stalled_body_is_408_over_loopback() -> None:
    async def main() -> None:
        async with serving(Probe(), body_read_timeout=0.3, header_read_timeout=30) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf.")
                (response,) = parse_responses(await wait_for(reader.read()))
                assert response.status == 408
            finally:
                writer.close()
            assert srv.hosted.http is not None
            await wait_for(until(lambda: not srv.hosted.http.live))  # type: ignore[union-attr]

    run(main())


# --- a closed connection is freed without the cycle collector ---------------------


def test_closed_connection_is_freed_without_gc(harness: Harness) -> None:
    # The issue: the protocol and its parser referenced each other, so every
    # closed connection (and the header bytes it held) waited for a GC pass.
    conns = [
        harness.connect().feed(HEAD + b"\r\n"),  # served, idle
        harness.connect().feed(HEAD + b"X-Big: " + b"v" * 4000),  # unfinished head
        harness.connect().feed(HEAD + b"X-Big: " + b"v" * 20000),  # refused, lingering
        harness.connect().feed(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nab"),
    ]
    refs = [weakref.ref(conn.proto) for conn in conns]
    gc.disable()
    try:
        for conn in conns:
            conn.lose()
        harness.settle()
        del conn, conns
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


def test_closed_connection_is_freed_without_gc_over_loopback() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            http = srv.hosted.http
            assert http is not None
            refs = []
            for data, answered in (
                (HEAD + b"\r\n", True),  # served, kept alive
                (HEAD + b"X-Big: " + b"v" * 20000, True),  # refused, lingering
                (HEAD + b"X-Half: ", False),  # unfinished head
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                try:
                    writer.write(data)
                    if answered:
                        await wait_for(reader.readuntil(b"\r\n\r\n"))
                    await wait_for(until(lambda: len(http.live) == 1))
                    refs.append(weakref.ref(next(iter(http.live))))
                finally:
                    writer.close()
                    await writer.wait_closed()
                await wait_for(until(lambda: not http.live))
            await asyncio.sleep(0)  # the transports drop their protocols after connection_lost
            assert [ref() for ref in refs] == [None] * len(refs)

    gc.disable()
    try:
        run(main())
    finally:
        gc.enable()


# --- the hostile clients, over real sockets -------------------------------


def test_fifty_unfinished_600k_values_are_all_refused_over_loopback() -> None:
    async def hostile(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEAD + b"X-Big: ")
            try:
                for _ in range(600 // 64):
                    writer.write(b"v" * 65536)
                    await writer.drain()
            except ConnectionError:
                pass  # refused and closed under us: read what was said
            return await wait_for(reader.read())
        finally:
            writer.close()

    async def main() -> None:
        async with serving(Probe(), header_read_timeout=30) as srv:
            answers = await wait_for(
                asyncio.gather(*(hostile(srv.port) for _ in range(50))), 4 * WAIT
            )
            assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)

    run(main(), timeout=40)


def test_24_mib_trailer_is_refused_over_loopback() -> None:
    async def main() -> None:
        async with serving(Probe(), header_read_timeout=30) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: ")
                try:
                    for _ in range(24 * 16):
                        writer.write(b"t" * 65536)
                        await writer.drain()
                except ConnectionError:
                    pass
                (response,) = parse_responses(await wait_for(reader.read()))
                assert response.status == 431
            finally:
                writer.close()

    run(main(), timeout=40)
