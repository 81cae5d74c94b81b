"""Response framing without sockets: feed ``ResponseFramer`` events, check the bytes."""

from __future__ import annotations

import pytest
from asgi_apps import parse_responses
from hypothesis import given
from hypothesis import strategies as st

from reuseport.http.framing import (
    NO_BODY_STATUS,
    DefaultHeaders,
    ResponseFramer,
    ResponseState,
)

SERVER = b"server: reuseport\r\n"
DATE = b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
DEFAULTS = DefaultHeaders(SERVER, DATE)


def framer(*, head: bool = False, http10: bool = False, keep_alive: bool = True) -> ResponseFramer:
    return ResponseFramer(DEFAULTS, head=head, http10=http10, keep_alive=keep_alive)


def respond(
    f: ResponseFramer,
    status: int,
    headers: list[tuple[bytes, bytes]],
    pieces: list[bytes],
    *,
    close: bool = False,
    flush_after_start: bool = False,
) -> bytes:
    """The wire bytes for one response sent as ``pieces`` (the last one ends it)."""
    f.start(status, headers, close)
    out = f.flush_head() if flush_after_start else b""
    for i, piece in enumerate(pieces):
        out += f.body(piece, i < len(pieces) - 1)
    return out


def split_head(raw: bytes) -> tuple[list[bytes], bytes]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    return head.split(b"\r\n"), rest


# --- choosing the framing -------------------------------------------------------


def test_single_body_without_length_gets_content_length_in_one_piece() -> None:
    f = framer()
    f.start(200, [(b"content-type", b"text/plain")])
    assert f.state is ResponseState.HEAD_HELD
    raw = f.body(b"hello", False)
    lines, body = split_head(raw)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1:] == [
        b"server: reuseport",
        b"date: Mon, 01 Jan 2024 00:00:00 GMT",
        b"content-type: text/plain",
        b"content-length: 5",
    ]
    assert body == b"hello"
    assert f.state is ResponseState.COMPLETE
    assert f.keep_alive
    assert f.bytes_sent == 5


def test_streamed_body_without_length_is_chunked() -> None:
    f = framer()
    raw = respond(f, 200, [], [b"one,", b"", b"two", b""])
    lines, rest = split_head(raw)
    assert b"transfer-encoding: chunked" in lines
    assert rest == b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"
    (response,) = parse_responses(raw)
    assert response.complete
    assert response.body == b"one,two"
    assert f.keep_alive


def test_last_piece_with_data_ends_the_chunks_in_the_same_bytes() -> None:
    f = framer()
    f.start(200, [])
    f.body(b"a", True)
    assert f.body(b"bc", False) == b"2\r\nbc\r\n0\r\n\r\n"


def test_app_content_length_is_kept_and_counted() -> None:
    f = framer()
    raw = respond(f, 200, [(b"Content-Length", b"6")], [b"abc", b"def"])
    lines, body = split_head(raw)
    assert [line for line in lines if line.lower().startswith(b"content-length")] == [
        b"Content-Length: 6"
    ]
    assert b"transfer-encoding: chunked" not in lines
    assert body == b"abcdef"
    assert f.keep_alive
    assert f.left == 0


def test_more_bytes_than_content_length_is_refused() -> None:
    f = framer()
    f.start(200, [(b"content-length", b"2")])
    with pytest.raises(RuntimeError, match="more body bytes than its Content-Length"):
        f.body(b"abc", False)


def test_fewer_bytes_than_content_length_ends_keep_alive() -> None:
    f = framer()
    respond(f, 200, [(b"content-length", b"10")], [b"abc"])
    assert f.state is ResponseState.COMPLETE
    assert f.left == 7
    assert not f.keep_alive


def test_app_chunked_transfer_encoding_gets_its_chunks_encoded() -> None:
    f = framer()
    raw = respond(f, 200, [(b"transfer-encoding", b"chunked")], [b"xy", b"z"])
    lines, rest = split_head(raw)
    assert lines.count(b"transfer-encoding: chunked") == 1
    assert rest == b"2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n"


def test_head_flushed_before_any_body_chooses_chunked() -> None:
    f = framer()
    f.start(200, [])
    head = f.flush_head()
    assert f.state is ResponseState.BODY
    assert b"transfer-encoding: chunked\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert f.flush_head() == b""  # nothing held any more
    assert f.body(b"late", False) == b"4\r\nlate\r\n0\r\n\r\n"


# --- HTTP/1.0 and keep-alive ------------------------------------------------------


def test_http10_stream_is_close_delimited() -> None:
    f = framer(http10=True)
    raw = respond(f, 200, [], [b"one,", b"two"])
    lines, body = split_head(raw)
    assert b"connection: close" in lines
    assert not any(line.startswith((b"transfer-encoding", b"content-length")) for line in lines)
    assert body == b"one,two"
    assert not f.keep_alive


def test_http10_keep_alive_is_said_explicitly() -> None:
    f = framer(http10=True)
    lines, _ = split_head(respond(f, 200, [], [b"x"]))
    assert b"connection: keep-alive" in lines
    assert b"content-length: 1" in lines
    assert f.keep_alive


def test_request_without_keep_alive_gets_connection_close() -> None:
    f = framer(keep_alive=False)
    lines, _ = split_head(respond(f, 200, [], [b"x"]))
    assert b"connection: close" in lines
    assert not f.keep_alive


def test_close_asked_by_the_server_overrides_keep_alive() -> None:
    f = framer()
    lines, _ = split_head(respond(f, 200, [], [b"x"], close=True))
    assert b"connection: close" in lines
    assert not f.keep_alive


def test_app_connection_close_is_not_doubled() -> None:
    f = framer()
    lines, _ = split_head(respond(f, 200, [(b"Connection", b"close")], [b"x"]))
    assert [line for line in lines if line.lower().startswith(b"connection")] == [
        b"Connection: close"
    ]
    assert not f.keep_alive


# --- responses without a body -------------------------------------------------------


def test_head_gets_the_length_of_the_computed_body_but_no_bytes() -> None:
    f = framer(head=True)
    raw = respond(f, 200, [], [b"twelve bytes"])
    lines, body = split_head(raw)
    assert b"content-length: 12" in lines
    assert body == b""
    assert f.bytes_sent == 12
    assert f.keep_alive


def test_head_with_empty_or_streamed_body_says_no_length() -> None:
    for pieces in ([b""], [b"a", b"b"]):
        f = framer(head=True)
        lines, body = split_head(respond(f, 200, [], pieces))
        assert not any(line.startswith((b"content-length", b"transfer-encoding")) for line in lines)
        assert body == b""
        assert f.keep_alive


def test_head_keeps_the_app_content_length_and_sends_nothing() -> None:
    f = framer(head=True)
    raw = respond(f, 200, [(b"content-length", b"100")], [b"short"])
    lines, body = split_head(raw)
    assert b"content-length: 100" in lines
    assert body == b""
    assert f.keep_alive  # no bytes were owed on the wire


@pytest.mark.parametrize("status", [204, 304, 101, 199])
def test_no_body_statuses_send_no_body_and_no_framing(status: int) -> None:
    f = framer()
    raw = respond(f, status, [], [b"ignored"])
    lines, body = split_head(raw)
    assert not any(line.startswith((b"content-length", b"transfer-encoding")) for line in lines)
    assert body == b""
    assert f.keep_alive


# --- headers and status ---------------------------------------------------------------


def test_app_server_and_date_replace_the_defaults() -> None:
    f = framer()
    raw = respond(f, 200, [(b"Server", b"mine")], [b""])
    lines, _ = split_head(raw)
    assert b"Server: mine" in lines
    assert SERVER.strip() not in lines
    assert DATE.strip() in lines

    f = framer()
    lines, _ = split_head(respond(f, 200, [(b"date", b"then")], [b""]))
    assert b"date: then" in lines
    assert DATE.strip() not in lines
    assert SERVER.strip() in lines


def test_defaults_follow_the_date() -> None:
    defaults = DefaultHeaders(SERVER)
    f = ResponseFramer(defaults, head=False, http10=False, keep_alive=True)
    assert SERVER.strip() in split_head(respond(f, 200, [], [b""]))[0]
    defaults.set_date(DATE)
    f = ResponseFramer(defaults, head=False, http10=False, keep_alive=True)
    lines, _ = split_head(respond(f, 200, [], [b""]))
    assert lines[1:3] == [SERVER.strip(), DATE.strip()]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x", b"a\r\nevil: 1"),
        (b"x", b"a\nb"),
        (b"x", b"a\rb"),
        (b"x", b"\r\n"),
        (b"x\r", b"a"),
        (b"x\ny", b"a"),
    ],
)
def test_header_with_cr_or_lf_is_refused(name: bytes, value: bytes) -> None:
    f = framer()
    with pytest.raises(RuntimeError, match="CR or LF"):
        f.start(200, [(b"ok", b"1"), (name, value), (b"fine", b"2")])
    assert f.state is ResponseState.WAITING


@pytest.mark.parametrize("status", [99, 600, "200", None])
def test_status_outside_the_range_is_refused(status: object) -> None:
    f = framer()
    with pytest.raises(RuntimeError, match="100-599"):
        f.start(status, [])  # type: ignore[arg-type]
    assert f.state is ResponseState.WAITING


def test_refuse_gives_a_closing_error_response() -> None:
    f = framer()
    raw = f.refuse(503)
    (response,) = parse_responses(raw)
    assert response.status == 503
    assert response.header(b"connection") == b"close"
    assert response.header(b"server") == b"reuseport"
    assert response.body == b"Service Unavailable"
    assert f.state is ResponseState.COMPLETE
    assert not f.keep_alive
    assert f.status == 503


# --- properties --------------------------------------------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
# Visible ASCII, space and tab: the framer checks only CR and LF (what could
# split the response); other control bytes are the app's business today.
_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=20
).map(str.encode)
_EXTRA = st.lists(
    st.tuples(_TOKEN, _VALUE).filter(
        lambda kv: kv[0] not in (b"content-length", b"transfer-encoding", b"connection")
    ),
    max_size=4,
)
_STATUS = st.sampled_from([200, 201, 204, 301, 304, 404, 500, 503])


@given(
    status=_STATUS,
    extra=_EXTRA,
    pieces=st.lists(st.binary(max_size=50), min_size=1, max_size=6),
    declare=st.sampled_from(["none", "length", "chunked"]),
    http10=st.booleans(),
    keep_alive=st.booleans(),
    flush=st.booleans(),
)
def test_any_response_parses_back_to_what_the_app_sent(
    status: int,
    extra: list[tuple[bytes, bytes]],
    pieces: list[bytes],
    declare: str,
    http10: bool,
    keep_alive: bool,
    flush: bool,
) -> None:
    total = b"".join(pieces)
    headers = list(extra)
    if declare == "length":
        headers.append((b"content-length", b"%d" % len(total)))
    elif declare == "chunked" and not http10:
        headers.append((b"transfer-encoding", b"chunked"))
    f = framer(http10=http10, keep_alive=keep_alive)
    raw = respond(f, status, headers, pieces, flush_after_start=flush)
    assert f.state is ResponseState.COMPLETE
    assert f.bytes_sent == len(total)
    assert f.keep_alive <= keep_alive  # we may end keep-alive, never grant it
    # A response the connection may reuse must delimit itself: another one
    # right behind it still parses as its own message.
    stream = raw + (respond(framer(), 200, [], [b"next"]) if f.keep_alive else b"")
    responses = parse_responses(stream)
    assert responses[0].status == status
    assert responses[0].body == (b"" if status in NO_BODY_STATUS else total)
    assert [k.lower() for k, _ in responses[0].headers].count(b"content-length") <= 1
    if f.keep_alive:
        assert [r.body for r in responses[1:]] == [b"next"]


@given(
    pieces=st.lists(st.binary(max_size=50), min_size=1, max_size=6),
    declare=st.sampled_from(["none", "length", "chunked"]),
)
def test_head_responses_carry_no_body_bytes(pieces: list[bytes], declare: str) -> None:
    headers = []
    if declare == "length":
        headers.append((b"content-length", b"%d" % len(b"".join(pieces))))
    elif declare == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    f = framer(head=True)
    raw = respond(f, 200, headers, pieces)
    assert raw.endswith(b"\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == 1
    assert f.keep_alive
