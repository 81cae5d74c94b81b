"""UDP without processes: bind parsing, the config rules, /proc/net/udp, detection,
hosting, the flow-hash program, ``Listeners`` with UDP groups, the status table.

Rules: real UDP sockets on 127.0.0.1 (and ::1 where the probe finds IPv6)
port 0, in this process; this process plays the workers (it binds a slot's
socket and hands the fd over with ``slot_opened``, as a worker does).  Where
a test needs to know which socket a datagram reached it reads every socket
without blocking; datagrams on loopback are queued by the time ``sendto``
returns, so no wait is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from features import requires_cbpf, requires_ipv6, requires_reuseport

from reuseport import procfs
from reuseport.apps import Hosting, detect, host
from reuseport.apps.base import WorkerContext
from reuseport.apps.datagram import DatagramApp
from reuseport.apps.demo import DemoApp
from reuseport.apps.mixed import MixedApp
from reuseport.bpf import attach_cbpf, flow_hash_program
from reuseport.config import (
    BindAddress,
    BindKind,
    Config,
    Interface,
    Mode,
    Transport,
    parse_bind,
)
from reuseport.control.render import render_status
from reuseport.errors import AppLoadError, BootError, ConfigError
from reuseport.listeners import Listeners
from reuseport.sockets import bind_reuseport, datagram_queue

TESTS = str(Path(__file__).resolve().parent)
UDP = parse_bind("udp://127.0.0.1:0")
TCP = parse_bind("127.0.0.1:0")


# ------------------------------------------------------------------ binds
@pytest.mark.parametrize(
    ("text", "host", "port", "family", "shown"),
    [
        ("udp://127.0.0.1:9000", "127.0.0.1", 9000, socket.AF_INET, "udp://127.0.0.1:9000"),
        ("UDP://0.0.0.0:53", "0.0.0.0", 53, socket.AF_INET, "udp://0.0.0.0:53"),
        ("udp://[::1]:9000", "::1", 9000, socket.AF_INET6, "udp://[::1]:9000"),
        ("udp://:9000", "0.0.0.0", 9000, socket.AF_INET, "udp://0.0.0.0:9000"),
        ("udp://localhost:0", "127.0.0.1", 0, socket.AF_INET, "udp://127.0.0.1:0"),
    ],
)
def test_udp_binds_parse(
    text: str, host: str, port: int, family: socket.AddressFamily, shown: str
) -> None:
    bind = parse_bind(text)
    assert isinstance(bind, BindAddress)
    assert (bind.host, bind.port, bind.family) == (host, port, family)
    assert bind.transport is Transport.UDP
    assert bind.udp
    assert bind.kind is BindKind.UDP
    assert bind.socktype == socket.SOCK_DGRAM
    assert str(bind) == shown
    assert bind.with_port(4242).transport is Transport.UDP
    tcp = parse_bind(text.lower().removeprefix("udp://") or ":0")
    assert isinstance(tcp, BindAddress)
    assert tcp.kind is BindKind.TCP
    assert tcp.socktype == socket.SOCK_STREAM


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("udp://", "expected udp://HOST:PORT"),
        ("udp://127.0.0.1", "expected udp://HOST:PORT"),
        ("udp://::1:9000", "put IPv6 addresses in brackets, e.g. udp://[::1]:8000"),
        ("udp://127.0.0.1:70000", "outside 0-65535"),
        ("udp://example.com:53", "is not an IP address"),
    ],
)
def test_bad_udp_binds_say_what_to_type(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="cannot parse bind") as info:
        parse_bind(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_tcp_and_udp_may_share_a_port_but_not_repeat() -> None:
    config = Config(binds=("127.0.0.1:9000", "udp://127.0.0.1:9000"))
    assert config.tcp_binds == (parse_bind("127.0.0.1:9000"),)
    assert config.udp_binds == (parse_bind("udp://127.0.0.1:9000"),)
    assert len(config.ip_binds) == 2
    assert config.stream_binds == (parse_bind("127.0.0.1:9000"),)
    with pytest.raises(ConfigError, match="given twice"):
        Config(binds=("udp://127.0.0.1:9000", "udp://127.0.0.1:9000"))


# ------------------------------------------------------------------ which app serves what
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"binds": ("127.0.0.1:0",), "datagram_app": "echo:Echo"},
            "--datagram-app serves udp:// binds and none is given",
        ),
        (
            {"binds": ("udp://127.0.0.1:0",), "app": "a:b", "datagram_app": "echo:Echo"},
            "APP would serve nothing",
        ),
        (
            {"binds": ("udp://127.0.0.1:0",), "datagram_app": "echo"},
            "cannot parse --datagram-app",
        ),
        (
            {
                "binds": ("udp://127.0.0.1:0",),
                "interface": "datagram",
                "datagram_app": "echo:Echo",
            },
            "--interface describes APP only",
        ),
        (
            {"binds": ("udp://127.0.0.1:0", "127.0.0.1:0"), "app": "a:b", "interface": "datagram"},
            "is a stream bind",
        ),
        ({"binds": ("127.0.0.1:0",), "app": "a:b", "interface": "datagram"}, "needs a udp://"),
        (
            {"binds": ("udp://127.0.0.1:0", "127.0.0.1:0"), "app": "web:app"},
            "runs two apps: APP for the stream binds and --datagram-app",
        ),
        (
            {"binds": ("udp://127.0.0.1:0",), "app": "web:app", "interface": "asgi"},
            "--interface asgi cannot serve udp:// binds",
        ),
    ],
)
def test_app_combinations_that_cannot_work_are_refused(
    kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"binds": ("udp://127.0.0.1:0",)},  # the demo's echo
        {"binds": ("udp://127.0.0.1:0", "127.0.0.1:0")},  # the demo serves both
        {"binds": ("udp://127.0.0.1:0",), "app": "echo:Echo"},  # APP is the datagram app
        {"binds": ("udp://127.0.0.1:0",), "datagram_app": "echo:Echo"},
        {"binds": ("udp://127.0.0.1:0", "127.0.0.1:0"), "datagram_app": "echo:Echo"},
        {"binds": ("udp://127.0.0.1:0", "127.0.0.1:0"), "app": "w:a", "datagram_app": "e:E"},
        {"binds": ("udp://127.0.0.1:0", "unix:/tmp/x.sock"), "app": "s:f", "interface": "socket"},
        {"binds": ("udp://127.0.0.1:0",), "app": "echo:Echo", "interface": "datagram"},
    ],
)
def test_app_combinations_that_work(kwargs: dict[str, object]) -> None:
    Config(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ /proc/net/udp
# Rows as the kernel prints them (udp4_format_sock), split only to fit the lines here.
UDP4 = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode ref pointer drops\n"
    " 7316: 0100007F:C515 00000000:0000 07 00000000:000009C0 00:00000000 00000000  1000        0"
    " 62894766 2 0000000087e36a5b 12\n"
    " 7400: 00000000:0035 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0"
    " 1234 2 0000000000000000 0\n"
    " garbage line\n"
)
UDP6 = (
    "  sl  local_address                         remote_address                        st"
    " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
    "  100: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 07"
    " 00000000:00000300 00:00000000 00000000     0        0 777 2 0000000000000000 3\n"
)


def test_the_udp_table_is_parsed_by_column() -> None:
    first, second = procfs.parse_udp_table(UDP4, socket.AF_INET)
    assert first == procfs.UdpSocket(
        ip="127.0.0.1",
        port=0xC515,
        uid=1000,
        inode=62894766,
        rx_queue=0x9C0,
        drops=12,
        connected=False,
    )
    assert (second.ip, second.port, second.connected) == ("0.0.0.0", 53, True)
    (v6,) = procfs.parse_udp_table(UDP6, socket.AF_INET6)
    assert (v6.ip, v6.port, v6.inode, v6.rx_queue, v6.drops) == ("::1", 9000, 777, 768, 3)


def test_udp_sockets_reads_both_tables_and_raises_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "udp").write_text(UDP4)
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    assert [row.inode for row in procfs.udp_sockets(socket.AF_INET)] == [62894766, 1234]
    with pytest.raises(FileNotFoundError):
        procfs.udp_sockets(socket.AF_INET6)


def test_a_real_socket_shows_its_queue_in_the_table_and_in_meminfo() -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        server.bind(("127.0.0.1", 0))
        assert datagram_queue(server) == 0
        for _ in range(3):
            client.sendto(b"", server.getsockname())  # empty datagrams count too
        queued = datagram_queue(server)
        assert queued is not None
        assert queued > 0
        inode = os.fstat(server.fileno()).st_ino
        (row,) = [r for r in procfs.udp_sockets(socket.AF_INET) if r.inode == inode]
        assert row.rx_queue == queued
        assert row.port == server.getsockname()[1]
        for _ in range(3):
            server.recv(16)
        assert datagram_queue(server) == 0


# ------------------------------------------------------------------ detection
def test_datagram_apps_are_detected_where_unambiguous() -> None:
    import apps_udp

    assert detect(apps_udp.Echo)[0] is Interface.DATAGRAM
    assert "DatagramProtocol subclass" in detect(apps_udp.Echo)[1]
    assert detect(apps_udp.partial_echo)[0] is Interface.DATAGRAM
    assert detect(apps_udp.make_echo)[0] is Interface.DATAGRAM
    assert "annotated to return Echo" in detect(apps_udp.make_echo)[1]
    # A bare factory could make either kind of protocol: only UDP binds decide it.
    assert detect(apps_udp.plain_factory)[0] is Interface.PROTOCOL
    interface, why = detect(apps_udp.plain_factory, udp_only=True)
    assert interface is Interface.DATAGRAM
    assert "every bind is udp://" in why
    with pytest.raises(AppLoadError, match=r"--interface protocol .* --interface datagram"):
        detect(apps_udp.Both)
    # A stream Protocol stays one.
    assert detect(asyncio.Protocol)[0] is Interface.PROTOCOL
    assert detect(functools.partial(asyncio.Protocol))[0] is Interface.PROTOCOL


def _ctx(config: Config) -> WorkerContext:
    return WorkerContext(pid=os.getpid(), slot=0, generation=1, mode=Mode.REUSEPORT, config=config)


def _host(*, streams: bool, datagrams: bool, **kwargs: object) -> Hosting:
    """``apps.host`` as a worker calls it: inside its loop (an ASGI app needs one to build)."""
    config = Config(app_dir=TESTS, **kwargs)  # type: ignore[arg-type]

    async def hosting() -> Hosting:
        return host(config, _ctx(config), streams=streams, datagrams=datagrams)

    return asyncio.run(hosting())


def test_hosting_picks_one_app_per_kind_of_socket() -> None:
    alone = _host(streams=False, datagrams=True, app="apps_udp:Echo", binds=(UDP,))
    assert isinstance(alone.app, DatagramApp)
    assert alone.interface == "datagram"
    by_flag = _host(streams=False, datagrams=True, datagram_app="apps_udp:make_echo", binds=(UDP,))
    assert isinstance(by_flag.app, DatagramApp)
    bare = _host(streams=False, datagrams=True, app="apps_udp:plain_factory", binds=(UDP,))
    assert isinstance(bare.app, DatagramApp)
    demo = _host(streams=True, datagrams=True, binds=(UDP, TCP))
    assert isinstance(demo.app, DemoApp)
    assert demo.interface == "protocol"
    mixed = _host(
        streams=True,
        datagrams=True,
        app="asgi_apps:Asgi2App",
        datagram_app="apps_udp:Echo",
        binds=(UDP, TCP),
    )
    assert isinstance(mixed.app, MixedApp)
    assert mixed.interface == "asgi+datagram"
    assert "--datagram-app: Echo, an asyncio.DatagramProtocol subclass" in mixed.reason
    assert mixed.app.datagram.streams is False

    async def factory() -> object:
        return mixed.app.protocol_factory()

    assert asyncio.run(factory()) is not None  # sibling rescue serves the TCP app


def test_an_app_on_the_wrong_kind_of_socket_is_a_boot_error_with_the_fix() -> None:
    with pytest.raises(BootError, match="cannot serve udp:// binds: it was taken for a asgi"):
        _host(streams=False, datagrams=True, app="asgi_apps:Asgi2App", binds=(UDP,))
    with pytest.raises(BootError, match="which serves udp:// binds only"):
        _host(streams=True, datagrams=False, app="apps_udp:Echo")
    # --interface auto gets past Config (it cannot import the app): the worker says it.
    with pytest.raises(BootError, match="cannot serve udp:// binds: it was taken for a protocol"):
        _host(streams=False, datagrams=True, app="asyncio:Protocol", binds=(UDP,))


# ------------------------------------------------------------------ the flow-hash program
def test_flow_hash_programs_are_tables_over_the_allowed_indices() -> None:
    assert flow_hash_program([3], socket.AF_INET) == [(0x06, 0, 0, 3)]
    v4 = flow_hash_program([0, 2, 5], socket.AF_INET)
    v6 = flow_hash_program([0, 2, 5], socket.AF_INET6)
    assert len(v6) > len(v4)  # four address words instead of one
    for program in (v4, v6):
        returns = [insn[3] for insn in program if insn[0] == 0x06]
        assert sorted(returns) == [0, 2, 5]
    with pytest.raises(ValueError, match=re.escape("1..255")):
        flow_hash_program([], socket.AF_INET)


def _group(host: str, family: socket.AddressFamily, size: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    port = 0
    for _ in range(size):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        socks.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.setblocking(False)
    return socks


def _read_all(socks: list[socket.socket]) -> dict[bytes, set[int]]:
    """Which sockets each sender's datagrams (payload = sender name) reached."""
    seen: dict[bytes, set[int]] = {}
    for index, sock in enumerate(socks):
        while True:
            try:
                data = sock.recv(64)
            except BlockingIOError:
                break
            seen.setdefault(data, set()).add(index)
    return seen


@requires_cbpf
@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        pytest.param("::1", socket.AF_INET6, marks=requires_ipv6),
    ],
)
def test_each_flow_keeps_one_member_and_excluded_members_get_none(
    host: str, family: socket.AddressFamily
) -> None:
    with contextlib.ExitStack() as stack:
        group = [stack.enter_context(s) for s in _group(host, family, 4)]
        attach_cbpf(group[0], flow_hash_program([0, 2, 3], family))
        clients = [stack.enter_context(socket.socket(family, socket.SOCK_DGRAM)) for _ in range(60)]
        address = group[0].getsockname()[:2]
        for _ in range(4):
            for n, client in enumerate(clients):
                client.sendto(b"%d" % n, address)
        seen = _read_all(group)
        assert len(seen) == 60, "every sender reached the group"
        assert all(len(members) == 1 for members in seen.values()), "a flow never moves"
        spread = Counter(next(iter(m)) for m in seen.values())
        assert 1 not in spread, "the excluded member got a flow"
        assert set(spread) == {0, 2, 3}, spread


# ------------------------------------------------------------------ Listeners with UDP groups
@contextlib.contextmanager
def udp_listeners(mode: Mode, *, slots: int = 0, tcp: bool = False) -> Iterator[Listeners]:
    listeners = Listeners(mode, (UDP, TCP) if tcp else (UDP,), 64)
    listeners.bind()
    try:
        for slot in range(slots):
            open_udp_slot(listeners, slot)
        yield listeners
    finally:
        listeners.close()


def open_udp_slot(listeners: Listeners, slot: int) -> None:
    """What a worker of a new slot does: bind each group's socket, hand over the fds."""
    listeners.will_open(slot)
    socks = [bind_reuseport(addr, 64) for addr in listeners.slot_binds]
    assert listeners.slot_opened(slot, [sock.detach() for sock in socks])


def send_from_many(listeners: Listeners, count: int, tag: bytes = b"") -> list[socket.socket]:
    """One datagram from each of ``count`` fresh client sockets (distinct flows)."""
    port = listeners.binds[0].port
    clients = []
    for n in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        clients.append(client)
        client.sendto(tag + b"%d" % n, ("127.0.0.1", port))
    return clients


def per_slot(listeners: Listeners) -> dict[int, int]:
    """How many queued datagrams each slot's UDP socket holds (read, so emptied)."""
    got = {}
    for slot in listeners.order:
        sock = listeners.for_slot(slot)[0]
        got[slot] = sum(len(v) for v in _read_all([sock]).values())
    return got


@requires_reuseport
@requires_cbpf
def test_the_reservation_hands_the_group_over_to_the_first_slot() -> None:
    with udp_listeners(Mode.REUSEPORT) as listeners:
        (reservation,) = listeners._reservations
        assert listeners.binds[0].port == reservation.getsockname()[1] != 0
        # A worker binds its socket (it joins the group at once) and only then
        # tells the master: what arrives meanwhile must reach it, not the reservation.
        listeners.will_open(0)
        first = bind_reuseport(listeners.binds[0], 64)
        clients = send_from_many(listeners, 30)
        assert listeners.slot_opened(0, [first.detach()])
        assert reservation.fileno() == -1, "the reservation closed once slot 0 joined"
        try:
            assert per_slot(listeners) == {0: 30}
        finally:
            for client in clients:
                client.close()
        assert listeners._reservations == []
        open_udp_slot(listeners, 1)
        open_udp_slot(listeners, 2)
        assert listeners.order == [0, 1, 2]
        clients = send_from_many(listeners, 90)
        try:
            got = per_slot(listeners)
        finally:
            for client in clients:
                client.close()
        assert sum(got.values()) == 90, "nothing went to a socket nobody reads"
        assert all(count > 0 for count in got.values()), got  # the kernel's hash spreads


@requires_reuseport
@requires_cbpf
def test_a_draining_udp_slot_gets_no_new_datagrams_and_leaves_on_release() -> None:
    with udp_listeners(Mode.REUSEPORT, slots=3, tcp=True) as listeners:
        assert listeners.siblings_of(0) == {
            1: listeners.rescue_sockets(1),
            2: listeners.rescue_sockets(2),
        }
        assert all(s.type == socket.SOCK_STREAM for s in listeners.rescue_sockets(1))
        listeners.begin_drain(1, allowed={0, 1, 2})
        assert listeners.steered_away() == [1]
        clients = send_from_many(listeners, 60, b"a")
        got = per_slot(listeners)
        assert got[1] == 0, got
        assert got[0] + got[2] == 60, got
        listeners.release(1)
        assert listeners.order == [0, 2]
        clients += send_from_many(listeners, 60, b"b")
        try:
            got = per_slot(listeners)
        finally:
            for client in clients:
                client.close()
        # Released: the kernel's group is [0, 2] again, as the master's is, and no
        # program is left to send a datagram to a stale index.
        assert sum(got.values()) == 60, got
        assert all(count > 0 for count in got.values()), got
        assert listeners.steered_away() == []


@requires_reuseport
def test_load_steering_leaves_udp_groups_alone() -> None:
    with udp_listeners(Mode.REUSEPORT, slots=2) as listeners:
        listeners.apply_steering({0})  # slot 1 "behind": a TCP group would skip it
        assert listeners.steered_away() == []


def test_shared_mode_binds_one_udp_socket_and_reports_it() -> None:
    with udp_listeners(Mode.SHARED) as listeners:
        (sock,) = listeners.held()
        assert sock.type == socket.SOCK_DGRAM
        assert listeners.for_slot(3) == [sock]
        assert listeners.describe("http") == [f"{listeners.binds[0]} (shared mode)"]
        clients = send_from_many(listeners, 5)
        try:
            (row,) = listeners.datagram_status()
        finally:
            for client in clients:
                client.close()
        assert row.bind == str(listeners.binds[0])
        assert row.slot is None
        assert row.queue is not None
        assert row.queue > 0
        assert row.drops == 0


@requires_reuseport
def test_datagram_status_has_a_row_per_slot_socket() -> None:
    with udp_listeners(Mode.REUSEPORT, slots=2, tcp=True) as listeners:
        rows = listeners.datagram_status()
        assert [(r.bind, r.slot) for r in rows] == [
            (str(listeners.binds[0]), 0),
            (str(listeners.binds[0]), 1),
        ]
        assert all(r.queue == 0 and r.drops == 0 for r in rows)
        assert listeners.describe("https")[1].startswith("https://127.0.0.1:")
        assert listeners.describe("https")[0].startswith("udp://127.0.0.1:")


# ------------------------------------------------------------------ rendering
def test_status_renders_the_udp_sockets_after_the_workers() -> None:
    text = render_status(
        {
            "master": {"pid": 1, "mode": "reuseport"},
            "workers": [],
            "udp": [
                {"bind": "udp://127.0.0.1:9000", "slot": 0, "queue": 768, "drops": 2},
                {"bind": "udp://[::1]:9000", "slot": None, "queue": None, "drops": None},
                "not a mapping",
            ],
        }
    )
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("UDP SOCKET")))
    assert lines[start].split() == ["UDP", "SOCKET", "SLOT", "QUEUE", "DROPS"]
    assert lines[start + 1].split() == ["udp://127.0.0.1:9000", "0", "768", "2"]
    assert lines[start + 2].split() == ["udp://[::1]:9000", "shared", "-", "-"]
    assert "UDP SOCKET" not in render_status({"workers": [], "udp": []})
