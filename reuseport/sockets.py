"""Listening sockets: create them for either mode, check adopted ones, guard ports.

Rules: every function that creates a socket closes it on any failure before
re-raising.  OS errors become ``BindError`` / ``PlatformError`` whose message
names the address, the errno name and the way out.  SO_REUSEPORT errors are
never swallowed.

The port guard exists because SO_REUSEPORT has no notion of "the same
application": any process of the same UID that sets the option can bind the
same ip:port and silently receive a share of the connections.  Before joining
a group we list the LISTEN rows for the port in /proc/net/tcp{,6} and refuse
if any of them is not ours.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from .config import BindAddress
from .errors import BindError, PlatformError, PortGuardError

__all__ = [
    "ListenerInfo",
    "adopt",
    "bind_reuseport",
    "bind_shared",
    "check_port_guard",
    "find_listeners",
    "listen_queue_depth",
    "reserve_port",
    "socket_inode",
]

_LISTEN_STATE = "0A"
# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32 rto, ato,
# snd_mss, rcv_mss, unacked, sacked.  For a LISTEN socket the kernel reports
# the accept-queue length in tcpi_unacked and the backlog in tcpi_sacked
# (tcp_get_info(), since Linux 2.6.18).
_TCP_INFO_LEN = 104
_TCP_INFO_HEAD = struct.Struct("=8B6I")
_TCP_LISTEN = 10  # tcpi_state of a listening socket


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _new_socket(addr: BindAddress) -> socket.socket:
    try:
        sock = socket.socket(addr.family, socket.SOCK_STREAM)
    except OSError as exc:
        if addr.family == socket.AF_INET6:
            raise BindError(
                f"cannot create an IPv6 socket for {addr} ({_errno_name(exc)}): "
                "IPv6 looks disabled on this machine; bind an IPv4 address instead"
            ) from None
        raise
    if addr.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _bind_error(addr: BindAddress, exc: OSError, mode_hint: str) -> BindError:
    name = _errno_name(exc)
    if exc.errno == errno.EADDRINUSE:
        return BindError(
            f"cannot listen on {addr}: address already in use ({name}); another program "
            f"listens there. Stop it, or choose another port with --bind{mode_hint}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(
            f"cannot listen on {addr}: no local interface has that address ({name}); "
            "use 127.0.0.1, 0.0.0.0 or an address `ip addr` shows"
        )
    if exc.errno == errno.EACCES:
        return BindError(
            f"cannot listen on {addr}: permission denied ({name}); ports below 1024 need "
            "root or CAP_NET_BIND_SERVICE, or choose a port >= 1024"
        )
    return BindError(f"cannot listen on {addr}: {exc.strerror} ({name})")


def bind_reuseport(addr: BindAddress, backlog: int, *, listen: bool = True) -> socket.socket:
    """A socket with SO_REUSEPORT set before bind, bound (and listening) on ``addr``."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise PlatformError(
            f"this platform ({sys.platform}) has no SO_REUSEPORT; use --mode shared"
        )
    sock = _new_socket(addr)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            raise PlatformError(
                f"setting SO_REUSEPORT on a socket for {addr} failed ({_errno_name(exc)}): "
                "the kernel does not support it; run `reuseport probe`, or use --mode shared"
            ) from None
        try:
            sock.bind(addr.sockaddr)
        except OSError as exc:
            raise _bind_error(
                addr,
                exc,
                " (in reuseport mode the other listener must belong to another user "
                "or not use SO_REUSEPORT)",
            ) from None
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def bind_shared(addr: BindAddress, backlog: int) -> socket.socket:
    """One SO_REUSEADDR socket that every worker will accept from."""
    sock = _new_socket(addr)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.sockaddr)
        except OSError as exc:
            raise _bind_error(addr, exc, "") from None
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def reserve_port(addr: BindAddress) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket so the port stays ours.

    Used in reuseport mode: with port 0 it picks the one port every worker
    will bind; in every case it keeps the port out of other hands while no
    worker listens (between respawns, or with an ondemand pool at zero).  A
    bound socket that does not listen receives no connections.
    """
    return bind_reuseport(addr, 0, listen=False)


def adopt(fd: int) -> socket.socket:
    """Wrap an inherited fd, checking it is a listening stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"fd {fd} is not a usable socket ({_errno_name(exc)})") from None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            raise BindError(f"fd {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise BindError(f"fd {fd} is a socket that does not listen")
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.detach()
        raise


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """A LISTEN socket found in /proc/net/tcp{,6}."""

    local: str  # "127.0.0.1:8000" / "[::1]:8000"
    inode: int
    uid: int
    pids: tuple[int, ...]  # processes holding it, where /proc lets us see


def _decode_addr(hex_addr: str, family: socket.AddressFamily) -> str:
    if family == socket.AF_INET:
        packed = bytes.fromhex(hex_addr)[::-1]  # host byte order (little endian)
        return socket.inet_ntop(socket.AF_INET, packed)
    raw = bytes.fromhex(hex_addr)
    # /proc prints IPv6 as four 32-bit words, each in host order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, packed)


def _proc_rows(family: socket.AddressFamily) -> Iterable[tuple[str, int, int, int]]:
    """(local ip, port, uid, inode) of each LISTEN row."""
    path = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    try:
        with open(path, encoding="ascii") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[3] != _LISTEN_STATE:
            continue
        ip_hex, port_hex = parts[1].split(":")
        yield _decode_addr(ip_hex, family), int(port_hex, 16), int(parts[7]), int(parts[9])


def _pids_by_inode(inodes: set[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    if not inodes:
        return found
    wanted = {f"socket:[{i}]": i for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and int(entry) not in found.setdefault(inode, []):
                found[inode].append(int(entry))
    return found


def _overlaps(addr: BindAddress, ip: str) -> bool:
    if ip == addr.host:
        return True
    wildcard = {"0.0.0.0", "::"}
    return ip in wildcard or addr.host in wildcard


def find_listeners(addr: BindAddress) -> list[ListenerInfo]:
    """Every LISTEN socket on ``addr``'s port whose address overlaps it."""
    if not sys.platform.startswith("linux"):
        return []
    rows = [
        (ip, uid, inode)
        for ip, port, uid, inode in _proc_rows(addr.family)
        if port == addr.port and _overlaps(addr, ip)
    ]
    pids = _pids_by_inode({inode for _, _, inode in rows})
    result = []
    for ip, uid, inode in rows:
        local = f"[{ip}]:{addr.port}" if addr.family == socket.AF_INET6 else f"{ip}:{addr.port}"
        result.append(
            ListenerInfo(local=local, inode=inode, uid=uid, pids=tuple(pids.get(inode, ())))
        )
    return result


def describe_owner(info: ListenerInfo) -> str:
    who = f"uid {info.uid}"
    if info.pids:
        names = []
        for pid in info.pids:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
                    names.append(f"pid {pid} ({fh.read().strip()})")
            except OSError:
                names.append(f"pid {pid}")
        who = ", ".join(names) + f", {who}"
    return who


def check_port_guard(addr: BindAddress, own_inodes: Iterable[int] = ()) -> None:
    """Raise ``PortGuardError`` if a socket that is not ours listens on ``addr``."""
    if addr.port == 0:
        return
    ours = set(own_inodes)
    foreign = [info for info in find_listeners(addr) if info.inode not in ours]
    if foreign:
        owners = "; ".join(f"{info.local} held by {describe_owner(info)}" for info in foreign)
        raise PortGuardError(
            f"refusing to start: something already listens on {addr} ({owners}). In reuseport "
            "mode a second listener of the same user would silently share the traffic. Stop "
            "that process, or choose another port with --bind"
        )


def listen_queue_depth(sock: socket.socket) -> tuple[int, int] | None:
    """``(connections waiting in the accept queue, backlog limit)`` of a listening TCP socket.

    None when the socket is not a listening TCP socket or the platform has no
    ``TCP_INFO`` (only Linux reports the queue this way).
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_HEAD.size:
        return None
    fields = _TCP_INFO_HEAD.unpack_from(raw)
    if fields[0] != _TCP_LISTEN:
        return None
    unacked, sacked = fields[12], fields[13]
    return unacked, sacked
