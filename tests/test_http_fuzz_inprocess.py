"""Fuzzing the HTTP layer in-process: request bytes, mutated or random, cut
into reads at random points and fed to one connection with a fake transport.

Properties, for every input:

* nothing escapes into the event loop (its exception handler stays silent)
  and nothing is logged as a reuseport bug;
* what is written back is a sequence of well-formed responses, none of
  them a 500 (the app here never fails), and nothing is written once the
  connection is closed or half-closed;
* the connection ends: after the input, every armed deadline is let expire
  (as the server's tick would), and the connection must then be closed, its
  requests accounted for (nothing left in flight).

The default run takes a few seconds.  A longer run uses another hypothesis
profile of this module, chosen by an environment variable:

    REUSEPORT_HTTP_FUZZ=http-fuzz-long .venv/bin/pytest tests/test_http_fuzz_inprocess.py

(``http-fuzz-long``: 20,000 examples per test, about two minutes here; add
``--hypothesis-seed=N`` to replay a run.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from asgi_apps import parse_responses, read_body
from http_harness import Conn, Harness
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

settings.register_profile(
    "http-fuzz",
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "http-fuzz-long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("REUSEPORT_HTTP_FUZZ", "http-fuzz")
FUZZ = settings.get_profile(PROFILE)
# The long run outlasts the suite's 60 s per test (an alarm that fires inside
# a parser callback would then look like a bug of ours).
pytestmark = pytest.mark.timeout(60 if PROFILE == "http-fuzz" else 1800)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers in one piece or streamed."""
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"].endswith("/stream"):
        await send({"type": "http.response.body", "body": b"%d" % len(body), "more_body": True})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"|end"})
    else:
        await send({"type": "http.response.body", "body": b"%d" % len(body)})


class _Bugs(logging.Handler):
    """Errors our HTTP layer logs: in this setup, each one is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[Harness, _Bugs]]:
    bugs = _Bugs()
    logger = logging.getLogger("reuseport.http")
    logger.addHandler(bugs)
    try:
        with Harness(app, body_read_timeout=5.0) as h:
            yield h, bugs
    finally:
        logger.removeHandler(bugs)


SEEDS = [
    b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    b"GET /b/stream HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /c HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /g/stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"PUT /h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /i HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /j HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
# Bytes that matter to HTTP framing, favoured by the mutations.
SPECIAL = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b"\x00", b"0", b"f", b"#", b"\r\n\r\n"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """One to three seed requests, then up to four random edits."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "repeat", "cut"]))
        if kind == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(SPECIAL), st.binary(max_size=8)))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 40))] * draw(st.integers(1, 3))
        else:
            del data[at:]
    return bytes(data)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def check(harness: tuple[Harness, _Bugs], data: bytes, points: list[int], lose: bool) -> None:
    h, bugs = harness
    requests, in_flight = h.stats.requests, h.stats.in_flight
    conn = h.connect().feed(*cut(data, points))
    if lose:
        conn.lose()
    end(conn)
    assert conn.closed
    assert not h.errors, h.errors
    assert not bugs.records, [r.getMessage() for r in bugs.records]
    assert not conn.transport.after_close, "written after the close"
    assert h.stats.in_flight == in_flight
    assert h.stats.requests >= requests
    output = conn.output.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    if output and b"HEAD " not in data:  # (a response to HEAD has no body to parse)
        responses = parse_responses(output)
        assert responses
        # 426: a WebSocket upgrade the handshake refuses (an Upgrade header it
        # cannot read, e.g. two of them) is answered by the handshake itself.
        upgrade = b"upgrade:" in data.lower()
        allowed = {200, 400, 408, 414, 431, 505} | ({426} if upgrade else set())
        assert all(r.status in allowed for r in responses), output[:300]
        assert all(r.complete for r in responses[:-1])


def end(conn: Conn) -> None:
    """Let every deadline expire, as the tick would, until the connection closes."""
    for _ in range(6):
        if conn.closed:
            return
        assert conn.deadline_in() is not None, "open, with nothing that would ever end it"
        conn.expire()


@FUZZ
@given(
    data=mutated(),
    points=st.lists(st.integers(min_value=0), max_size=12),
    lose=st.booleans(),
)
@example(  # found by CI: two Upgrade headers, answered 426 by the WebSocket handshake
    data=b"GET /j HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: t\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    points=[],
    lose=False,
)
def test_mutated_requests_split_anywhere(
    harness: tuple[Harness, _Bugs], data: bytes, points: list[int], lose: bool
) -> None:
    check(harness, data, points, lose)


@FUZZ
@given(
    data=st.binary(max_size=400),
    points=st.lists(st.integers(min_value=0), max_size=8),
    lose=st.booleans(),
)
def test_random_bytes_split_anywhere(
    harness: tuple[Harness, _Bugs], data: bytes, points: list[int], lose: bool
) -> None:
    check(harness, data, points, lose)


@FUZZ
@given(
    size=st.integers(min_value=1, max_value=40_000),
    kind=st.sampled_from(["field", "name", "target", "chunk-ext", "trailer", "body"]),
    points=st.lists(st.integers(min_value=0), max_size=6),
)
def test_long_lines_split_anywhere(
    harness: tuple[Harness, _Bugs], size: int, kind: str, points: list[int]
) -> None:
    # Around the limits: each line kind, from far below to far above its limit.
    filler = b"x" * size
    chunked = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = {
        "field": b"GET / HTTP/1.1\r\nHost: t\r\nX: " + filler + b"\r\n\r\n",
        "name": b"GET / HTTP/1.1\r\nHost: t\r\n" + filler + b": v\r\n\r\n",
        "target": b"GET /" + filler + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        "chunk-ext": chunked + b"3;" + filler + b"\r\nabc\r\n0\r\n\r\n",
        "trailer": chunked + b"3\r\nabc\r\n0\r\nX: " + filler + b"\r\n\r\n",
        "body": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (size, filler)
        + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    }[kind]
    h, _ = harness
    before = h.stats.requests
    check(harness, data, points, lose=False)
    statuses = [r.status for r in parse_responses(h.connect().feed(data).output)]
    # Whole or split, the same answer.
    split = [r.status for r in parse_responses(h.connect().feed(*cut(data, points)).output)]
    assert statuses == split
    assert h.stats.requests > before or statuses[-1] in (400, 414, 431)
