"""The PROXY header parser (``reuseport.proxyproto``), without sockets."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reuseport.proxyproto import (
    MAX_V1,
    MAX_V2,
    V2_SIGNATURE,
    Command,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    block: bytes | None = None,
    *,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    """A v2 header; ``block`` defaults to 192.0.2.1:5000 -> 198.51.100.2:443."""
    if block is None:
        block = ipv4_block("192.0.2.1", "198.51.100.2", 5000, 443)
    size = len(block) if length is None else length
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", size)
        + block
    )


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --- v1 ---------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    header = parse(line + HTTP)
    assert header == ProxyHeader(
        version=1,
        command=Command.PROXY,
        length=len(line),
        source=("192.0.2.1", 56324),
        destination=("198.51.100.2", 443),
    )


def test_v1_tcp6_is_normalised() -> None:
    line = b"PROXY TCP6 2001:DB8:0:0::1 2001:db8::2 65535 0\r\n"
    header = parse(line)
    assert header is not None
    assert header.source == ("2001:db8::1", 65535)
    assert header.destination == ("2001:db8::2", 0)
    assert header.length == len(line)


@pytest.mark.parametrize(
    "line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", b"PROXY UNKNOWN x\r\n"]
)
def test_v1_unknown_keeps_the_peer(line: bytes) -> None:
    header = parse(line + HTTP)
    assert header == ProxyHeader(version=1, command=Command.LOCAL, length=len(line))


def test_v1_longest_line_is_accepted() -> None:
    longest = b"PROXY UNKNOWN ".ljust(MAX_V1 - 2, b"x") + b"\r\n"
    assert len(longest) == MAX_V1
    header = parse(longest)
    assert header is not None
    assert header.length == MAX_V1


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # not a header at all
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # lower case
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # bare LF
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n",  # CR inside
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  # unknown protocol
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # trailing space
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",  # short IPv4
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",  # octet out of range
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",  # IPv4 under TCP6
        b"PROXY TCP6 ::1 ::g 1 2\r\n",  # not hex
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port too big
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",  # negative port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",  # signed port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n",  # hex port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",  # empty port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000002\r\n",  # six digits
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n",  # NUL
        b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",  # not ASCII
        b"PROXY \r\n",  # nothing after the signature
        b"PROXY UNKNOWNX\r\n",  # not UNKNOWN
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80 + b"\r\n",  # too long (and malformed)
        b"PROXY UNKNOWN " + b"x" * MAX_V1,  # no CRLF within 107 bytes
        b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # no space after PROXY
    ],
)
def test_v1_malformed(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_v1_crlf_at_108_bytes_is_too_long() -> None:
    line = b"PROXY UNKNOWN ".ljust(MAX_V1 - 1, b"x") + b"\r\n"
    assert len(line) == MAX_V1 + 1
    with pytest.raises(ProxyHeaderError, match="107"):
        parse(line)


def test_v1_incomplete_waits_then_too_long_fails() -> None:
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    assert parse(b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 15)) is None  # 106 bytes, no CRLF yet
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 14))  # 107 bytes, no CRLF


@pytest.mark.parametrize("prefix", [b"P", b"PRO", b"PROXY", b"PROXY "])
def test_v1_signature_prefix_waits(prefix: bytes) -> None:
    assert parse(prefix) is None


@pytest.mark.parametrize("start", [b"G", b"PX", b"PROXX", b"\r\n\r\n\x01", b"\x16\x03\x01"])
def test_a_wrong_start_fails_at_once(start: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(start)


def test_empty_waits() -> None:
    assert parse(b"") is None


# --- v2 ---------------------------------------------------------------------------


def test_v2_proxy_ipv4() -> None:
    data = v2()
    header = parse(data + HTTP)
    assert header == ProxyHeader(
        version=2,
        command=Command.PROXY,
        length=16 + 12,
        source=("192.0.2.1", 5000),
        destination=("198.51.100.2", 443),
    )


def test_v2_proxy_ipv6() -> None:
    data = v2(family=2, block=ipv6_block("2001:db8::7", "::1", 1, 65535))
    header = parse(data)
    assert header is not None
    assert header.source == ("2001:db8::7", 1)
    assert header.destination == ("::1", 65535)
    assert header.length == 16 + 36


def test_v2_tlvs_are_skipped_by_their_length() -> None:
    tlvs = tlv(0x05, b"unique-id") + tlv(0xEA, b"\x01vpce-0123") + tlv(0x04, b"") + tlv(0x20, b"x")
    data = v2(block=ipv4_block("10.0.0.1", "10.0.0.2", 1234, 80) + tlvs)
    header = parse(data + HTTP)
    assert header is not None
    assert header.length == len(data)
    assert header.source == ("10.0.0.1", 1234)


def test_v2_largest_header_is_accepted() -> None:
    block = ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)
    filler = tlv(0x04, b"\x00" * (0xFFFF - len(block) - 3))
    data = v2(block=block + filler)
    assert len(data) == MAX_V2
    header = parse(data)
    assert header is not None
    assert header.length == MAX_V2


@pytest.mark.parametrize("family", [1, 2])
def test_v2_local_keeps_the_peer(family: int) -> None:
    # The balancer's own health check: whatever the block holds is skipped.
    data = v2(command=0, family=family, block=b"\xff" * 7)
    assert parse(data + HTTP) == ProxyHeader(version=2, command=Command.LOCAL, length=16 + 7)
    assert parse(v2(command=0, family=0, transport=0, block=b"")) == ProxyHeader(
        version=2, command=Command.LOCAL, length=16
    )


@pytest.mark.parametrize(("family", "size"), [(0, 0), (0, 5), (3, 216)])
def test_v2_proxy_without_an_ip_keeps_the_peer(family: int, size: int) -> None:
    data = v2(family=family, transport=1, block=b"\x00" * size)
    header = parse(data)
    assert header == ProxyHeader(version=2, command=Command.PROXY, length=16 + size)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (v2(version=1), "version"),
        (v2(version=3), "version"),
        (v2(command=2), "command"),
        (v2(command=0xF), "command"),
        (v2(family=4), "family"),
        (v2(transport=3), "family"),
        (v2(transport=2), "datagram"),  # UDP over our TCP stream
        (v2(transport=0), "datagram"),
        (v2(block=b"\x00" * 11), "needs 12"),
        (v2(family=2, block=b"\x00" * 35), "needs 36"),
        (v2(family=3, block=b"\x00" * 215), "needs 216"),
        (v2(block=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2) + b"\x01"), "cut short"),
        (v2(block=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2) + b"\x01\x00"), "cut short"),
        (v2(block=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2) + b"\x01\x00\x02x"), "runs 1"),
        (
            v2(block=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2) + tlv(1, b"ok") + b"\x02\xff\xff"),
            "runs",
        ),
    ],
)
def test_v2_malformed(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_v2_waits_for_its_length() -> None:
    data = v2(block=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2) + tlv(1, b"x" * 100))
    for end in range(len(data)):
        assert parse(data[:end]) is None
    assert parse(data) is not None
    # The length field alone tells how much more to wait for.
    assert parse(v2(length=0xFFFF)[:16]) is None


def test_v2_a_wrong_signature_byte_fails_at_once() -> None:
    for at in range(12):
        wrong = bytearray(V2_SIGNATURE)
        wrong[at] ^= 0x40
        if at == 0:
            continue  # another first byte is another protocol (tested above)
        with pytest.raises(ProxyHeaderError):
            parse(bytes(wrong[: at + 1]))


# --- any header, any split ----------------------------------------------------------

HEADERS = [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
    b"PROXY UNKNOWN\r\n",
    v2(),
    v2(family=2, block=ipv6_block("2001:db8::7", "::1", 1, 65535) + tlv(5, b"id")),
    v2(command=0, family=0, transport=0, block=b""),
]


@pytest.mark.parametrize("header", HEADERS)
def test_a_header_split_at_every_byte(header: bytes) -> None:
    """Fed as a caller feeds it (bytes so far), every prefix waits and the whole is read."""
    whole = parse(header + HTTP)
    assert whole is not None
    assert whole.length == len(header)
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
        assert parse(header[:cut] + header[cut:]) == whole
    assert parse(header) == whole


@given(st.binary(max_size=200))
def test_any_bytes_give_a_header_none_or_the_error(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    if header is None:
        # Waiting is only for what could still become a header, and is bounded.
        assert data[:1] in (b"P", b"\r", b"")
        assert len(data) < MAX_V2
    else:
        assert 0 < header.length <= len(data)
        assert (header.source is None) == (header.destination is None)


@given(st.sampled_from(HEADERS), st.binary(max_size=40))
def test_what_follows_the_header_is_not_read(header: bytes, tail: bytes) -> None:
    parsed = parse(header + tail)
    assert parsed is not None
    assert parsed.length == len(header)
