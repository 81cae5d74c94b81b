"""``--proxy-protocol`` in-process: real sockets on loopback, the server in the test's loop.

The header parser itself is ``test_proxyproto.py``; ``reuseport serve`` with the
flag (both modes, WSGI, the CLI and its refusals) is ``test_proxy_protocol_serve.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from apps_websocket import WsProbe
from asgi_apps import WAIT, Probe, Running, exchange, parse_responses, run, serving, until, wait_for
from test_proxyproto import ipv6_block, tlv, v2

from reuseport import tls
from reuseport.apps.asgi import AsgiApp
from reuseport.apps.base import WorkerContext
from reuseport.config import Config, Mode
from reuseport.proxystage import ProxyStage

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V2_IPV6 = v2(family=2, block=ipv6_block("2001:db8::7", "2001:db8::1", 40000, 8443) + tlv(5, b"id"))


def get(path: str, *, close: bool = False, extra: bytes = b"") -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s%s\r\n" % (path.encode(), connection, extra)


def scopes(raw: bytes) -> list[dict[str, Any]]:
    responses = parse_responses(raw)
    assert all(r.status == 200 for r in responses), responses
    return [json.loads(r.body) for r in responses]


async def send_in_pieces(port: int, *pieces: bytes) -> bytes:
    """Write each piece on its own (drained), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return bytes(await wait_for(reader.read()))
    finally:
        writer.close()


async def refused(port: int | str, data: bytes) -> bool:
    """Send ``data``; True if the server closed (or reset) without a byte of answer."""
    if isinstance(port, int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        reader, writer = await asyncio.open_unix_connection(port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        try:
            return bytes(await wait_for(reader.read())) == b""
        except ConnectionError:  # closed with our bytes unread: the kernel sent RST
            return True
    finally:
        writer.close()


# --- the header names the client ------------------------------------------------------


def test_v1_then_keep_alive_requests_see_the_proxied_client() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            raw = await exchange(srv.port, V1 + get("/scope") + get("/scope", close=True))
            first, second = scopes(raw)
            for scope in (first, second):
                assert scope["client"] == ["192.0.2.1", 56324]
                assert scope["server"] == ["198.51.100.2", 443]

    run(main())


def test_v2_ipv6_with_tlvs() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            (scope,) = scopes(await exchange(srv.port, V2_IPV6 + get("/scope", close=True)))
            assert scope["client"] == ["2001:db8::7", 40000]
            assert scope["server"] == ["2001:db8::1", 8443]

    run(main())


@pytest.mark.parametrize(
    "header",
    [v2(command=0, family=0, transport=0, block=b""), b"PROXY UNKNOWN\r\n"],
    ids=["v2-local", "v1-unknown"],
)
def test_local_and_unknown_keep_the_real_peer(header: bytes) -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            (scope,) = scopes(await exchange(srv.port, header + get("/scope", close=True)))
            assert scope["client"][0] == "127.0.0.1"
            assert scope["client"][1] > 0
            assert scope["server"] == ["127.0.0.1", srv.port]

    run(main())


@pytest.mark.parametrize("header", [V1, V2_IPV6], ids=["v1", "v2"])
def test_header_arriving_in_pieces_and_the_request_in_the_same_read_as_its_end(
    header: bytes,
) -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            pieces = [header[i : i + 1] for i in range(len(header) - 1)]
            raw = await send_in_pieces(srv.port, *pieces, header[-1:] + get("/scope", close=True))
            (scope,) = scopes(raw)
            assert scope["client"][0] in ("192.0.2.1", "2001:db8::7")

    run(main())


def test_without_the_flag_a_header_is_just_a_bad_request() -> None:
    async def main() -> None:
        async with serving(Probe()) as srv:
            (response,) = parse_responses(await exchange(srv.port, V1 + get("/", close=True)))
            assert response.status == 400

    run(main())


# --- who may send it, and what is closed ----------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        get("/scope", close=True),  # no header at all
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n" + get("/", close=True),  # malformed
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + get("/", close=True),  # bare LF
        b"PROXY UNKNOWN " + b"x" * 200,  # no CRLF within 107 bytes
        v2(version=1) + get("/", close=True),
    ],
    ids=["no-header", "malformed", "bare-lf", "too-long", "v2-bad-version"],
)
def test_a_connection_without_a_valid_header_is_closed_without_an_answer(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> Running:
        async with serving(Probe(), proxy_protocol=True) as srv:
            assert await refused(srv.port, data)
            assert await refused(srv.port, data)
            # The server still serves a well-behaved balancer afterwards.
            (scope,) = scopes(await exchange(srv.port, V1 + get("/scope", close=True)))
            assert scope["client"] == ["192.0.2.1", 56324]
            return srv

    with caplog.at_level(logging.DEBUG, logger="reuseport.http"):
        srv = run(main())
    closing = [r for r in caplog.records if "closing a connection from" in r.getMessage()]
    assert len(closing) == 2
    # The first says what to check; the next is a debug line (a scanner
    # must not flood the log).
    assert closing[0].levelno == logging.WARNING
    assert "check that the balancer sends one" in closing[0].getMessage()
    assert closing[1].levelno == logging.DEBUG
    stats = srv.ctx.stats
    assert stats.accepted == 3  # each refused one counts as a connection that came and went
    assert stats.connections == 0
    assert stats.requests == 1


def test_an_untrusted_peer_is_closed_even_with_a_valid_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True, forwarded_allow_ips="192.0.2.9") as srv:
            assert await refused(srv.port, V1 + get("/scope", close=True))

    with caplog.at_level(logging.DEBUG, logger="reuseport.http"):
        run(main())
    assert "not trusted to send a PROXY header" in caplog.text


def test_a_header_not_complete_in_the_header_timeout_ends_the_connection() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True, header_read_timeout=0.2) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V1[:10])
                await writer.drain()
                loop = asyncio.get_running_loop()
                started = loop.time()
                assert await wait_for(reader.read()) == b""
                assert loop.time() - started >= 0.1
            finally:
                writer.close()
            stats = srv.ctx.stats
            assert stats.connections == 0

    run(main())


def test_a_peer_that_hangs_up_mid_header_is_counted_and_forgotten() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            http = srv.hosted.http
            assert http is not None
            with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT) as sock:
                sock.sendall(V1[:20])

                await wait_for(
                    until(lambda: any(isinstance(c, ProxyStage) for c in http.connections))
                )

            await wait_for(until(lambda: not http.connections and not srv.ctx.stats.connections))
            assert srv.ctx.stats.accepted == 1

    run(main())


# --- X-Forwarded-* after a PROXY header ---------------------------------------------

FORGED = b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n"


def test_forwarded_headers_from_an_untrusted_proxied_client_are_ignored() -> None:
    # The balancer (127.0.0.1) is trusted; the client it names is not, so
    # what that client wrote in X-Forwarded-* is its own claim.
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            raw = await exchange(srv.port, V1 + get("/scope", close=True, extra=FORGED))
            (scope,) = scopes(raw)
            assert scope["client"] == ["192.0.2.1", 56324]
            assert scope["scheme"] == "http"

    run(main())


def test_forwarded_headers_from_a_trusted_proxied_client_are_honoured() -> None:
    # An HTTP proxy (192.0.2.0/24, trusted) in front of the L4 balancer.
    async def main() -> None:
        trust = "127.0.0.1,192.0.2.0/24"
        async with serving(Probe(), proxy_protocol=True, forwarded_allow_ips=trust) as srv:
            raw = await exchange(srv.port, V1 + get("/scope", close=True, extra=FORGED))
            (scope,) = scopes(raw)
            assert scope["client"] == ["10.9.9.9", 0]
            assert scope["scheme"] == "https"

    run(main())


def test_after_local_the_balancer_itself_is_the_peer_and_trusted() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            local = v2(command=0, family=1, block=b"")
            (scope,) = scopes(
                await exchange(srv.port, local + get("/scope", close=True, extra=FORGED))
            )
            assert scope["client"] == ["10.9.9.9", 0]
            assert scope["scheme"] == "https"

    run(main())


# --- access log, WebSocket, rescue, Unix sockets ----------------------------------------


def test_the_access_log_names_the_proxied_client(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True, access_log=True) as srv:
            await exchange(srv.port, V2_IPV6 + get("/path", close=True))

    with caplog.at_level(logging.INFO, logger="reuseport.access"):
        run(main())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "reuseport.access"]
    assert re.fullmatch(r'2001:db8::7:40000 - "GET /path HTTP/1\.1" 200 \d+', line), line


HANDSHAKE = (
    b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_websocket_upgrade_after_a_header() -> None:
    probe = WsProbe()

    async def main() -> None:
        async with serving(probe, proxy_protocol=True, lifespan="off") as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V1 + HANDSHAKE)
                head = await wait_for(reader.readuntil(b"\r\n\r\n"))
                assert head.startswith(b"HTTP/1.1 101 ")
            finally:
                writer.close()
            await wait_for(probe.event("disconnect").wait())
        (scope,) = probe.scopes
        assert scope["type"] == "websocket"
        assert scope["client"] == ("192.0.2.1", 56324)
        assert scope["server"] == ("198.51.100.2", 443)

    run(main())


def test_a_rescued_connection_reads_its_header_too() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            # A "sibling's" listener: we accept by hand, as the rescuer does.
            with socket.create_server(("127.0.0.1", 0)) as sibling:
                port = sibling.getsockname()[1]
                for data, expect_client in (
                    (V1 + get("/scope", close=True), ["192.0.2.1", 56324]),
                    (get("/scope", close=True), None),  # no header: closed
                ):
                    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                    with client:
                        conn, _ = sibling.accept()
                        conn.setblocking(False)
                        assert srv.hosted.serve_rescued(conn)
                        client.sendall(data)
                        raw = await asyncio.to_thread(_read_all, client)
                    if expect_client is None:
                        assert raw == b""  # (_read_all takes a reset for the end)
                    else:
                        (scope,) = scopes(raw)
                        assert scope["client"] == expect_client
            stats = srv.ctx.stats
            assert stats.rescued == 2
            assert stats.rescue_pending == 0

    run(main())


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def serving_unix(app: object, **config: Any) -> AsyncIterator[str]:
    ctx = WorkerContext(
        pid=os.getpid(), slot=0, generation=0, mode=Mode.SHARED, config=Config(**config)
    )
    hosted = AsgiApp(app, ctx)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(16)
            sock.setblocking(False)
            await hosted.serve([sock])
            yield path
        finally:
            try:
                await hosted.shutdown(2.0)
            finally:
                sock.close()


@pytest.mark.parametrize(
    ("trust", "served"), [("127.0.0.1", True), ("192.0.2.9", False)], ids=["local", "untrusted"]
)
def test_unix_socket_peers_are_trusted_as_loopback_is(trust: str, served: bool) -> None:
    async def main() -> None:
        async with serving_unix(
            Probe(), proxy_protocol=True, forwarded_allow_ips=trust, lifespan="off"
        ) as path:
            data = V2_IPV6 + get("/scope", close=True)
            if not served:
                assert await refused(path, data)
                return
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(data)
                raw = bytes(await wait_for(reader.read()))
            finally:
                writer.close()
            (scope,) = scopes(raw)
            assert scope["client"] == ["2001:db8::7", 40000]
            assert scope["server"] == ["2001:db8::1", 8443]

    run(main())


def test_graceful_stop_waits_for_a_header_on_its_way() -> None:
    async def main() -> None:
        async with serving(Probe(), proxy_protocol=True) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V1[:12])
                await writer.drain()
                http = srv.hosted.http
                assert http is not None

                await wait_for(until(lambda: len(http.connections)))
                stopping = asyncio.ensure_future(srv.hosted.shutdown(WAIT))
                await asyncio.sleep(0)
                assert not stopping.done()
                writer.write(V1[12:] + get("/scope"))
                (scope,) = scopes(await wait_for(reader.read()))
                assert scope["client"] == ["192.0.2.1", 56324]
                await wait_for(stopping)
            finally:
                writer.close()

    run(main())


# --- TLS after the header (--ssl-certfile with --proxy-protocol) ------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("proxy-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: str(folder / f"{name}.pem") for name in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def serving_tls(
    app: object, certs: dict[str, str], **config: Any
) -> contextlib.AbstractAsyncContextManager[Running]:
    """``serving`` with TLS, as a worker sets it up (the context built from the files)."""
    settings = {"ssl_certfile": certs["cert"], "ssl_keyfile": certs["key"], **config}
    context = tls.server_context(Config(proxy_protocol=True, **settings))
    return serving(app, tls_context=context, proxy_protocol=True, **settings)


def client_tls(certs: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["ca"])
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def tls_in_one_write(port: int, header: bytes, certs: dict[str, str], data: bytes) -> bytes:
    """The header and the ClientHello in one write (as a balancer may send them), then
    ``data`` over TLS; what the server answers until it closes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client_tls(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls_client.do_handshake()
        writer.write(header + outgoing.read())
        while True:
            try:
                tls_client.do_handshake()
                break
            except ssl.SSLWantReadError:
                chunk = await wait_for(reader.read(65536))
                assert chunk, "the server closed during the handshake"
                incoming.write(chunk)
                writer.write(outgoing.read())
        assert tls_client.selected_alpn_protocol() == "http/1.1"
        tls_client.write(data)
        writer.write(outgoing.read())
        answer = b""
        while True:
            try:
                piece = tls_client.read(65536)
            except ssl.SSLWantReadError:
                chunk = await wait_for(reader.read(65536))
                if not chunk:
                    return answer
                incoming.write(chunk)
                continue
            except ssl.SSLZeroReturnError:
                return answer
            if not piece:  # the server's close_notify
                return answer
            answer += piece
    finally:
        writer.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_tls_after_a_header_in_the_same_write_as_the_client_hello(
    certs: dict[str, str], loop: str
) -> None:
    # (Each loop has its own TLS protocol: uvloop's, or asyncio's with --loop asyncio.)
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            raw = await tls_in_one_write(
                srv.port, V1, certs, get("/scope") + get("/scope", close=True)
            )
            first, second = scopes(raw)
            for scope in (first, second):
                assert scope["scheme"] == "https"
                assert scope["client"] == ["192.0.2.1", 56324]
                assert scope["server"] == ["198.51.100.2", 443]
            http = srv.hosted.http
            assert http is not None
            await wait_for(until(lambda: not len(http.connections)))
            assert srv.ctx.stats.connections == 0

    if loop == "uvloop":
        run(main())
    else:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(asyncio.wait_for(main(), 20.0))


def test_tls_falls_back_to_asyncios_protocol_if_uvloops_changes(
    certs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvloop.loop

    def changed(*args: object) -> None:
        raise TypeError("a different signature")

    monkeypatch.setattr(uvloop.loop, "SSLProtocol", changed)

    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            raw = await tls_in_one_write(srv.port, V1, certs, get("/scope", close=True))
            (scope,) = scopes(raw)
            assert scope["scheme"] == "https"
            assert scope["client"] == ["192.0.2.1", 56324]

    run(main())


def test_tls_after_a_v2_header_sent_on_its_own(certs: dict[str, str]) -> None:
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V2_IPV6)
                await writer.drain()
                await wait_for(writer.start_tls(client_tls(certs), server_hostname="127.0.0.1"))
                writer.write(get("/scope", close=True))
                (scope,) = scopes(await wait_for(reader.read()))
            finally:
                writer.close()
            assert scope["scheme"] == "https"
            assert scope["client"] == ["2001:db8::7", 40000]

    run(main())


@pytest.mark.parametrize(
    "after",
    [get("/scope", close=True), b"\x16\x03\x01\x00\x05hello"],
    ids=["plain-http", "broken-client-hello"],
)
def test_no_tls_after_the_header_is_closed_and_counted(certs: dict[str, str], after: bytes) -> None:
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            assert await refused(srv.port, V1 + after)
            http = srv.hosted.http
            assert http is not None
            stats = srv.ctx.stats
            await wait_for(until(lambda: stats.connections == 0 and not len(http.connections)))
            assert stats.accepted == 1  # opened and closed by the stage
            # A valid header without TLS behind it never reached the app.
            assert await refused(srv.port, get("/scope", close=True))  # no header either

    run(main())


def test_a_client_gone_mid_handshake_is_counted_and_forgotten(certs: dict[str, str]) -> None:
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(V1 + b"\x16\x03\x01")  # the first bytes of a ClientHello, then gone
            await writer.drain()
            http = srv.hosted.http
            assert http is not None
            await wait_for(until(lambda: len(http.connections) == 1))
            writer.close()
            stats = srv.ctx.stats
            await wait_for(until(lambda: not len(http.connections)))
            await wait_for(until(lambda: stats.connections == 0 and stats.accepted == 1))

    run(main())


def test_a_rescued_connection_reads_its_header_then_starts_tls(certs: dict[str, str]) -> None:
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            with socket.create_server(("127.0.0.1", 0)) as sibling:
                port = sibling.getsockname()[1]
                answer = asyncio.ensure_future(
                    tls_in_one_write(port, V1, certs, get("/scope", close=True))
                )
                conn, _ = await asyncio.to_thread(sibling.accept)
                conn.setblocking(False)
                assert srv.hosted.serve_rescued(conn)
                (scope,) = scopes(await wait_for(answer))
            assert scope["scheme"] == "https"
            assert scope["client"] == ["192.0.2.1", 56324]
            assert srv.ctx.stats.rescued == 1

    run(main())


def test_a_websocket_over_tls_after_a_header(certs: dict[str, str]) -> None:
    probe = WsProbe()

    async def main() -> None:
        async with serving_tls(probe, certs, lifespan="off") as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V1)
                await writer.drain()
                await wait_for(writer.start_tls(client_tls(certs), server_hostname="127.0.0.1"))
                writer.write(HANDSHAKE)
                head = await wait_for(reader.readuntil(b"\r\n\r\n"))
                assert head.startswith(b"HTTP/1.1 101 ")
            finally:
                writer.close()
            await wait_for(probe.event("disconnect").wait())
        (scope,) = probe.scopes
        assert scope["type"] == "websocket"
        assert scope["scheme"] == "wss"
        assert scope["client"] == ("192.0.2.1", 56324)

    run(main())


def test_a_graceful_stop_waits_for_a_tls_handshake_under_way(certs: dict[str, str]) -> None:
    async def main() -> None:
        async with serving_tls(Probe(), certs) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(V1)
                await writer.drain()
                http = srv.hosted.http
                assert http is not None
                await wait_for(until(lambda: len(http.connections) == 1))
                stopping = asyncio.ensure_future(srv.hosted.shutdown(WAIT))
                await asyncio.sleep(0)
                assert not stopping.done()
                # The handshake and the request still go through: the drain
                # waits for them as for a fresh connection's first request.
                await wait_for(writer.start_tls(client_tls(certs), server_hostname="127.0.0.1"))
                writer.write(get("/scope"))
                (scope,) = scopes(await wait_for(reader.read()))
                assert scope["scheme"] == "https"
                await wait_for(stopping)
            finally:
                writer.close()

    run(main())
