"""The HAProxy PROXY protocol header (v1 text, v2 binary): a pure parser.

Rules: nothing here does I/O.  ``parse(data)`` looks at the bytes a
connection has sent so far and says one of three things: the header is
complete (a ``ProxyHeader``, whose ``length`` is where the connection's own
bytes begin), more bytes are needed (None), or this is not a valid header
(``ProxyHeaderError``, with the reason for a debug line).  It can be called
again with a longer buffer after each read; it never asks for more than the
longest header it accepts (``MAX_V1`` bytes for v1, ``MAX_V2`` for v2), so a
caller that holds no more than what it was asked for is bounded.

Why so strict.  The header decides who the client is, so a bad one must not
be half-read: a wrong first byte, a v1 line without CRLF within 107 bytes, a
bare LF, an address that does not parse or does not match its family, a v2
version other than 2, an unknown command, family or transport, an address
block shorter than its family needs, or TLVs that do not tile the rest of the
block all end the connection.  Versions are told apart by their signature:
v1 starts with ``PROXY ``, v2 with a 12-byte binary signature that no text
protocol can start with.

What the header means (``ProxyHeader.source``/``destination``): the
addresses of a proxied TCP connection over IPv4 or IPv6.  They are None, and
the real peer stays the client, for a v1 ``UNKNOWN`` line, a v2 ``LOCAL``
command (the balancer's own connection, such as a health check), and a v2
``PROXY`` with the ``UNSPEC`` or ``UNIX`` family (no IP address to give;
the spec says to ignore the former).  v2 TLVs are checked for shape and
skipped: nothing here reads them.  The layout follows the PROXY protocol
specification (haproxy.org, ``doc/proxy-protocol.txt``).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

__all__ = [
    "MAX_V1",
    "MAX_V2",
    "V1_SIGNATURE",
    "V2_SIGNATURE",
    "Command",
    "ProxyHeader",
    "ProxyHeaderError",
    "parse",
]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107  # the longest v1 line the spec allows, CRLF included
_V2_FIXED = 16  # signature, version/command, family/transport, length
MAX_V2 = _V2_FIXED + 0xFFFF  # the length field is 16 bits: the spec's own maximum

# v2 family/transport byte (high nibble: family, low nibble: transport).
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM = 1
_TRANSPORTS = (0, 1, 2)  # UNSPEC, STREAM, DGRAM
_ADDRESS_BYTES = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (the peer's fault)."""


class Command(enum.Enum):
    """What the sender says the connection is."""

    PROXY = "proxy"  # relayed on behalf of a client (v1 TCP4/TCP6, v2 PROXY)
    LOCAL = "local"  # the sender's own connection (v1 UNKNOWN, v2 LOCAL)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProxyHeader:
    """A complete PROXY header (see the module docstring)."""

    version: int  # 1 or 2
    command: Command
    length: int  # bytes of the header: the connection's own bytes start here
    # (host, port) of the original client and of the address it connected
    # to; None when the real peer stays the client.
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of ``data``; None if more bytes are needed.

    Raises ``ProxyHeaderError`` as soon as the bytes cannot begin a valid
    header (see the module docstring).
    """
    data = bytes(data)
    if not data:
        return None
    if data[0] == V1_SIGNATURE[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyHeaderError(f"not a PROXY header: it starts with {data[:8]!r}")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    head = data[: len(V1_SIGNATURE)]
    if not V1_SIGNATURE.startswith(head):
        raise ProxyHeaderError(f"not a PROXY header: it starts with {head!r}")
    nl = data.find(b"\n", 0, MAX_V1)
    if nl < 0:
        if len(data) >= MAX_V1:
            raise ProxyHeaderError(f"v1 line without CRLF within {MAX_V1} bytes")
        if b"\r" in data[:-1]:
            raise ProxyHeaderError("v1 line with a CR not followed by LF")
        return None
    if nl == 0 or data[nl - 1] != 0x0D:
        raise ProxyHeaderError("v1 line ends with a bare LF (CRLF required)")
    line = data[len(V1_SIGNATURE) : nl - 1]
    if b"\r" in line:
        raise ProxyHeaderError("v1 line with a CR inside")
    length = nl + 1
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The sender could not tell the addresses: the rest of the line is ignored.
        return ProxyHeader(version=1, command=Command.LOCAL, length=length)
    parts = line.split(b" ")
    if len(parts) != 5:
        raise ProxyHeaderError(f"v1 line {line[:40]!r}: expected PROTO SRC DST SPORT DPORT")
    proto, src, dst, sport, dport = parts
    if proto == b"TCP4":
        version = 4
    elif proto == b"TCP6":
        version = 6
    else:
        raise ProxyHeaderError(f"v1 protocol {proto[:16]!r}: expected TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        length=length,
        source=(_v1_address(src, version), _v1_port(sport)),
        destination=(_v1_address(dst, version), _v1_port(dport)),
    )


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"v1 address {text[:46]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"v1 address {text[:46]!r} is not IPv{version} (TCP{version})")
    return str(address)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 0xFFFF:
        raise ProxyHeaderError(f"v1 port {text[:8]!r} is not a number in 0-65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    head = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyHeaderError(f"not a PROXY header: it starts with {head!r}")
    if len(data) < _V2_FIXED:
        return None
    version, command_code = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2 signature with version {version}")
    if command_code == 0:
        command = Command.LOCAL
    elif command_code == 1:
        command = Command.PROXY
    else:
        raise ProxyHeaderError(f"v2 command {command_code} (expected 0 LOCAL or 1 PROXY)")
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family not in _ADDRESS_BYTES or transport not in _TRANSPORTS:
        raise ProxyHeaderError(f"v2 family/transport byte {data[13]:#04x} is not defined")
    size = int.from_bytes(data[14:16], "big")
    length = _V2_FIXED + size
    if len(data) < length:
        return None
    if command is Command.LOCAL or family == _AF_UNSPEC:
        # No addresses to read (the spec says to ignore what an UNSPEC block
        # holds): the block is skipped, whatever it holds.
        return ProxyHeader(version=2, command=command, length=length)
    needed = _ADDRESS_BYTES[family]
    if size < needed:
        raise ProxyHeaderError(f"v2 address block of {size} bytes; the family needs {needed}")
    _check_tlvs(data, _V2_FIXED + needed, length)
    if family == _AF_UNIX:
        return ProxyHeader(version=2, command=command, length=length)
    if transport != _STREAM:
        raise ProxyHeaderError("v2 header for a datagram or unspecified transport on a stream")
    block = data[_V2_FIXED : _V2_FIXED + needed]
    if family == _AF_INET:
        src: str = str(ipaddress.IPv4Address(block[0:4]))
        dst: str = str(ipaddress.IPv4Address(block[4:8]))
        ports = block[8:12]
    else:
        src = str(ipaddress.IPv6Address(block[0:16]))
        dst = str(ipaddress.IPv6Address(block[16:32]))
        ports = block[32:36]
    return ProxyHeader(
        version=2,
        command=command,
        length=length,
        source=(src, int.from_bytes(ports[0:2], "big")),
        destination=(dst, int.from_bytes(ports[2:4], "big")),
    )


def _check_tlvs(data: bytes, start: int, end: int) -> None:
    """The TLVs in ``data[start:end]`` tile it exactly: type, 16-bit length, value."""
    at = start
    while at < end:
        if end - at < 3:
            raise ProxyHeaderError(f"v2 TLV cut short: {end - at} bytes left for its 3-byte head")
        value_end = at + 3 + int.from_bytes(data[at + 1 : at + 3], "big")
        if value_end > end:
            raise ProxyHeaderError(
                f"v2 TLV of type {data[at]:#04x} runs {value_end - end} bytes past the header"
            )
        at = value_end
