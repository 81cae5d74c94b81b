"""WebSocket for ASGI apps, in-process: a real ``websockets`` client on loopback.

The server runs in the test's own loop (``asgi_apps.serving``), so the tests
can look at its connections (queue lengths, paused reading) while a real
client talks to it.  ``test_websocket_serve.py`` drives ``reuseport serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
from typing import Any

import pytest
from apps_websocket import FLOOD_COUNT, FLOOD_PIECE, WsProbe, drain_event, fastapi_app
from asgi_apps import WAIT, Running, exchange, parse_responses, run, serving, until, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.uri import parse_uri

from reuseport.connections import Connections, ManagedConnection, StopReason, going_away_grace
from reuseport.errors import BootError
from reuseport.http.websocket import (
    WebSocketProtocol,
    close_code_for,
    offered_subprotocols,
    websocket_scope,
)
from reuseport.http.websocket_upgrade import upgrade_tokens

HANDSHAKE = (
    b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def url(srv: Running, path: str) -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def sockets_of(srv: Running) -> list[WebSocketProtocol]:
    http = srv.hosted.http
    assert http is not None
    return [c for c in http.connections if isinstance(c, WebSocketProtocol)]


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; return the close code and reason it sent."""
    try:
        while True:
            await wait_for(ws.recv())
    except ConnectionClosed:
        return ws.close_code, ws.close_reason


# --- handshake, messages, close ----------------------------------------------------


def test_accept_with_subprotocol_and_headers_then_echo_text_and_bytes() -> None:
    probe = WsProbe()

    async def main() -> None:
        async with (
            serving(probe, lifespan="off") as srv,
            connect(url(srv, "/echo?x=1"), subprotocols=["one", "two"]) as ws,  # type: ignore[list-item]
        ):
            assert ws.subprotocol == "two"
            assert ws.response.headers["x-probe"] == "accepted"
            assert ws.response.headers["server"] == "reuseport"
            await ws.send("héllo")
            assert await wait_for(ws.recv()) == "héllo"
            big = bytes(range(256)) * 1024  # 256 KiB: fragmented on the way in and out
            await ws.send(big)
            assert await wait_for(ws.recv()) == big
            await ws.send([b"frag", b"mented"])  # a fragmented binary message
            assert await wait_for(ws.recv()) == b"fragmented"
        await wait_for(probe.event("disconnect").wait())
        (scope,) = probe.scopes
        assert scope["type"] == "websocket"
        assert scope["scheme"] == "ws"
        assert scope["path"] == "/echo"
        assert scope["query_string"] == b"x=1"
        assert scope["subprotocols"] == ["one", "two"]
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert "websocket.http.response" in scope["extensions"]
        assert isinstance(drain_event(scope), asyncio.Event)
        assert probe.received[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": ""}

    run(main())


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_at_every_frame_length_boundary(compression: str | None) -> None:
    # Uncompressed data frames are framed here, compressed ones by the
    # library: lengths 125/126 and 65535/65536 switch the length encoding.
    probe = WsProbe()
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]

    async def main() -> None:
        async with (
            serving(probe, lifespan="off") as srv,
            connect(url(srv, "/echo"), compression=compression, max_size=None) as ws,
        ):
            for size in sizes:
                text = ("é" + "x" * size)[:size] if size else ""
                await ws.send(text)
                assert await wait_for(ws.recv()) == text
                data = bytes(range(256)) * (size // 256) + bytes(size % 256)
                await ws.send(data)
                assert await wait_for(ws.recv()) == data
        await wait_for(probe.event("disconnect").wait())
        assert probe.errors == []

    run(main())


def masked(first: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame: ``first`` is FIN, RSV and opcode; short payloads only."""
    return (
        bytes((first, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize(
    ("reads", "echoed", "code"),
    [
        # whole frames the server reads itself, then frames split across reads
        (
            [masked(0x81, b"one"), masked(0x82, b"two")[:3], masked(0x82, b"two")[3:]],
            ["one", b"two"],
            None,
        ),
        (
            [masked(0x81, b"a")[:4], masked(0x81, b"a")[4:] + masked(0x81, b"b")],
            ["a", "b"],
            None,
        ),
        # the rest of a frame that looks like a whole frame of its own
        (
            [
                masked(0x82, masked(0x81, b"zz"), b"\0\0\0\0")[:6],
                masked(0x82, masked(0x81, b"zz"), b"\0\0\0\0")[6:],
            ],
            [masked(0x81, b"zz")],
            None,
        ),
        ([masked(0x81, b"\xff\xfe")], [], 1007),  # not UTF-8
        ([bytes((0x81, 2)) + b"hi"], [], 1002),  # unmasked
        ([masked(0x01, b"ab"), masked(0x81, b"c")], [], 1002),  # a new message mid-fragment
        ([masked(0xC1, b"x")], [], 1002),  # RSV1 without an extension
        ([masked(0x01, b"ab"), masked(0x80, b"cd"), masked(0x81, b"e")], ["abcd", "e"], None),
    ],
)
def test_frames_read_whole_or_split_and_protocol_errors(
    reads: list[bytes], echoed: list[str | bytes], code: int | None
) -> None:
    # Reads fed as the transport would: a read holding one whole message
    # skips the library's parser; anything else goes through it.
    probe = WsProbe()

    async def main() -> None:
        async with (
            serving(probe, lifespan="off") as srv,
            connect(url(srv, "/echo"), compression=None) as ws,
        ):
            (conn,) = sockets_of(srv)
            for data in reads:
                conn.data_received(data)
            for message in echoed:
                assert await wait_for(ws.recv()) == message
            if code is not None:
                assert (await closed_with(ws))[0] == code

    run(main())


def test_close_codes_and_reasons_both_ways() -> None:
    probe = WsProbe()

    async def main() -> None:
        async with serving(probe, lifespan="off") as srv:
            # The app closes: the client sees its code and reason.
            async with connect(url(srv, "/echo")) as ws:
                await ws.send("close please")
                assert await closed_with(ws) == (4001, "as you wish")
            # The client closes: the app's receive() says how.
            probe.event("disconnect").clear()
            async with connect(url(srv, "/echo")) as ws:
                await ws.send("ping?")
                assert await wait_for(ws.recv()) == "ping?"
                await ws.close(4002, "see you")
            await wait_for(probe.event("disconnect").wait())
            assert probe.received[-1] == {
                "type": "websocket.disconnect",
                "code": 4002,
                "reason": "see you",
            }

    run(main())


def test_close_before_accept_is_403_and_returning_silently_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with serving(WsProbe(), lifespan="off") as srv:
            for path in ("/close-first", "/silent"):
                with pytest.raises(InvalidStatus) as info:
                    await wait_for(connect(url(srv, path)))
                assert info.value.response.status_code == 403

    with caplog.at_level(logging.ERROR, logger="reuseport.http"):
        run(main())
    assert any("without accepting or closing" in r.getMessage() for r in caplog.records)


def test_denial_response_extension() -> None:
    async def main() -> None:
        async with serving(WsProbe(), lifespan="off") as srv:
            with pytest.raises(InvalidStatus) as info:
                await wait_for(connect(url(srv, "/deny")))
            response = info.value.response
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Token"
            assert response.body == b"who are you?"

    run(main())


def test_app_error_before_accept_is_500_after_accept_is_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(WsProbe):
        async def h_early(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            raise ValueError("boom before accept")

    async def main() -> None:
        async with serving(Broken(), lifespan="off") as srv:
            with pytest.raises(InvalidStatus) as info:
                await wait_for(connect(url(srv, "/early")))
            assert info.value.response.status_code == 500
            async with connect(url(srv, "/error")) as ws:
                await ws.send("trigger")
                assert (await closed_with(ws))[0] == 1011

    with caplog.at_level(logging.ERROR, logger="reuseport.http"):
        run(main())
    assert sum("Exception in ASGI application" in r.getMessage() for r in caplog.records) == 2


def test_invalid_handshake_is_answered_by_the_library_without_calling_the_app() -> None:
    probe = WsProbe()

    async def main() -> None:
        async with serving(probe, lifespan="off") as srv:
            bad = HANDSHAKE.replace(b"Version: 13", b"Version: 8") % b"/echo"
            (response,) = parse_responses(await exchange(srv.port, bad))
            assert response.status == 400
            assert probe.scopes == []

    run(main())


def test_permessage_deflate_is_negotiated_unless_switched_off() -> None:
    async def main() -> None:
        for deflate in (True, False):
            async with (
                serving(WsProbe(), lifespan="off", ws_per_message_deflate=deflate) as srv,
                connect(url(srv, "/echo")) as ws,
            ):
                offered = ws.response.headers.get("sec-websocket-extensions") or ""
                assert ("permessage-deflate" in offered) is deflate
                text = "compress me " * 1000
                await ws.send(text)
                assert await wait_for(ws.recv()) == text

    run(main())


def test_max_size_closes_with_1009() -> None:
    async def main() -> None:
        async with (
            serving(WsProbe(), lifespan="off", ws_max_size=1024) as srv,
            connect(url(srv, "/echo")) as ws,
        ):
            await ws.send(b"x" * 1024)
            assert await wait_for(ws.recv()) == b"x" * 1024
            await ws.send(b"x" * 1025)
            assert (await closed_with(ws))[0] == 1009

    run(main())


def test_ping_timeout_closes_a_dead_peer() -> None:
    """A peer that reads but never answers a ping is closed with 1011."""
    probe = WsProbe()

    async def main() -> None:
        async with serving(probe, lifespan="off", ws_ping_interval=0.1, ws_ping_timeout=0.2) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(HANDSHAKE % b"/ignore-drain")
                head = await wait_for(reader.readuntil(b"\r\n\r\n"))
                assert head.startswith(b"HTTP/1.1 101 ")
                loop = asyncio.get_running_loop()
                started = loop.time()
                rest = await wait_for(reader.read())  # until the server closes
                elapsed = loop.time() - started
            finally:
                writer.close()
            assert rest[:1] == b"\x89"  # a ping came first
            close = rest.index(b"\x88")  # then a close frame, with 1011
            assert struct.unpack("!H", rest[close + 2 : close + 4]) == (1011,)
            assert 0.25 <= elapsed < WAIT
            await wait_for(probe.event("disconnect").wait())
            assert probe.received[-1]["code"] == 1011

    run(main())


def test_pongs_keep_a_live_peer_open() -> None:
    async def main() -> None:
        config = {"lifespan": "off", "ws_ping_interval": 0.05, "ws_ping_timeout": 0.1}
        async with (
            serving(WsProbe(), **config) as srv,
            connect(url(srv, "/echo"), ping_interval=None) as ws,  # it still answers pings
        ):
            (conn,) = sockets_of(srv)
            await wait_for(until(lambda: conn.pings >= 5))
            await ws.send("still here")
            assert await wait_for(ws.recv()) == "still here"

    run(main())


# --- flow control ------------------------------------------------------------------


def test_slow_app_pauses_reading_with_a_bounded_queue() -> None:
    probe = WsProbe()
    count, size, max_queue = 2000, 1024, 4

    async def main() -> None:
        async with (
            serving(probe, lifespan="off", ws_max_queue=max_queue) as srv,
            connect(url(srv, "/hold"), compression=None) as ws,
        ):
            await wait_for(probe.event("held").wait())
            sender = asyncio.ensure_future(
                asyncio.gather(*(ws.send(i.to_bytes(4, "big") * (size // 4)) for i in range(count)))
            )
            (conn,) = sockets_of(srv)
            await wait_for(until(lambda: conn.flow.read_paused))
            # One read (at most 256 KiB on uvloop) may hold more frames than the
            # queue has room for; nothing beyond that is read.
            assert len(conn.queue) <= max_queue + 256 * 1024 // size + 1
            received_before = len(probe.received)
            assert received_before == 1  # websocket.connect: the app took nothing yet
            probe.event("release").set()
            await wait_for(sender)
            await ws.close()
        await wait_for(probe.event("disconnect").wait())
        got = [m["bytes"][:4] for m in probe.received if m["type"] == "websocket.receive"]
        assert got == [i.to_bytes(4, "big") for i in range(count)]

    run(main())


def test_send_waits_for_a_slow_reader() -> None:
    probe = WsProbe()

    async def main() -> None:
        async with (
            serving(probe, lifespan="off") as srv,
            connect(url(srv, "/flood"), max_queue=1, compression=None) as ws,
        ):
            # The client takes nothing: the server's write buffer fills and
            # the app's send() waits instead of buffering 64 MiB.
            await wait_for(until(lambda: sockets_of(srv) and sockets_of(srv)[0].flow.write_paused))
            (conn,) = sockets_of(srv)
            sent = probe.sent
            assert sent < FLOOD_COUNT
            assert conn.transport.get_write_buffer_size() <= 2 * (FLOOD_PIECE + 16)
            sizes = [len(message) async for message in ws]  # until the app's close (1000)
            assert sizes == [FLOOD_PIECE] * FLOOD_COUNT
            assert ws.close_code == 1000
            assert probe.errors == []

    run(main(), timeout=60)


def test_a_message_handed_to_a_cancelled_receive_is_kept_for_the_next() -> None:
    # A waiting receive() gets the next message handed to its waiter; when its
    # task is cancelled before it runs, the message goes back to the queue.
    pending: list[asyncio.Future[Any]] = []
    kept: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        first = asyncio.ensure_future(receive())
        pending.append(first)
        with contextlib.suppress(asyncio.CancelledError):
            await first
        kept.append(await receive())
        await send({"type": "websocket.send", "text": kept[-1]["text"]})

    client = ClientProtocol(parse_uri("ws://t/"), state=State.OPEN)
    client.send_text(b"kept")
    (frame,) = client.data_to_send()

    async def main() -> None:
        async with (
            serving(app, lifespan="off") as srv,
            connect(url(srv, "/"), compression=None) as ws,
        ):
            (conn,) = sockets_of(srv)
            await wait_for(until(lambda: pending and conn.waiter is not None))
            conn.data_received(frame)  # as a read would: the waiter has it, its task not yet
            pending[0].cancel()
            assert await wait_for(ws.recv()) == "kept"
        assert kept == [{"type": "websocket.receive", "text": "kept"}]

    run(main())


# --- graceful stop and the drain signal --------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (StopReason.STOP, 1001),
        (StopReason.SCALE_DOWN, 1001),
        (StopReason.RELOAD, 1012),
        (StopReason.RECYCLE, 1012),
    ],
)
def test_graceful_stop_closes_open_websockets_before_the_deadline(
    reason: StopReason, code: int
) -> None:
    probe = WsProbe()
    timeout = 1.0

    async def main() -> None:
        async with serving(probe, lifespan="off") as srv, connect(url(srv, "/ignore-drain")) as ws:
            await wait_for(probe.event("accepted").wait())
            loop = asyncio.get_running_loop()
            started = loop.time()
            shutdown = asyncio.ensure_future(srv.hosted.shutdown(timeout, reason))
            assert await closed_with(ws) == (code, ws.close_reason)
            closed_after = loop.time() - started
            await wait_for(shutdown)
            took = loop.time() - started
            # Open until the graceful time is nearly up, closed politely by its end.
            assert closed_after >= timeout - going_away_grace(timeout) - 0.05
            assert took <= timeout + 0.5
            await wait_for(probe.event("disconnect").wait())
            assert probe.received[-1]["code"] == code

    run(main())


def test_drain_event_lets_the_app_close_at_once_and_is_in_http_scopes_too() -> None:
    probe = WsProbe()
    timeout = 10.0

    async def main() -> None:
        async with serving(probe, lifespan="off") as srv, connect(url(srv, "/drain")) as ws:
            await wait_for(probe.event("accepted").wait())
            raw = await exchange(
                srv.port, b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            assert parse_responses(raw)[0].body == b"http /plain"
            http_scope = probe.scopes[-1]
            event = drain_event(http_scope)
            assert event is drain_event(probe.scopes[0])  # one signal per worker
            assert not event.is_set()
            loop = asyncio.get_running_loop()
            started = loop.time()
            shutdown = asyncio.ensure_future(srv.hosted.shutdown(timeout, StopReason.RELOAD))
            assert await closed_with(ws) == (4000, "draining")
            await wait_for(shutdown)
            assert event.is_set()
            assert loop.time() - started < timeout / 4  # not the graceful timeout

    run(main())


# --- frameworks ----------------------------------------------------------------------


def test_fastapi_websocket_route() -> None:
    async def main() -> None:
        async with serving(fastapi_app) as srv, connect(url(srv, "/ws")) as ws:
            for text in ("one", "two"):
                await ws.send(text)
                reply = await wait_for(ws.recv())
                assert f'"echo":"{text}"' in reply

    run(main())


# --- without the extra, and other upgrades -----------------------------------------


def _without_websockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import websockets`` fail, as in an install without the extra."""
    for name in list(sys.modules):
        if name.startswith("websockets."):  # a cached submodule would still import
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "websockets", None)
    monkeypatch.delitem(sys.modules, "reuseport.http.websocket", raising=False)


def test_without_the_package_upgrades_are_plain_http_and_one_line_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _without_websockets(monkeypatch)

    async def main() -> None:
        async with serving(WsProbe(), lifespan="off") as srv:
            for _ in range(3):
                (response,) = parse_responses(await exchange(srv.port, HANDSHAKE % b"/echo"))
                assert (response.status, response.body) == (200, b"http /echo")

    with caplog.at_level(logging.INFO, logger="reuseport.http"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "websockets package" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "pip install 'reuseport[websockets]'" in lines[0]


def test_ws_websockets_without_the_package_refuses_to_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_websockets(monkeypatch)

    async def main() -> None:
        with pytest.raises(BootError, match=r"--ws websockets needs the websockets package"):
            async with serving(WsProbe(), lifespan="off", ws="websockets"):
                pass

    run(main())


def test_ws_none_and_other_upgrades_are_plain_http(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(WsProbe(), lifespan="off", ws="none") as srv:
            (response,) = parse_responses(await exchange(srv.port, HANDSHAKE % b"/echo"))
            assert (response.status, response.body) == (200, b"http /echo")
        async with serving(WsProbe(), lifespan="off") as srv:
            h2c = b"GET /h2 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            h2c += b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
            for _ in range(2):
                (response,) = parse_responses(await exchange(srv.port, h2c))
                assert (response.status, response.body) == (200, b"http /h2")
                assert response.header(b"connection") == b"close"

    with caplog.at_level(logging.DEBUG, logger="reuseport.http"):
        run(main())
    told = [r for r in caplog.records if "upgrade to h2c" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.INFO, logging.DEBUG]
    assert not any("websockets package" in r.getMessage() for r in caplog.records)


# --- the glue, without sockets -------------------------------------------------------


def test_close_codes_by_stop_reason() -> None:
    assert close_code_for(StopReason.STOP)[0] == 1001
    assert close_code_for(StopReason.SCALE_DOWN)[0] == 1001
    assert close_code_for(StopReason.RELOAD)[0] == 1012
    assert close_code_for(StopReason.RECYCLE)[0] == 1012


def test_upgrade_tokens_and_offered_subprotocols() -> None:
    headers = [
        (b"upgrade", b"WebSocket"),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-protocol", b" v2 ,"),
        (b"x-upgrade", b"h2c"),
    ]
    assert upgrade_tokens(headers) == ["websocket"]
    assert upgrade_tokens([(b"upgrade", b"h2c, websocket")]) == ["h2c", "websocket"]
    assert upgrade_tokens([]) == []
    assert offered_subprotocols(headers) == ["chat", "superchat", "v2"]


def test_websocket_scope_from_an_https_request() -> None:
    drain = {"event": None}
    http_scope = {
        "type": "http",
        "http_version": "1.1",
        "scheme": "https",
        "server": ("127.0.0.1", 443),
        "client": ("10.0.0.1", 5000),
        "root_path": "/app",
        "path": "/app/ws",
        "raw_path": b"/app/ws",
        "query_string": b"a=b",
        "headers": [(b"sec-websocket-protocol", b"one")],
        "state": {"db": 1},
        "method": "GET",
    }
    scope = websocket_scope(http_scope, drain)
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "wss"
    assert scope["subprotocols"] == ["one"]
    assert scope["extensions"] == {"websocket.http.response": {}, "reuseport.drain": drain}
    assert "method" not in scope
    for key in ("server", "client", "root_path", "path", "raw_path", "query_string", "state"):
        assert scope[key] == http_scope[key]


class _FakeConnection(ManagedConnection):
    """Records when the drain called it; ``polite`` ones close on going_away()."""

    def __init__(self, connections: Connections, polite: bool) -> None:
        self.connections = connections
        self.polite = polite
        self.calls: list[tuple[str, float]] = []
        connections.add(self)

    def _note(self, what: str) -> None:
        self.calls.append((what, asyncio.get_running_loop().time()))

    def shutdown(self) -> None:
        self._note("shutdown")

    def going_away(self, reason: StopReason) -> bool:
        self._note(f"going_away {reason.value}")
        if self.polite:  # the closing handshake takes a moment
            asyncio.get_running_loop().call_later(0.05, self.connections.discard, self)
        return self.polite

    def abort(self) -> None:
        self._note("abort")
        self.connections.discard(self)


def test_drain_says_going_away_before_the_deadline_and_aborts_the_rest() -> None:
    async def main() -> None:
        timeout = 0.8
        grace = going_away_grace(timeout)
        loop = asyncio.get_running_loop()
        connections = Connections()
        polite = _FakeConnection(connections, polite=True)
        started = loop.time()
        assert await connections.drain(timeout, StopReason.RELOAD) is False
        assert [c for c, _ in polite.calls] == ["shutdown", "going_away reload"]
        # Timers never fire early; late only on a starved machine.
        assert timeout - grace - 0.01 <= polite.calls[1][1] - started < timeout
        assert loop.time() - started < timeout  # the polite close finished early

        connections = Connections()
        rude = _FakeConnection(connections, polite=False)
        started = loop.time()
        assert await connections.drain(timeout, StopReason.STOP) is False
        assert [c for c, _ in rude.calls] == ["shutdown", "going_away stop", "abort"]
        assert timeout - 0.01 <= rude.calls[2][1] - started < timeout + 1.0

        assert await Connections().drain(timeout) is True  # nothing open: at once

    run(main())
