"""Process and socket facts from Linux's ``/proc``, read the way ``ps`` and ``ss`` read them.

Rules: this is the one place that parses ``/proc/<pid>/stat``,
``/proc/<pid>/fd``, ``/proc/net/tcp{,6}``, ``/proc/net/udp{,6}`` and
``/proc/net/netstat``; the port guard, ``status``, the probe, the benchmark,
the scripts and the tests all ask here.  It imports nothing from reuseport,
starts nothing and never signals anything.  A process that vanishes while we
look is simply not reported (``/proc`` changes under us all the time); a
table that cannot be read at all (``tcp_listeners``, ``udp_sockets``,
``netstat``) raises
``OSError``, because "nothing listens" and "we could not look" must never be
confused.

Why parents are found by scanning ``/proc/*/stat`` and not from
``/proc/<pid>/task/<tid>/children``: the latter needs CONFIG_PROC_CHILDREN,
which some kernels lack.  Why a process is identified by (pid, start time):
pids are recycled, and a test or a benchmark that kills "the worker it saw"
must not hit an unrelated process that got the same pid later.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "PROC",
    "ProcInfo",
    "TcpListener",
    "UdpSocket",
    "alive",
    "all_procs",
    "children_of",
    "cmdline",
    "descendants_of",
    "netstat",
    "parse_udp_table",
    "pids_holding",
    "proc_info",
    "socket_inodes_of",
    "tcp_listeners",
    "udp_sockets",
]

PROC = "/proc"  # where procfs is mounted (tests point it elsewhere)

_GONE_STATES = frozenset({"Z", "X", "x"})  # zombie, dead
_TCP_LISTEN = "0A"  # st column of a LISTEN row in /proc/net/tcp{,6}
_SOCKET_LINK = "socket:["


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcInfo:
    """The fields of ``/proc/<pid>/stat`` that reuseport uses."""

    pid: int
    comm: str  # the command name, at most 15 characters
    state: str  # R, S, D, Z, ...
    ppid: int
    start_time: int  # clock ticks after boot; with pid, identifies a process
    cpu_ticks: int  # user + system CPU time used so far, in clock ticks

    @property
    def running(self) -> bool:
        """Not a zombie, not dead."""
        return self.state not in _GONE_STATES


def proc_info(pid: int) -> ProcInfo | None:
    """Parse ``/proc/<pid>/stat``; None if there is no such process."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces and parentheses.
    head, _, tail = raw.rpartition(")")
    fields = tail.split()
    if len(fields) < 20:
        return None
    # fields[0] is field 3 (state); field 4 is ppid; 14 and 15 are utime and
    # stime; field 22 is starttime.
    return ProcInfo(
        pid=pid,
        comm=head.partition("(")[2],
        state=fields[0],
        ppid=int(fields[1]),
        start_time=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def alive(pid: int, start_time: int | None = None) -> bool:
    """True while ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    info = proc_info(pid)
    if info is None or not info.running:
        return False
    return start_time is None or info.start_time == start_time


def all_procs() -> list[ProcInfo]:
    """Every process ``/proc`` shows now (zombies included)."""
    found = []
    for entry in os.listdir(PROC):
        if entry.isdigit() and (info := proc_info(int(entry))) is not None:
            found.append(info)
    return found


def children_of(pid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids whose parent is ``pid`` (zombies only if asked), sorted."""
    return sorted(p.pid for p in all_procs() if p.ppid == pid and (include_zombies or p.running))


def descendants_of(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree, sorted."""
    by_parent: dict[int, list[int]] = {}
    for p in all_procs():
        if p.running:
            by_parent.setdefault(p.ppid, []).append(p.pid)
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = by_parent.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return sorted(found)


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces; "" if it is gone."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _socket_inodes(fd_dir: str) -> Iterable[int]:
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(_SOCKET_LINK):
            yield int(target[len(_SOCKET_LINK) : -1])


def socket_inodes_of(pid: int) -> set[int]:
    """Inodes of every socket open in process ``pid`` (empty if we may not look)."""
    return set(_socket_inodes(f"{PROC}/{pid}/fd"))


def pids_holding(inodes: Iterable[int]) -> dict[int, list[int]]:
    """For each socket inode, the pids that hold it open (where ``/proc`` lets us see)."""
    wanted = set(inodes)
    found: dict[int, list[int]] = {}
    if not wanted:
        return found
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        for inode in set(_socket_inodes(f"{PROC}/{entry}/fd")) & wanted:
            found.setdefault(inode, []).append(int(entry))
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpListener:
    """One LISTEN row of ``/proc/net/tcp`` or ``/proc/net/tcp6``."""

    ip: str  # "127.0.0.1", "::1"
    port: int
    uid: int
    inode: int


def _decode_ip(hex_addr: str, family: socket.AddressFamily) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc prints an address as 32-bit words, each in host (little endian) order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, packed)


def tcp_listeners(family: socket.AddressFamily) -> list[TcpListener]:
    """Every TCP socket in LISTEN state of ``family`` (AF_INET or AF_INET6).

    Raises ``OSError`` when the table cannot be read (no ``/proc``, or a
    kernel without IPv6 for ``/proc/net/tcp6``): the caller decides whether
    "unknown" is acceptable.
    """
    path = f"{PROC}/net/tcp" if family == socket.AF_INET else f"{PROC}/net/tcp6"
    with open(path, encoding="ascii") as fh:
        rows = fh.read().splitlines()[1:]
    found = []
    for row in rows:
        parts = row.split()
        if len(parts) < 10 or parts[3] != _TCP_LISTEN:
            continue
        ip_hex, _, port_hex = parts[1].partition(":")
        found.append(
            TcpListener(
                ip=_decode_ip(ip_hex, family),
                port=int(port_hex, 16),
                uid=int(parts[7]),
                inode=int(parts[9]),
            )
        )
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class UdpSocket:
    """One row of ``/proc/net/udp`` or ``/proc/net/udp6``: a bound UDP socket."""

    ip: str  # local address: "127.0.0.1", "::1"
    port: int
    uid: int
    inode: int
    rx_queue: int  # bytes waiting to be read (the kernel's rmem_alloc: datagrams plus overhead)
    drops: int  # datagrams the socket dropped (receive buffer full, bad checksum, ...)
    connected: bool  # st 01: connect()ed to one peer (a client's socket)


_UDP_ESTABLISHED = "01"


def parse_udp_table(text: str, family: socket.AddressFamily) -> list[UdpSocket]:
    """The rows of a ``/proc/net/udp{,6}`` table; rows that do not parse are skipped.

    Columns (``udp4_format_sock`` in the kernel): sl, local address, remote
    address, st, ``tx_queue:rx_queue`` (hex), ``tr:tm->when``, retrnsmt, uid,
    timeout, inode, ref, pointer, drops.
    """
    found = []
    for row in text.splitlines()[1:]:
        parts = row.split()
        if len(parts) < 13:
            continue
        try:
            ip_hex, _, port_hex = parts[1].partition(":")
            _tx, _, rx = parts[4].partition(":")
            found.append(
                UdpSocket(
                    ip=_decode_ip(ip_hex, family),
                    port=int(port_hex, 16),
                    uid=int(parts[7]),
                    inode=int(parts[9]),
                    rx_queue=int(rx, 16),
                    drops=int(parts[12]),
                    connected=parts[3] == _UDP_ESTABLISHED,
                )
            )
        except ValueError:
            continue
    return found


def udp_sockets(family: socket.AddressFamily) -> list[UdpSocket]:
    """Every UDP socket of ``family`` (AF_INET or AF_INET6) bound in this network namespace.

    Raises ``OSError`` when the table cannot be read (no ``/proc``, or a
    kernel without IPv6 for ``/proc/net/udp6``).
    """
    path = f"{PROC}/net/udp" if family == socket.AF_INET else f"{PROC}/net/udp6"
    with open(path, encoding="ascii") as fh:
        return parse_udp_table(fh.read(), family)


def netstat() -> dict[str, dict[str, int]]:
    """The counters of ``/proc/net/netstat`` by section: ``{"TcpExt": {"ListenOverflows": 3}}``.

    They count for the whole network namespace (a container's own, or the
    host's), not for one process.  The file pairs a line of names with a line
    of values per section.  Raises ``OSError`` when it cannot be read.
    """
    with open(f"{PROC}/net/netstat", encoding="ascii") as fh:
        lines = fh.read().splitlines()
    found: dict[str, dict[str, int]] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        section, _, name_text = names.partition(":")
        other, _, value_text = values.partition(":")
        if section != other:
            continue
        counters: dict[str, int] = {}
        for name, value in zip(name_text.split(), value_text.split(), strict=False):
            try:
                counters[name] = int(value)
            except ValueError:
                continue
        found[section] = counters
    return found
