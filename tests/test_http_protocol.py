"""The HTTP/1.1 protocol over real sockets, driven with raw bytes and httpx."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from typing import Any

import httpx
import pytest
from asgi_apps import (
    WAIT,
    Asgi2App,
    Probe,
    exchange,
    parse_responses,
    run,
    serving,
    until,
    wait_for,
)

from reuseport.http.flow import HIGH_WATER

GET = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
CLOSE = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def get(path: str, *, close: bool = False) -> bytes:
    return (CLOSE if close else GET) % path.encode()


async def read_response_head(reader: asyncio.StreamReader) -> bytes:
    return await wait_for(reader.readuntil(b"\r\n\r\n"))


# --- persistent connections, pipelining, framing ------------------------------


def test_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            data = (
                get("/stream")
                + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                + get("/first")
                + get("/last", close=True)
            )
            responses = parse_responses(await exchange(srv.port, data))
            assert [r.body for r in responses] == [b"one,two,three", b"hello", b"/first", b"/last"]
            assert all(r.complete and r.status == 200 for r in responses)
            assert responses[-1].header(b"connection") == b"close"
            assert responses[0].header(b"connection") is None
            assert srv.ctx.stats.requests == 4

    run(main())


def test_keep_alive_off_answers_what_was_received_and_the_last_says_close() -> None:
    """--max-requests turns keep-alive off: pipelined requests already here are all answered."""

    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(get("/wait") + get("/second") + get("/third"))
                await wait_for(probe.event("wait-entered").wait())
                assert srv.ctx.stats.in_flight == 3  # one read, all parsed before the app runs
                srv.hosted.set_keep_alive(False)
                probe.event("release").set()
                responses = parse_responses(await wait_for(reader.read()))  # then it closes
            finally:
                writer.close()
            assert [r.body for r in responses] == [b"released", b"/second", b"/third"]
            assert [r.header(b"connection") for r in responses] == [None, None, b"close"]

    run(main())


def test_keep_alive_off_closes_an_idle_connection_after_its_next_answer() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(get("/first"))
                first = await read_response_head(reader)
                assert b"connection: close" not in first.lower()
                await wait_for(reader.readexactly(len(b"/first")))
                srv.hosted.set_keep_alive(False)  # idle: not closed under its client
                writer.write(get("/next"))
                (answer,) = parse_responses(await wait_for(reader.read()))
            finally:
                writer.close()
            assert (answer.status, answer.body) == (200, b"/next")
            assert answer.header(b"connection") == b"close"

    run(main())


def test_keep_alive_connection_serves_many_requests() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv, httpx.AsyncClient() as client:
            for i in range(20):
                response = await client.get(f"{srv.url}/n{i}")
                assert response.text == f"/n{i}"
            assert srv.ctx.stats.accepted == 1
            assert srv.ctx.stats.requests == 20

    run(main())


def test_chunked_request_body_and_request_trailers_are_dropped() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            data = (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
                b"POST /scope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Other: 1\r\n\r\n"
            )
            first, second = parse_responses(await exchange(srv.port, data))
            assert first.body == b"hello world"
            scope = json.loads(second.body)
            names = [name for name, _ in scope["headers"]]
            assert "x-trailer" not in names
            assert "x-other" not in names

    run(main())


def test_response_without_length_is_chunked_or_sized() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            data = get("/stream") + get("/no-length") + get("/status-204", close=True)
            raw = await exchange(srv.port, data)
            stream, single, empty = parse_responses(raw)
            assert stream.header(b"transfer-encoding") == b"chunked"
            assert stream.body == b"one,two,three"
            assert single.header(b"content-length") == b"11"
            assert single.header(b"transfer-encoding") is None
            assert single.body == b"single shot"
            assert empty.status == 204
            assert empty.header(b"transfer-encoding") is None
            assert empty.header(b"content-length") is None

    run(main())


def test_http10_gets_close_delimited_body_and_no_keep_alive() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(srv.port, b"GET /stream HTTP/1.0\r\n\r\n")
            assert b"transfer-encoding" not in raw.lower()
            assert raw.endswith(b"\r\n\r\none,two,three")
            assert b"connection: close" in raw

            raw = await exchange(srv.port, b"GET /plain HTTP/1.0\r\n\r\n")
            assert raw.endswith(b"/plain")

    run(main())


def test_http10_keep_alive_when_asked() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                head = await read_response_head(reader)
                assert b"connection: keep-alive" in head.lower()
                assert await wait_for(reader.readexactly(4)) == b"/one"
                writer.write(b"GET /two HTTP/1.0\r\n\r\n")
                rest = await wait_for(reader.read())
                assert rest.endswith(b"/two")
            finally:
                writer.close()

    run(main())


def test_expect_100_continue_is_sent_when_app_reads() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(
                    b"POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                await wait_for(probe.event("continue-entered").wait())
                # The app has not asked for the body yet: no 100 may be sent.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(1), 0.2)
                probe.event("continue-read").set()
                assert await read_response_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(b"body")
                head = await read_response_head(reader)
                assert head.startswith(b"HTTP/1.1 200 OK")
                assert await wait_for(reader.readexactly(4)) == b"body"
            finally:
                writer.close()

    run(main())


def test_expect_100_without_reading_closes_after_answer() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(
                srv.port,
                b"POST /nobody HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\n\r\n",
            )
            (response,) = parse_responses(raw)
            assert b"100 Continue" not in raw
            assert response.body == b"ignored your body"
            assert response.header(b"connection") == b"close"

    run(main())


def test_head_sends_headers_but_no_body() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"HEAD /sized HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after", close=True))
                head = await read_response_head(reader)
                assert b"content-length: 6" in head
                assert b"content-type: text/plain" in head
                # The next bytes must be the second response, not a body.
                (after,) = parse_responses(await wait_for(reader.read()))
                assert after.body == b"/after"
            finally:
                writer.close()

    run(main())


def test_head_of_streamed_response_has_no_body() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n" + get("/x", close=True))
                head = await read_response_head(reader)
                assert head.startswith(b"HTTP/1.1 200 OK")
                (after,) = parse_responses(await wait_for(reader.read()))
                assert after.body == b"/x"
            finally:
                writer.close()

    run(main())


@pytest.mark.parametrize("path", ["/head-first", "/head-later"])
def test_head_goes_out_while_the_app_waits_before_its_body(path: str) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(get(path, close=True))
                head = await read_response_head(reader)  # before the body is released
                assert head.startswith(b"HTTP/1.1 200 OK")
                assert b"transfer-encoding: chunked" in head
                probe.event("head-release").set()
                (response,) = parse_responses(head + await wait_for(reader.read()))
                assert response.body == b"late body"
            finally:
                writer.close()

    run(main())


# --- headers ------------------------------------------------------------------


def test_date_and_server_headers() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            plain, own = parse_responses(
                await exchange(srv.port, get("/p") + get("/server-header", close=True))
            )
            assert plain.header(b"server") == b"reuseport"
            assert re.fullmatch(
                rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", plain.header(b"date") or b""
            )
            assert own.header_count(b"server") == 1
            assert own.header(b"server") == b"custom"
            assert own.header_count(b"date") == 1
            assert own.header(b"date") == b"Mon, 01 Jan 2024 00:00:00 GMT"
        async with serving(Probe(), server_header=False, date_header=False) as srv:
            (plain,) = parse_responses(await exchange(srv.port, get("/p", close=True)))
            assert plain.header(b"server") is None
            assert plain.header(b"date") is None

    run(main())


def test_header_with_newline_from_app_is_refused() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nevil: 1")]}
        )
        await send({"type": "http.response.body", "body": b"x"})

    async def main() -> None:
        async with serving(app, lifespan="off") as srv:
            raw = await exchange(srv.port, get("/", close=True))
            assert raw.startswith(b"HTTP/1.1 500 ")
            assert b"evil" not in raw

    run(main())


# --- malformed and oversized input ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x00\x01\x02 garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "bad-length", "bad-header", "long-line", "many-headers", "big-header"],
)
def test_bad_requests_get_an_error_and_close(data: bytes, status: int) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(srv.port, data)
            (response,) = parse_responses(raw)
            assert response.status == status
            assert response.header(b"connection") == b"close"
            assert srv.ctx.stats.in_flight == 0

    run(main())


def test_unterminated_header_spread_over_reads_is_refused() -> None:
    async def main() -> None:
        async with serving(Probe(), limit_request_field_size=100, limit_request_fields=4) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nX-Endless: ")
                for _ in range(200):  # 20 kB, well past the 100-byte field limit
                    writer.write(b"v" * 100)
                await writer.drain()
                raw = await wait_for(reader.read())
                assert raw.startswith(b"HTTP/1.1 431 ")
            finally:
                writer.close()

    run(main())


def test_error_after_good_pipelined_request_answers_both_in_order() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(srv.port, get("/stream") + b"BROKEN\x00\r\n\r\n")
            first, second = parse_responses(raw)
            assert first.body == b"one,two,three"
            assert second.status == 400

    run(main())


# --- timeouts -------------------------------------------------------------------


def test_keep_alive_timeout_closes_idle_connection() -> None:
    async def main() -> None:
        async with serving(Probe(), timeout_keep_alive=0.2) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(get("/a"))
                await read_response_head(reader)
                assert await wait_for(reader.readexactly(2)) == b"/a"
                assert await wait_for(reader.read(), 3.0) == b""  # closed by the server
            finally:
                writer.close()

    run(main())


def test_header_read_timeout_stops_slowloris() -> None:
    async def main() -> None:
        async with serving(Probe(), header_read_timeout=0.3) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
                for _ in range(3):
                    writer.write(b"X-Drip: 1\r\n")  # keeps trickling, never finishes
                    await writer.drain()
                assert await wait_for(reader.read(), 3.0) == b""
            finally:
                writer.close()
            # A connection that never sends anything is closed the same way.
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                assert await wait_for(reader.read(), 3.0) == b""
            finally:
                writer.close()

    run(main())


# --- concurrency limit, app errors, disconnects --------------------------------


def test_limit_concurrency_answers_503() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe, limit_concurrency=1) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(get("/wait", close=True))
                await wait_for(probe.event("wait-entered").wait())
                (busy,) = parse_responses(await exchange(srv.port, get("/other")))
                assert busy.status == 503
                probe.event("release").set()
                (held,) = parse_responses(await wait_for(reader.read()))
                assert held.status == 200
                assert held.body == b"released"
            finally:
                writer.close()

    run(main())


@pytest.mark.parametrize("path", ["/error", "/error-sync", "/silent"])
def test_app_error_before_start_gives_500(path: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            (response,) = parse_responses(await exchange(srv.port, get(path)))
            assert response.status == 500
            assert response.header(b"connection") == b"close"
            assert srv.ctx.stats.in_flight == 0

    with caplog.at_level(logging.ERROR, logger="reuseport.http"):
        run(main())
    records = [r for r in caplog.records if r.name == "reuseport.http"]
    assert records, "the app error must be logged on reuseport.http"
    if path != "/silent":
        assert records[0].exc_info is not None
        assert "boom" in str(records[0].exc_info[1])


def test_app_error_after_start_closes_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(srv.port, get("/error-after") + get("/never"))
            assert raw.startswith(b"HTTP/1.1 200 OK")
            assert b"partial" in raw
            assert not raw.endswith(b"0\r\n\r\n")  # no clean end of the chunked body
            assert b"/never" not in raw

    with caplog.at_level(logging.ERROR, logger="reuseport.http"):
        run(main())
    assert any("boom after start" in str(r.exc_info and r.exc_info[1]) for r in caplog.records)


def test_client_disconnect_reaches_app() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(get("/disconnect"))
            await writer.drain()
            await wait_for(probe.event("disconnect-entered").wait())
            writer.close()
            await wait_for(probe.event("disconnect-seen").wait())
            assert probe.messages == [{"type": "http.disconnect"}]
            await wait_for(probe.event("send-failed").wait())
            assert isinstance(probe.errors[0], OSError)
            await wait_for(until(lambda: srv.ctx.stats.connections == 0))
            assert srv.ctx.stats.in_flight == 0

    run(main())


def test_receive_after_response_is_disconnect() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            (response,) = parse_responses(
                await exchange(srv.port, get("/after-response", close=True))
            )
            assert response.body == b"done"
            await wait_for(probe.event("after-response").wait())
            assert probe.messages == [{"type": "http.disconnect"}]

    run(main())


def test_response_trailers_are_refused_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            raw = await exchange(srv.port, get("/trailers") + get("/next"))
            (response,) = parse_responses(raw)
            assert response.body == b"with trailers"
            assert b"x-t" not in raw

    with caplog.at_level(logging.WARNING, logger="reuseport.http"):
        run(main())
    assert any("trailers" in r.getMessage() for r in caplog.records)


def test_upgrade_request_is_answered_as_http_then_closed() -> None:
    """With --ws none (test_websocket.py has the WebSocket side)."""

    async def main() -> None:
        async with serving(Probe(), ws="none") as srv:
            raw = await exchange(
                srv.port,
                b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            (response,) = parse_responses(raw)
            assert response.status == 200
            assert response.header(b"connection") == b"close"

    run(main())


# --- flow control ----------------------------------------------------------------


def test_slow_app_pauses_reading_of_large_body() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            size = 4 * 1024 * 1024
            data = b"POST /slow-body HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % size
            raw = await exchange(srv.port, data + b"Connection: close\r\n\r\n" + b"b" * size)
            (response,) = parse_responses(raw)
            total, peak = map(int, response.body.split())
            assert total == size
            # Never more than the high-water mark plus one read was buffered.
            assert peak <= HIGH_WATER + 512 * 1024

    run(main())


def test_slow_client_makes_send_wait() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", srv.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(get("/big", close=True))
                # While we do not read, the app must be held in send().
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(probe.event("big-done").wait(), 0.3)
                raw = await wait_for(reader.read(), 10.0)
                assert len(raw) > 128 * 65536
                assert probe.event("big-done").is_set()
            finally:
                writer.close()

    run(main())


# --- scope -----------------------------------------------------------------------


def test_scope_is_complete() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            data = (
                b"GET /a%20b/%C3%BC/scope?x=1&y=%20 HTTP/1.1\r\nHost: example\r\n"
                b"X-Custom: Value\r\nConnection: close\r\n\r\n"
            )
            (response,) = parse_responses(await exchange(srv.port, data))
            scope = json.loads(response.body)
            assert scope["type"] == "http"
            assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
            assert scope["http_version"] == "1.1"
            assert scope["method"] == "GET"
            assert scope["scheme"] == "http"
            assert scope["path"] == "/a b/\u00fc/scope"
            assert scope["raw_path"] == "/a%20b/%C3%BC/scope"
            assert scope["query_string"] == "x=1&y=%20"
            assert scope["root_path"] == ""
            assert ["host", "example"] in scope["headers"]
            assert ["x-custom", "Value"] in scope["headers"]
            assert scope["client"][0] == "127.0.0.1"
            assert scope["client"][1] > 0
            assert scope["server"] == ["127.0.0.1", srv.port]
            assert scope["state"] == []

    run(main())


def test_root_path_is_prefixed() -> None:
    async def main() -> None:
        async with serving(Probe(), root_path="/api") as srv:
            (response,) = parse_responses(await exchange(srv.port, get("/v1/scope", close=True)))
            scope = json.loads(response.body)
            assert scope["root_path"] == "/api"
            assert scope["path"] == "/api/v1/scope"
            assert scope["raw_path"] == "/api/v1/scope"

    run(main())


PROXIED = (
    b"GET /scope HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n"
    b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
)


def test_proxy_headers_from_trusted_peer() -> None:
    async def main() -> None:
        async with serving(Probe(), forwarded_allow_ips=("127.0.0.1", "10.0.0.0/8")) as srv:
            (response,) = parse_responses(await exchange(srv.port, PROXIED))
            scope = json.loads(response.body)
            assert scope["scheme"] == "https"
            assert scope["client"] == ["203.0.113.7", 0]
        async with serving(Probe()) as srv:  # default list trusts 127.0.0.1 only
            (response,) = parse_responses(await exchange(srv.port, PROXIED))
            assert json.loads(response.body)["client"] == ["10.0.0.2", 0]

    run(main())


def test_proxy_headers_from_untrusted_peer_are_ignored() -> None:
    async def main() -> None:
        async with serving(Probe(), forwarded_allow_ips=("192.0.2.1",)) as srv:
            (response,) = parse_responses(await exchange(srv.port, PROXIED))
            scope = json.loads(response.body)
            assert scope["scheme"] == "http"
            assert scope["client"][0] == "127.0.0.1"

    run(main())


# --- access log, stats, ASGI 2, shutdown -------------------------------------------


def test_access_log(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe(), access_log=True) as srv:
            await exchange(srv.port, get("/path?q=1", close=True))

    with caplog.at_level(logging.INFO, logger="reuseport.access"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "reuseport.access"]
    assert len(lines) == 1
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - "GET /path\?q=1 HTTP/1\.1" 200 5', lines[0])


def test_access_log_is_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            await exchange(srv.port, get("/p", close=True))

    with caplog.at_level(logging.INFO, logger="reuseport.access"):
        run(main())
    assert not [r for r in caplog.records if r.name == "reuseport.access"]


def test_stats_are_counted() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            stats = srv.ctx.stats
            await exchange(srv.port, get("/a") + get("/b", close=True))
            await exchange(srv.port, get("/c", close=True))
            await wait_for(until(lambda: stats.connections == 0))
            assert (stats.requests, stats.accepted, stats.in_flight) == (3, 2, 0)

    run(main())


def test_asgi2_app_is_wrapped() -> None:
    async def main() -> None:
        async with serving(Asgi2App) as srv:
            (response,) = parse_responses(await exchange(srv.port, get("/two", close=True)))
            assert response.body == b"asgi2 /two"

    run(main())


def test_shutdown_finishes_in_flight_and_closes_idle() -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(probe) as srv:
            busy_r, busy_w = await asyncio.open_connection("127.0.0.1", srv.port)
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                idle_w.write(get("/idle"))
                await read_response_head(idle_r)
                await wait_for(idle_r.readexactly(5))
                busy_w.write(get("/wait"))
                await wait_for(probe.event("wait-entered").wait())
                shutdown = asyncio.ensure_future(srv.hosted.shutdown(WAIT))
                assert await wait_for(idle_r.read()) == b""  # idle keep-alive closed
                probe.event("release").set()
                (answer,) = parse_responses(await wait_for(busy_r.read()))
                assert answer.body == b"released"
                assert answer.header(b"connection") == b"close"
                await wait_for(shutdown)
            finally:
                busy_w.close()
                idle_w.close()

    run(main())
