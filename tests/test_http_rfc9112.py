"""What RFC 9112 (and 9110) forbid in a request, refused: the table in docs/http.md.

Each case of ``REFUSED`` is one row (or one variant of a row) of that table;
``ACCEPTED`` holds the near misses that must still be served.  Cases run
in-process (``http_harness``), whole and split into 7-byte reads; the
issue's own reports also run over a real socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from asgi_apps import Probe, parse_responses, run, serving, wait_for
from http_harness import Conn, Harness

GET = b"GET / HTTP/1.1\r\nHost: t\r\n"
POST_CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"

REFUSED: dict[str, tuple[bytes, int]] = {
    # request line (RFC 9112 section 3, 2.3)
    "http09": (b"GET /\r\n", 400),
    "http09-with-fields": (b"GET /\r\nHost: t\r\n\r\n", 400),
    "rtsp-line": (b"GET / RTSP/1.0\r\nHost: t\r\n\r\n", 400),
    "rtsp-method": (b"DESCRIBE / RTSP/1.0\r\nHost: t\r\n\r\n", 400),
    "version-1.2": (b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 400),
    "version-2.0": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "lowercase-method": (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "control-in-target": (b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "fragment-in-target": (b"GET /page#top HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "asterisk-not-options": (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "target-too-long": (b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "line-padded": (b"GET" + b" " * 9000 + b"/ HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    # Host (RFC 9112 section 3.2)
    "host-missing": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "host-twice": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host-twice-same": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    "host-twice-http10": (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host-with-space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host-with-path": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "host-with-userinfo": (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    # field lines (RFC 9112 sections 2.2, 5.1, 5.2; RFC 9110 section 5.5)
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    "tab-before-colon": (b"GET / HTTP/1.1\r\nHost\t: t\r\n\r\n", 400),
    "space-before-first-field": (b"GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400),
    "empty-field-name": (GET + b": v\r\n\r\n", 400),
    "obs-fold": (GET + b"X: a\r\n b\r\n\r\n", 400),
    "obs-fold-tab": (GET + b"X: a\r\n\tb\r\n\r\n", 400),
    "nul-in-value": (GET + b"X: a\x00b\r\n\r\n", 400),
    "cr-in-value": (GET + b"X: a\rb\r\n\r\n", 400),
    "lf-in-value": (GET + b"X: a\nY: b\r\n\r\n", 400),
    "control-in-value": (GET + b"X: a\x01b\r\n\r\n", 400),
    "bare-lf-lines": (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    # limits (RFC 6585 section 5)
    "field-too-long": (GET + b"X: " + b"v" * 8200 + b"\r\n\r\n", 431),
    "field-padded": (GET + b"X:" + b" " * 9000 + b"v\r\n\r\n", 431),
    "too-many-fields": (GET + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n", 431),
    # framing (RFC 9112 sections 6.1, 6.3; RFC 9110 section 8.6)
    "http10-transfer-encoding": (
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "http10-transfer-encoding-keep-alive": (
        b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /next HTTP/1.0\r\n\r\n",
        400,
    ),
    "length-and-chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunked-and-length": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5"
        b"\r\n\r\n0\r\n\r\n",
        400,
    ),
    "coding-not-chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    ),
    "chunked-not-last": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunked-twice": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "length-twice-same": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "length-twice-different": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "length-list": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "length-not-a-number": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\n", 400),
    "length-negative": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    "length-plus": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
    "length-overflow": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n",
        400,
    ),
    # chunked bodies (RFC 9112 section 7.1)
    "chunk-size-not-hex": (POST_CHUNKED + b"zz\r\n", 400),
    "chunk-size-negative": (POST_CHUNKED + b"-1\r\n", 400),
    "chunk-size-0x": (POST_CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-space": (POST_CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (POST_CHUNKED + b"f" * 17 + b"\r\n", 400),
    "chunk-size-bare-lf": (POST_CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-too-long": (POST_CHUNKED + b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    "chunk-extension-control": (POST_CHUNKED + b"5;a=b\x00\r\nhello\r\n0\r\n\r\n", 400),
    # over-long chunk-size lines (RFC 9112 section 7.1.1)
    "chunk-extension-too-long": (POST_CHUNKED + b"5;e=" + b"v" * 9000 + b"\r\nhello\r\n", 400),
    "chunk-size-zeros-too-long": (POST_CHUNKED + b"0" * 9000 + b"5\r\nhello\r\n", 400),
    # trailers (RFC 9112 section 7.1.2; RFC 9110 section 6.5.1)
    "trailer-framing-field": (POST_CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n", 400),
    "trailer-obs-fold": (POST_CHUNKED + b"0\r\nA: b\r\n c\r\n\r\n", 400),
    "trailer-too-long": (POST_CHUNKED + b"0\r\nX: " + b"t" * 9000 + b"\r\n\r\n", 431),
    "too-many-trailers": (
        POST_CHUNKED + b"0\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
        431,
    ),
}

ACCEPTED: dict[str, bytes] = {
    "empty-host": b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "host-with-port-and-ip-literal": b"GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
    "http10-without-host": b"GET / HTTP/1.0\r\n\r\n",
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    "absolute-form": b"GET http://t/a?b=1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "obs-text-in-value": GET + b"X: caf\xc3\xa9\r\n\r\n",
    "padding-within-limits": GET + b"X:" + b" " * 60 + b"v" * 8000 + b"\r\n\r\n",
    "empty-lines-before-request": b"\r\n\r\n" + GET + b"\r\n",
    "chunk-extensions": POST_CHUNKED + b'5;a=b;q="x y"\r\nhello\r\n0;end\r\n\r\n',
    "trailers": POST_CHUNKED + b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n",
    "length-with-whitespace": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5 \r\n\r\nhello",
    "uppercase-chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(Probe()) as h:
        yield h


def deliveries(data: bytes) -> list[list[bytes]]:
    """The request whole, and split into 7-byte reads."""
    return [[data], [data[i : i + 7] for i in range(0, len(data), 7)]]


def assert_refused(conn: Conn, status: int) -> None:
    (response,) = conn.responses()
    assert response.status == status, conn.output[:200]
    assert response.header(b"connection") == b"close"
    assert conn.transport.eof or conn.closed
    assert not conn.transport.after_close


@pytest.mark.parametrize(("data", "status"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(harness: Harness, data: bytes, status: int) -> None:
    for pieces in deliveries(data):
        conn = harness.connect().feed(*pieces)
        assert_refused(conn, status)
        # At once: not at the header-read timeout, and no app call for it.
        assert conn.deadline_in() is None or conn.deadline_in() <= 2.0
    assert harness.stats.requests == 0
    assert not harness.errors


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(harness: Harness, data: bytes) -> None:
    for pieces in deliveries(data):
        conn = harness.connect().feed(*pieces)
        assert conn.statuses() == [200], conn.output[:200]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
@pytest.mark.parametrize(
    "field",
    [
        b"",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"Proxy-Connection: keep-alive\r\n",
    ],
    ids=["none", "keep-alive", "close", "proxy-keep-alive"],
)
def test_scope_version_and_keep_alive_follow_the_request(
    harness: Harness, version: bytes, field: bytes
) -> None:
    # The version is known without asking the parser when llhttp keeps the
    # connection alive and no Connection field came (protocol.py): each
    # combination must still give the request's own version and persistence.
    probe = harness.server.app
    assert isinstance(probe, Probe)
    conn = harness.connect().feed(
        b"GET /scope HTTP/" + version + b"\r\nHost: t\r\n" + field + b"\r\n"
    )
    assert conn.statuses() == [200]
    assert probe.scopes[-1]["http_version"] == version.decode()
    keep = b"close" not in field and (version == b"1.1" or b"keep-alive" in field)
    assert conn.closed != keep, (version, field, conn.output[:300])


def test_http10_transfer_encoding_refuses_the_requests_after_it(harness: Harness) -> None:
    # RFC 9112 section 6.1: faulty framing, so nothing after it can be trusted.
    data = REFUSED["http10-transfer-encoding-keep-alive"][0]
    conn = harness.connect().feed(GET + b"\r\n" + data)
    assert conn.statuses() == [200, 400]
    assert harness.stats.requests == 1


def test_refusal_comes_after_the_responses_already_due() -> None:
    probe = Probe()
    with Harness(probe) as h:
        conn = h.connect().feed(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        assert conn.output == b""
        probe.event("release").set()
        h.settle()
        assert conn.statuses() == [200, 400]


# --- the reports, over a real socket -------------------------------------


def test_http10_with_transfer_encoding_over_loopback() -> None:
    # Before: kept alive, and the pipelined request after it was served.
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(REFUSED["http10-transfer-encoding-keep-alive"][0])
                responses = parse_responses(await wait_for(reader.read()))
                assert [r.status for r in responses] == [400]
            finally:
                writer.close()

    run(main())


@pytest.mark.parametrize("case", ["host-missing", "host-twice"])
def test_host_over_loopback(case: str) -> None:
    # Before: both answered 200.
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(REFUSED[case][0])
                (response,) = parse_responses(await wait_for(reader.read()))
                assert response.status == 400
            finally:
                writer.close()

    run(main())


def test_http09_is_refused_at_once_over_loopback() -> None:
    # Before: no answer until the header-read timeout closed the connection.
    async def main() -> None:
        async with serving(Probe(), header_read_timeout=60) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET /\r\n")
                (response,) = parse_responses(await wait_for(reader.read()))
                assert response.status == 400
            finally:
                writer.close()

    run(main())
