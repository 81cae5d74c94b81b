"""``reuseport.procfs``: process and socket facts, read from the real /proc of this process.

Rules: no process is started here (the process-tree walkers are exercised by
every ``Server`` test through ``support``); the table parser is also fed a
fake ``/proc/net/tcp{,6}`` to pin the address decoding.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from features import requires_ipv6

from reuseport import procfs

# Two LISTEN rows (state 0A) and one ESTABLISHED (01), as Linux prints them.
_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4444 1
"""
_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5151 1
"""  # noqa: E501 - the real line length


def test_proc_info_of_this_process() -> None:
    info = procfs.proc_info(os.getpid())
    assert info is not None
    assert info.pid == os.getpid()
    assert info.ppid == os.getppid()
    assert info.running
    assert info.start_time > 0
    assert procfs.alive(os.getpid(), info.start_time)
    assert not procfs.alive(os.getpid(), info.start_time + 1)  # "another process, same pid"


def test_a_missing_process_is_none_and_not_alive() -> None:
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as fh:
        beyond = int(fh.read()) + 1  # no pid can be this large
    assert procfs.proc_info(beyond) is None
    assert not procfs.alive(beyond)
    assert procfs.cmdline(beyond) == ""
    assert procfs.socket_inodes_of(beyond) == set()


def test_this_process_is_a_child_of_its_parent() -> None:
    assert os.getpid() in procfs.children_of(os.getppid())
    assert os.getpid() in procfs.descendants_of(os.getppid())
    assert os.getpid() in {p.pid for p in procfs.all_procs()}


def test_cmdline_of_this_process() -> None:
    assert "python" in procfs.cmdline(os.getpid()).lower()


def test_a_listening_socket_is_in_the_table_and_held_by_us() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        inode = os.fstat(sock.fileno()).st_ino
        port = sock.getsockname()[1]
        rows = [row for row in procfs.tcp_listeners(socket.AF_INET) if row.inode == inode]
        assert rows == [procfs.TcpListener(ip="127.0.0.1", port=port, uid=os.getuid(), inode=inode)]
        assert inode in procfs.socket_inodes_of(os.getpid())
        assert procfs.pids_holding([inode]) == {inode: [os.getpid()]}
    assert procfs.pids_holding([]) == {}


@requires_ipv6
def test_an_ipv6_listener_is_in_the_tcp6_table() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        inode = os.fstat(sock.fileno()).st_ino
        (row,) = [r for r in procfs.tcp_listeners(socket.AF_INET6) if r.inode == inode]
        assert (row.ip, row.port) == ("::1", sock.getsockname()[1])


def test_table_parsing_decodes_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(_TCP)
    (tmp_path / "net" / "tcp6").write_text(_TCP6)
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    assert procfs.tcp_listeners(socket.AF_INET) == [
        procfs.TcpListener(ip="127.0.0.1", port=8000, uid=1000, inode=4242),
        procfs.TcpListener(ip="0.0.0.0", port=80, uid=0, inode=4343),
    ]
    assert procfs.tcp_listeners(socket.AF_INET6) == [
        procfs.TcpListener(ip="::1", port=8001, uid=1000, inode=5151),
    ]


def test_an_unreadable_table_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        procfs.tcp_listeners(socket.AF_INET)
