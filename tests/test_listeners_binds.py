"""``Listeners`` with binds that have one accept queue by nature (``unix:``, ``fd://``).

Rules: real sockets, no processes (this test process plays the worker that
opens a reuseport slot, as in ``test_listeners.py``).  Unix socket files live
in a short folder under /tmp: ``sun_path`` holds 107 bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from features import requires_reuseport

from reuseport.config import BindAddress, FdBind, Mode, UnixBind, parse_bind
from reuseport.errors import BindError
from reuseport.listeners import Listeners
from reuseport.sockets import bind_reuseport

BACKLOG = 16


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rp-lb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@requires_reuseport
def test_reuseport_slots_get_their_own_tcp_socket_and_the_shared_ones(folder: Path) -> None:
    path = str(folder / "s.sock")
    inherited = socket.create_server(("127.0.0.1", 0))
    fd = inherited.detach()  # the Listeners own it from here on, as an inherited fd
    binds = (parse_bind("127.0.0.1:0"), UnixBind(path=path), FdBind(fd=fd, name="web"))
    listeners = Listeners(Mode.REUSEPORT, binds, BACKLOG, uds_mode=0o640)
    listeners.bind()
    try:
        tcp = listeners.binds[0]
        assert isinstance(tcp, BindAddress)
        assert tcp.port != 0
        assert listeners.slot_binds == (tcp,)
        assert listeners.binds_to_open(0) == (tcp,)
        assert os.stat(path).st_mode & 0o777 == 0o640
        # What a worker of a new slot does: open the TCP socket, hand it over.
        listeners.will_open(0)
        own = bind_reuseport(tcp, BACKLOG)
        assert listeners.slot_opened(0, [own.detach()])
        assert listeners.binds_to_open(0) == ()
        socks = listeners.for_slot(0)
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_UNIX, socket.AF_INET]
        assert socks[2].fileno() == fd
        assert set(map(id, listeners.held())) == set(map(id, socks))
        lines = listeners.describe("https")
        assert lines[0] == f"https://{tcp} (reuseport mode)"
        assert lines[1].startswith(f"unix:{path} (one shared socket for every worker")
        assert lines[2].startswith(f"fd://{fd} [web] = https://127.0.0.1:")
        # A connection waiting on the Unix socket counts as queued (no TCP_INFO there).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            assert listeners.queued() == 1
        # A worker closes its copies; only the master removes the file.
        listeners.close_in_child(0)
        assert os.path.exists(path)
    finally:
        listeners.close()
    assert not os.path.exists(path)


def test_shared_mode_unix_bind_replaces_a_stale_file(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(folder / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # closed without unlink: stale
    listeners = Listeners(Mode.SHARED, (UnixBind(path=path),), BACKLOG)
    with caplog.at_level(logging.INFO, logger="reuseport.master"):
        listeners.bind()
    try:
        assert f"Removed the stale socket file {path}" in caplog.text
        assert listeners.describe("http") == [f"unix:{path} (shared mode)"]
        assert listeners.binds_to_open(0) == ()
        assert len(listeners.for_slot(3)) == 1
    finally:
        listeners.close()
    assert not os.path.exists(path)


def test_a_file_replaced_meanwhile_is_not_removed(folder: Path) -> None:
    path = str(folder / "swap.sock")
    listeners = Listeners(Mode.SHARED, (UnixBind(path=path),), BACKLOG)
    listeners.bind()
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newer:
        newer.bind(path)  # another server took the path
        listeners.close()
        assert os.path.exists(path)


def test_binding_fails_whole_and_closes_what_it_opened(folder: Path) -> None:
    path = str(folder / "first.sock")
    binds = (UnixBind(path=path), UnixBind(path=str(folder / "missing" / "x.sock")))
    listeners = Listeners(Mode.SHARED, binds, BACKLOG)
    with pytest.raises(BindError, match="its folder does not exist"):
        listeners.bind()
    assert listeners.held() == []
    assert not os.path.exists(path)
