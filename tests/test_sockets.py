"""``reuseport.sockets``: binding in both modes, adopting fds, the port guard.

Real sockets on loopback, port 0 everywhere; the port under test is read back
with ``getsockname()``.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from features import requires_ipv6, requires_reuseport, requires_reuseport_ipv6
from support import listening_inodes, socket_inodes_of

from reuseport import procfs
from reuseport.config import BindAddress, parse_bind
from reuseport.errors import BindError, ExitCode, PlatformError, PortGuardError
from reuseport.sockets import (
    SocketSetupError,
    Step,
    adopt,
    bind_reuseport,
    bind_shared,
    check_port_guard,
    find_listeners,
    open_socket,
    reserve_port,
    socket_inode,
)

LOOPBACK = parse_bind("127.0.0.1:0")


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def _at(sock: socket.socket) -> BindAddress:
    return LOOPBACK.with_port(_port(sock))


def _opt(sock: socket.socket, name: int) -> int:
    value: int = sock.getsockopt(socket.SOL_SOCKET, name)
    return value


@pytest.fixture
def foreign() -> Iterator[socket.socket]:
    """A listener with SO_REUSEPORT on 127.0.0.1, as a port hijacker would open it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


# ------------------------------------------------------------------ bind_reuseport
@requires_reuseport
def test_bind_reuseport_listens_non_blocking_with_the_option_set() -> None:
    with bind_reuseport(LOOPBACK, 16) as sock:
        assert _port(sock) > 0
        assert _opt(sock, socket.SO_REUSEPORT) == 1
        assert _opt(sock, socket.SO_ACCEPTCONN) == 1
        assert sock.getblocking() is False
        assert socket_inode(sock) in listening_inodes(_port(sock))


@requires_reuseport
def test_bind_reuseport_sockets_join_one_group() -> None:
    with bind_reuseport(LOOPBACK, 16) as first:
        addr = _at(first)
        with bind_reuseport(addr, 16) as second, bind_reuseport(addr, 16) as third:
            inodes = {socket_inode(s) for s in (first, second, third)}
            assert listening_inodes(addr.port) == inodes


@requires_reuseport
def test_bind_reuseport_refuses_to_share_with_a_plain_listener() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        addr = _at(plain)
        with pytest.raises(BindError, match=r"address already in use \(EADDRINUSE\)") as info:
            bind_reuseport(addr, 16)
        assert str(addr) in str(info.value)
        assert "reuseport mode" in str(info.value)  # the hint for this mode
        assert info.value.exit_code == ExitCode.BIND_ERROR


@requires_reuseport
def test_bind_reuseport_closes_its_socket_on_failure() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        before = socket_inodes_of(os.getpid())
        with pytest.raises(BindError):
            bind_reuseport(_at(plain), 16)
        assert socket_inodes_of(os.getpid()) == before


@requires_reuseport
def test_bind_reuseport_unavailable_address() -> None:
    # 192.0.2.0/24 is TEST-NET-1: no interface here has it.
    with pytest.raises(BindError, match=r"no local interface has that address \(EADDRNOTAVAIL\)"):
        bind_reuseport(parse_bind("192.0.2.1:0"), 16)


@requires_reuseport
def test_reserve_port_binds_without_listening() -> None:
    with reserve_port(LOOPBACK) as reservation:
        addr = _at(reservation)
        assert _opt(reservation, socket.SO_ACCEPTCONN) == 0
        assert listening_inodes(addr.port) == set()
        # Workers join the reserved port; the reservation takes no connections.
        with bind_reuseport(addr, 16) as worker:
            assert listening_inodes(addr.port) == {socket_inode(worker)}


@requires_reuseport_ipv6
def test_bind_reuseport_ipv6_is_v6only() -> None:
    with bind_reuseport(parse_bind("[::1]:0"), 16) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def _fail_v6only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make setsockopt(IPV6_V6ONLY) fail with EINVAL, as a kernel without it would."""
    real = socket.socket.setsockopt

    def setsockopt(sock: socket.socket, level: int, name: int, *value: object) -> None:
        if (level, name) == (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real(sock, level, name, *value)  # type: ignore[call-overload]

    monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)


@requires_ipv6
@pytest.mark.parametrize("bind", [bind_reuseport, bind_shared], ids=["reuseport", "shared"])
def test_a_failing_ipv6_only_option_closes_the_socket(
    bind: Callable[[BindAddress, int], socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_v6only(monkeypatch)
    before = socket_inodes_of(os.getpid())
    with pytest.raises(BindError, match=r"cannot create an IPv6 socket for \[::1\]:0 \(EINVAL\)"):
        bind(parse_bind("[::1]:0"), 16)
    assert socket_inodes_of(os.getpid()) == before


# ------------------------------------------------------------------ open_socket
def test_open_socket_names_the_step_that_failed() -> None:
    with bind_shared(LOOPBACK, 16) as taken:
        before = socket_inodes_of(os.getpid())
        with pytest.raises(SocketSetupError) as info:
            open_socket(
                socket.AF_INET,
                socket.SOCK_STREAM,
                ("127.0.0.1", _port(taken)),
                reuseport=False,
                backlog=16,
            )
        assert info.value.step is Step.BIND
        assert info.value.errno == errno.EADDRINUSE
        assert socket_inodes_of(os.getpid()) == before


@requires_reuseport
def test_open_socket_without_backlog_binds_a_datagram_socket() -> None:
    with open_socket(
        socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0), reuseport=True, backlog=None
    ) as udp:
        assert udp.type == socket.SOCK_DGRAM
        assert _opt(udp, socket.SO_REUSEPORT) == 1
        assert _port(udp) > 0


# ------------------------------------------------------------------ bind_shared
def test_bind_shared_listens_with_reuseaddr() -> None:
    with bind_shared(LOOPBACK, 16) as sock:
        assert _opt(sock, socket.SO_REUSEADDR) == 1
        assert _opt(sock, socket.SO_REUSEPORT) == 0
        assert _opt(sock, socket.SO_ACCEPTCONN) == 1
        assert sock.getblocking() is False
        assert listening_inodes(_port(sock)) == {socket_inode(sock)}


def test_bind_shared_twice_is_address_in_use() -> None:
    with bind_shared(LOOPBACK, 16) as sock:
        addr = _at(sock)
        with pytest.raises(BindError, match=r"address already in use \(EADDRINUSE\)") as info:
            bind_shared(addr, 16)
        assert f"cannot listen on {addr}" in str(info.value)


@requires_ipv6
def test_bind_shared_ipv6() -> None:
    with bind_shared(parse_bind("[::1]:0"), 16) as sock:
        assert sock.getsockname()[0] == "::1"
        assert socket_inode(sock) in listening_inodes(_port(sock))


# ------------------------------------------------------------------ adopt
def test_adopt_accepts_a_listening_socket() -> None:
    with socket.socket() as original:
        original.bind(("127.0.0.1", 0))
        original.listen()
        fd = os.dup(original.fileno())
        with adopt(fd) as adopted:
            assert adopted.fileno() == fd
            assert adopted.getblocking() is False
            assert socket_inode(adopted) == socket_inode(original)


def test_adopt_rejects_a_socket_that_does_not_listen() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(
            BindError, match=rf"fd {bound.fileno()} is a socket that does not listen"
        ):
            adopt(bound.fileno())
        # The rejected fd still belongs to the caller: adopt did not close it.
        assert _port(bound) > 0


def test_adopt_rejects_a_datagram_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(BindError, match=r"is not a stream socket"):
            adopt(udp.fileno())
        assert udp.fileno() >= 0


def test_adopt_rejects_a_non_socket() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(BindError, match=rf"fd {read_fd} is not a usable socket \(ENOTSOCK\)"):
            adopt(read_fd)
        os.fstat(read_fd)  # still open
    finally:
        os.close(read_fd)
        os.close(write_fd)


# ------------------------------------------------------------------ port guard
@requires_reuseport
def test_find_listeners_reports_inode_uid_and_pid(foreign: socket.socket) -> None:
    addr = _at(foreign)
    (info,) = find_listeners(addr)
    assert info.inode == socket_inode(foreign)
    assert info.uid == os.getuid()
    assert os.getpid() in info.pids
    assert info.local == str(addr)


def test_find_listeners_sees_a_wildcard_listener_for_loopback() -> None:
    with socket.socket() as wildcard:
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        (info,) = find_listeners(_at(wildcard))
        assert info.inode == socket_inode(wildcard)
        assert info.local == f"0.0.0.0:{_port(wildcard)}"


@requires_reuseport
def test_find_listeners_ignores_bound_but_not_listening_sockets() -> None:
    with reserve_port(LOOPBACK) as reservation:
        assert find_listeners(_at(reservation)) == []


def test_find_listeners_ignores_another_address_on_the_same_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.2", 0))
        other.listen()
        assert find_listeners(parse_bind(f"127.0.0.1:{_port(other)}")) == []


@requires_reuseport
def test_port_guard_refuses_a_foreign_listener(foreign: socket.socket) -> None:
    addr = _at(foreign)
    with pytest.raises(PortGuardError, match="refusing to start") as info:
        check_port_guard(addr)
    message = str(info.value)
    assert f"something already listens on {addr}" in message
    assert f"pid {os.getpid()}" in message
    assert f"uid {os.getuid()}" in message
    assert info.value.exit_code == ExitCode.BIND_ERROR
    # Without the guard the hijack would work: the kernel lets us join.
    with bind_reuseport(addr, 16):
        pass


@requires_reuseport
def test_port_guard_accepts_our_own_listeners(foreign: socket.socket) -> None:
    check_port_guard(_at(foreign), own_inodes=[socket_inode(foreign)])


@requires_reuseport
def test_port_guard_passes_a_free_port_and_port_zero() -> None:
    with reserve_port(LOOPBACK) as reservation:
        check_port_guard(_at(reservation))  # bound, not listening: not a listener
    check_port_guard(LOOPBACK)


@pytest.fixture
def no_proc_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``reuseport.procfs`` at an empty folder: /proc/net/tcp cannot be read."""
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    return tmp_path


@requires_reuseport
def test_port_guard_fails_closed_when_proc_net_tcp_cannot_be_read(no_proc_net: Path) -> None:
    addr = parse_bind("127.0.0.1:8000")
    with pytest.raises(PlatformError) as info:
        check_port_guard(addr)
    message = str(info.value)
    assert f"reading {no_proc_net}/net/tcp failed (ENOENT)" in message
    assert f"who else listens on {addr}" in message
    assert "Mount /proc" in message
    assert "--mode shared" in message
    assert info.value.exit_code == ExitCode.PLATFORM_ERROR


def test_port_guard_fails_closed_for_ipv6_too(no_proc_net: Path) -> None:
    with pytest.raises(PlatformError, match=rf"reading {no_proc_net}/net/tcp6 failed"):
        find_listeners(parse_bind("[::1]:8000"))
