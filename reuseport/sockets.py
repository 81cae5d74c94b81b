"""Listening sockets: create them for either mode, check adopted ones, guard ports.

Rules: every listening socket is made by ``open_socket``, which closes it on
any failure before re-raising.  OS errors become ``BindError`` /
``PlatformError`` whose message names the address, the errno name and the way
out.  SO_REUSEPORT errors are never swallowed.

The port guard exists because SO_REUSEPORT has no notion of "the same
application": any process of the same UID that sets the option can bind the
same ip:port and silently receive a share of the connections.  Before joining
a group we list the LISTEN rows for the port in /proc/net/tcp{,6} (for a UDP
bind: every row of /proc/net/udp{,6}, since a UDP socket receives as soon as
it is bound) and refuse if any of them is not ours.  The guard fails closed:
if that table cannot be read on Linux, we refuse to start rather than guess
that nobody listens.

UDP binds go through the same functions: ``BindAddress.socktype`` says which
kind of socket to make, and a UDP socket is bound but never listens (its
group forms at ``bind()``).  ``datagram_queue`` is the UDP counterpart of
``listen_queue_depth``.

Unix socket files: a file left by a server that died is *stale* and is
removed before binding, but only after a connect to it is refused (nobody
listens); a file something still listens on, or a path that is not a socket,
is a ``BindError``.  The owner of a bound path (``UnixFile``) removes it at
stop only if the path is still the socket it made, so a server started since
on the same path keeps its file.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import stat
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import procfs
from .config import BindAddress, FdBind, UnixBind
from .errors import BindError, PlatformError, PortGuardError, ReuseportError, errno_name

__all__ = [
    "ListenerInfo",
    "SocketSetupError",
    "Step",
    "UnixFile",
    "adopt",
    "adopt_bind",
    "bind_reuseport",
    "bind_shared",
    "bind_unix",
    "check_port_guard",
    "datagram_queue",
    "describe_owner",
    "find_listeners",
    "listen_queue_depth",
    "open_socket",
    "reserve_port",
    "socket_inode",
]

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32 rto, ato,
# snd_mss, rcv_mss, unacked, sacked.  For a LISTEN socket the kernel reports
# the accept-queue length in tcpi_unacked and the backlog in tcpi_sacked
# (tcp_get_info(), since Linux 2.6.18).
_TCP_INFO_LEN = 104
_TCP_INFO_HEAD = struct.Struct("=8B6I")
_TCP_LISTEN = 10  # tcpi_state of a listening socket


class Step(enum.Enum):
    """The steps of ``open_socket``, so a caller can say which one failed."""

    CREATE = "socket()"
    V6ONLY = "setsockopt(IPV6_V6ONLY)"
    REUSEPORT = "setsockopt(SO_REUSEPORT)"
    REUSEADDR = "setsockopt(SO_REUSEADDR)"
    BIND = "bind()"
    LISTEN = "listen()"


class SocketSetupError(OSError):
    """An ``OSError`` from one step of ``open_socket``; ``step`` says which."""

    def __init__(self, step: Step, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.step = step


def open_socket(
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    sockaddr: tuple[Any, ...] | str,
    *,
    reuseport: bool,
    backlog: int | None,
) -> socket.socket:
    """A non-blocking socket bound to ``sockaddr``, listening if ``backlog`` is not None.

    ``reuseport`` sets SO_REUSEPORT (before bind, as the kernel requires),
    else SO_REUSEADDR; an IPv6 socket is IPv6-only, so ``[::]`` never takes
    IPv4 traffic behind the user's back.  The socket is closed on any
    failure; OS errors come out as ``SocketSetupError`` naming the step.
    This is the only place that creates a listening socket: the master, the
    workers and the probe all come here.
    """
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        raise SocketSetupError(Step.CREATE, exc) from exc
    step = Step.CREATE
    try:
        if family == socket.AF_INET6:
            step = Step.V6ONLY
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            step = Step.REUSEPORT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        elif family != socket.AF_UNIX:
            step = Step.REUSEADDR
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        step = Step.BIND
        sock.bind(sockaddr)
        if backlog is not None:
            step = Step.LISTEN
            sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        sock.close()
        raise SocketSetupError(step, exc) from exc
    except BaseException:
        sock.close()
        raise


def _bind_error(addr: BindAddress, exc: SocketSetupError, mode_hint: str) -> ReuseportError:
    """The message for a failed ``open_socket`` on ``addr``: what failed, the errno, the fix."""
    name = errno_name(exc)
    if exc.step in (Step.CREATE, Step.V6ONLY) and addr.family == socket.AF_INET6:
        return BindError(
            f"cannot create an IPv6 socket for {addr} ({name}): "
            "IPv6 looks disabled on this machine; bind an IPv4 address instead"
        )
    if exc.step is Step.REUSEPORT:
        return PlatformError(
            f"setting SO_REUSEPORT on a socket for {addr} failed ({name}): "
            "the kernel does not support it; run `reuseport probe`, or use --mode shared"
        )
    if exc.step is Step.CREATE:
        return BindError(f"cannot create a socket for {addr}: {exc.strerror} ({name})")
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
    """A socket with SO_REUSEPORT set before bind, bound (and listening) on ``addr``.

    A UDP socket never listens: it joins its group, and receives, at once.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise PlatformError(
            f"this platform ({sys.platform}) has no SO_REUSEPORT; use --mode shared"
        )
    try:
        return open_socket(
            addr.family,
            addr.socktype,
            addr.sockaddr,
            reuseport=True,
            backlog=backlog if listen and not addr.udp else None,
        )
    except SocketSetupError as exc:
        raise _bind_error(
            addr,
            exc,
            " (in reuseport mode the other listener must belong to another user "
            "or not use SO_REUSEPORT)",
        ) from None


def bind_shared(addr: BindAddress, backlog: int) -> socket.socket:
    """One SO_REUSEADDR socket that every worker will accept from (or read, for UDP)."""
    try:
        return open_socket(
            addr.family,
            addr.socktype,
            addr.sockaddr,
            reuseport=False,
            backlog=None if addr.udp else backlog,
        )
    except SocketSetupError as exc:
        raise _bind_error(addr, exc, "") from None


def reserve_port(addr: BindAddress) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket so the port stays ours.

    Used in reuseport mode: with port 0 it picks the one port every worker
    will bind; in every case it keeps the port out of other hands while no
    worker listens (between respawns, or with an ondemand pool at zero).  A
    bound socket that does not listen receives no connections.  A bound UDP
    socket does receive datagrams: ``Listeners`` steers them away from it and
    closes it once the first slot's socket has joined (see there).
    """
    return bind_reuseport(addr, 0, listen=False)


def adopt(fd: int, *, datagram: bool = False) -> socket.socket:
    """Wrap an inherited fd, checking it is a listening stream socket.

    With ``datagram`` a bound UDP socket passes too (a worker inheriting its
    slot's or the shared udp:// socket from the master).
    """
    hint = (
        "pass the number of a listening socket this process inherited "
        "(e.g. from systemd socket activation or a parent started with pass_fds)"
    )
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"fd {fd} is not a usable socket ({errno_name(exc)}): {hint}") from None
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if datagram and kind == socket.SOCK_DGRAM:
            sock.setblocking(False)
            return sock
        if kind != socket.SOCK_STREAM:
            raise BindError(f"fd {fd} is not a stream socket: {hint}")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise BindError(f"fd {fd} is a socket that does not listen: {hint}")
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.detach()
        raise


def adopt_bind(bind: FdBind) -> socket.socket:
    """The inherited listening socket of ``fd://N``, checked (``adopt``), not inheritable."""
    sock = adopt(bind.fd)
    try:
        sock.set_inheritable(False)  # our workers get it by fork, not by exec
    except BaseException:
        sock.detach()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class UnixFile:
    """The socket file a Unix bind made, to remove at stop if it is still ours."""

    path: str
    device: int
    inode: int

    def remove(self) -> bool:
        """Unlink the path if it is still the socket we bound; True if removed."""
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) != (self.device, self.inode):
                return False
            os.unlink(self.path)
        except OSError:
            return False
        return True


def _clear_stale_unix(bind: UnixBind) -> bool:
    """Remove a socket file nobody listens on; True if one was removed.

    Raises ``BindError`` if the path is not a socket or something listens.
    """
    path = bind.path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BindError(f"cannot listen on {bind}: {exc.strerror} ({errno_name(exc)})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(
            f"cannot listen on {bind}: the path exists and is not a socket; "
            "remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)  # a Unix connect completes or fails at once
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: stale
    except FileNotFoundError:
        return False
    except BlockingIOError:
        raise BindError(
            f"cannot listen on {bind}: another process listens there (its queue is full); "
            "stop it or choose another path"
        ) from None
    except OSError as exc:
        raise BindError(
            f"cannot listen on {bind}: cannot tell whether something listens there "
            f"({errno_name(exc)}); remove the file if it is stale, or choose another path"
        ) from None
    else:
        raise BindError(
            f"cannot listen on {bind}: another process listens there; "
            "stop it or choose another path"
        )
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BindError(
            f"cannot listen on {bind}: cannot remove the stale socket file "
            f"({errno_name(exc)}); remove it by hand or choose another path"
        ) from None
    return True


def bind_unix(bind: UnixBind, backlog: int, mode: int) -> tuple[socket.socket, UnixFile, bool]:
    """A listening Unix socket at ``bind.path`` with file permissions ``mode``.

    Returns the socket, its file (to remove at stop) and whether a stale
    file was removed first.
    """
    stale = _clear_stale_unix(bind)
    try:
        sock = open_socket(
            socket.AF_UNIX, socket.SOCK_STREAM, bind.path, reuseport=False, backlog=backlog
        )
    except SocketSetupError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"cannot listen on {bind}: the path was created again meanwhile "
                "(another server starting?); choose another path"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise BindError(
                f"cannot listen on {bind}: its folder does not exist; create it first"
            ) from None
        if exc.errno == errno.EACCES:
            raise BindError(
                f"cannot listen on {bind}: permission denied ({errno_name(exc)}); "
                "choose a folder this user may write to"
            ) from None
        raise BindError(f"cannot listen on {bind}: {exc.strerror} ({errno_name(exc)})") from None
    try:
        os.chmod(bind.path, mode)
        st = os.lstat(bind.path)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"cannot set the permissions of {bind} to {mode:o}: {exc.strerror} ({errno_name(exc)})"
        ) from None
    return sock, UnixFile(bind.path, st.st_dev, st.st_ino), stale


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """A LISTEN socket found in /proc/net/tcp{,6}."""

    local: str  # "127.0.0.1:8000" / "[::1]:8000"
    inode: int
    uid: int
    pids: tuple[int, ...]  # processes holding it, where /proc lets us see


def _overlaps(addr: BindAddress, ip: str) -> bool:
    if ip == addr.host:
        return True
    wildcard = {"0.0.0.0", "::"}
    return ip in wildcard or addr.host in wildcard


def _bound_rows(addr: BindAddress) -> list[tuple[str, int, int, int]]:
    """(ip, port, uid, inode) of the sockets that may share ``addr``'s traffic.

    TCP: the LISTEN rows.  UDP: every unconnected row (a bound UDP socket
    receives; a connected one only hears its own peer).
    """
    if addr.udp:
        return [
            (row.ip, row.port, row.uid, row.inode)
            for row in procfs.udp_sockets(addr.family)
            if not row.connected
        ]
    return [(row.ip, row.port, row.uid, row.inode) for row in procfs.tcp_listeners(addr.family)]


def find_listeners(addr: BindAddress) -> list[ListenerInfo]:
    """Every LISTEN socket (UDP: bound socket) on ``addr``'s port whose address overlaps it.

    Raises ``PlatformError`` on Linux when ``/proc/net/tcp{,6}`` (or
    ``udp{,6}``) cannot be read: "nobody listens" must never stand in for "we
    could not look".  Elsewhere there is no table to read and the answer is [].
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        table = _bound_rows(addr)
    except OSError as exc:
        where = exc.filename or f"{procfs.PROC}/net/{addr.transport.value}"
        raise PlatformError(
            f"cannot check who else listens on {addr}: reading {where} failed "
            f"({errno_name(exc)}), so the port guard cannot see a foreign listener that "
            "would silently share the traffic. Mount /proc (e.g. `mount -t proc proc /proc`), "
            "or use --mode shared"
        ) from None
    rows = [row for row in table if row[1] == addr.port and _overlaps(addr, row[0])]
    holders = procfs.pids_holding(row[3] for row in rows)
    result = []
    for ip, port, uid, inode in rows:
        local = f"[{ip}]:{port}" if addr.family == socket.AF_INET6 else f"{ip}:{port}"
        result.append(
            ListenerInfo(
                local=("udp://" if addr.udp else "") + local,
                inode=inode,
                uid=uid,
                pids=tuple(sorted(holders.get(inode, ()))),
            )
        )
    return result


def describe_owner(info: ListenerInfo) -> str:
    who = f"uid {info.uid}"
    if info.pids:
        names = []
        for pid in info.pids:
            proc = procfs.proc_info(pid)
            names.append(f"pid {pid} ({proc.comm})" if proc else f"pid {pid}")
        who = ", ".join(names) + f", {who}"
    return who


def check_port_guard(addr: BindAddress, own_inodes: Iterable[int] = ()) -> None:
    """Raise ``PortGuardError`` if a socket that is not ours listens on ``addr``.

    Raises ``PlatformError`` if the LISTEN table cannot be read (see
    ``find_listeners``): the guard fails closed.
    """
    if addr.port == 0:
        return
    ours = set(own_inodes)
    foreign = [info for info in find_listeners(addr) if info.inode not in ours]
    if foreign:
        owners = "; ".join(f"{info.local} held by {describe_owner(info)}" for info in foreign)
        raise PortGuardError(
            f"refusing to start: something already {'receives' if addr.udp else 'listens'} on "
            f"{addr} ({owners}). In reuseport mode a second socket of the same user would "
            "silently share the traffic. Stop that process, or choose another port with --bind"
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


_SO_MEMINFO = 55  # asm-generic; Python's socket module lacks it
_MEMINFO = struct.Struct("=I")  # SK_MEMINFO_RMEM_ALLOC, the first of the u32 array


def datagram_queue(sock: socket.socket) -> int | None:
    """Bytes waiting in a UDP socket's receive queue (0: nothing to read).

    ``SO_MEMINFO``'s receive-memory figure (what ``/proc/net/udp`` shows as
    ``rx_queue``): datagrams plus their overhead, so a zero-length datagram
    still counts.  ``FIONREAD`` would not do: on UDP it gives the size of the
    first datagram only.  None where ``SO_MEMINFO`` is missing (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 64)
    except OSError:
        return None
    if len(raw) < _MEMINFO.size:
        return None
    queued: int = _MEMINFO.unpack_from(raw)[0]
    return queued
