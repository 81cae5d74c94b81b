"""``bpf.py`` against the kernel: steering programs and the group bookkeeping.

Rules: real SO_REUSEPORT groups of listeners on 127.0.0.1, on a port held by
``reserve_port`` (bound, never listening: it must not be a member of the
group, which these tests also check).  A test connects N clients, then
accepts from every listener until all N are found, bounded by a deadline, and
asserts which listener got which share.  Skips only where the probe found no
cBPF attach (or detach) on this kernel.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from features import requires_cbpf, requires_cbpf_detach

from reuseport.bpf import Group, attach_cbpf, detach, steering_program
from reuseport.config import parse_bind
from reuseport.sockets import bind_reuseport, reserve_port

pytestmark = requires_cbpf

ACCEPT_TIMEOUT = 10.0


@contextlib.contextmanager
def reuseport_group(count: int) -> Iterator[list[socket.socket]]:
    """``count`` listeners in one group, listening in list order; closed on exit."""
    reservation = reserve_port(parse_bind("127.0.0.1:0"))
    addr = parse_bind(f"127.0.0.1:{reservation.getsockname()[1]}")
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            listeners.append(bind_reuseport(addr, 1024))
        for sock in listeners:
            sock.setblocking(False)
        yield listeners
    finally:
        for sock in listeners:
            sock.close()
        reservation.close()


def distribute(listeners: Sequence[socket.socket], connections: int) -> list[int]:
    """Connect ``connections`` clients; return how many each listener accepted.

    Listeners already closed (fileno -1) count 0.  Fails if a connection is
    not found in any listener within ``ACCEPT_TIMEOUT``.
    """
    port = next(s for s in listeners if s.fileno() >= 0).getsockname()[1]
    counts = [0] * len(listeners)
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for _ in range(connections):
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(client)
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        live = [(i, s) for i, s in enumerate(listeners) if s.fileno() >= 0]
        while sum(counts) < connections:
            left = deadline - time.monotonic()
            assert left > 0, f"accepted only {counts} of {connections} connections"
            readable, _, _ = select.select([s for _, s in live], [], [], min(left, 0.5))
            for i, sock in live:
                if sock not in readable:
                    continue
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    accepted.append(conn)
                    counts[i] += 1
    finally:
        for sock in [*clients, *accepted]:
            sock.close()
    return counts


# ------------------------------------------------------------------ the program
def test_program_shape() -> None:
    assert steering_program([3]) == [(0x06, 0, 0, 3)]
    program = steering_program([0, 2, 5])
    # ld random; mod 3; two tests; the last index; the two jump targets.
    assert len(program) == 2 + 2 + 1 + 2
    assert program[1] == (0x94, 0, 0, 3)
    returns = [insn[3] for insn in program if insn[0] == 0x06]
    assert sorted(returns) == [0, 2, 5]


@pytest.mark.parametrize("allowed", [[], list(range(256))])
def test_program_size_is_checked(allowed: list[int]) -> None:
    with pytest.raises(ValueError, match=r"steering needs 1\.\.255 allowed sockets"):
        steering_program(allowed)


def test_the_largest_program_loads() -> None:
    with reuseport_group(2) as listeners:
        # 255 allowed indices (most past the end: the kernel then hashes).
        attach_cbpf(listeners[0], steering_program([0, *range(2, 256)]))


# ------------------------------------------------------------------ steering on real sockets
def test_reservation_is_not_a_member_and_indices_follow_listen_order() -> None:
    """Bind four sockets, listen in reverse order: index i is the i-th to listen."""
    reservation = reserve_port(parse_bind("127.0.0.1:0"))
    addr = parse_bind(f"127.0.0.1:{reservation.getsockname()[1]}")
    socks = [bind_reuseport(addr, 128, listen=False) for _ in range(4)]
    try:
        order = [3, 1, 0, 2]
        for i in order:
            socks[i].listen(128)
            socks[i].setblocking(False)
        listeners = [socks[i] for i in order]  # listeners[index] = the socket at that index
        for index in range(4):
            attach_cbpf(listeners[0], steering_program([index]))
            counts = distribute(listeners, 20)
            assert counts == [20 if i == index else 0 for i in range(4)], (index, counts)
    finally:
        for sock in socks:
            sock.close()
        reservation.close()


def test_allowed_subset_gets_everything_and_the_excluded_nothing() -> None:
    with reuseport_group(4) as listeners:
        # Attached through a socket that is itself excluded: the program serves the group.
        attach_cbpf(listeners[3], steering_program([0, 2]))
        counts = distribute(listeners, 400)
        assert counts[1] == 0
        assert counts[3] == 0
        # Binomial(400, 1/2): 140 is more than 6 standard deviations below 200.
        assert min(counts[0], counts[2]) >= 140, counts


def test_spread_among_the_allowed_is_uniform() -> None:
    with reuseport_group(4) as listeners:
        attach_cbpf(listeners[0], steering_program([1, 2, 3]))
        counts = distribute(listeners, 600)
        assert counts[0] == 0
        # Binomial(600, 1/3): mean 200, sd 11.5.
        assert all(130 <= c <= 270 for c in counts[1:]), counts


def test_index_past_the_end_falls_back_to_hashing() -> None:
    with reuseport_group(3) as listeners:
        attach_cbpf(listeners[0], steering_program([7]))
        counts = distribute(listeners, 150)
        assert all(c > 0 for c in counts), counts


def test_reattach_replaces_the_program() -> None:
    with reuseport_group(3) as listeners:
        attach_cbpf(listeners[0], steering_program([0]))
        assert distribute(listeners, 30) == [30, 0, 0]
        attach_cbpf(listeners[2], steering_program([1]))
        assert distribute(listeners, 30) == [0, 30, 0]


@requires_cbpf_detach
def test_detach_restores_hashing() -> None:
    with reuseport_group(4) as listeners:
        attach_cbpf(listeners[1], steering_program([2]))
        assert distribute(listeners, 40) == [0, 0, 40, 0]
        detach(listeners[1])
        counts = distribute(listeners, 200)
        # (3/4)^200: a listener left out by the hash is not a plausible accident.
        assert all(c > 0 for c in counts), counts


# ------------------------------------------------------------------ Group bookkeeping vs the kernel
def assert_group_matches_kernel(group: Group, by_slot: dict[int, socket.socket]) -> None:
    """For every member, steering to the index ``group`` gives it reaches that slot's socket."""
    listeners = list(by_slot.values())
    slots = list(by_slot)
    assert sorted(group.order) == sorted(slots)
    for index, slot in enumerate(group.order):
        attach_cbpf(listeners[0], steering_program([index]))
        counts = distribute(listeners, 10)
        got = {slots[i]: c for i, c in enumerate(counts) if c}
        assert got == {slot: 10}, f"index {index}: expected slot {slot}, got {got}"


@pytest.mark.parametrize(
    ("closes", "expected"),
    [
        ([11], [10, 13, 12]),  # the last member moves into the hole
        ([13], [10, 11, 12]),  # closing the last one moves nothing
        ([10], [13, 11, 12]),
        ([10, 13], [12, 11]),
        ([11, 10, 13], [12]),
    ],
)
def test_group_follows_the_last_moves_into_the_hole_rule(
    closes: list[int], expected: list[int]
) -> None:
    slots = [10, 11, 12, 13]
    with reuseport_group(len(slots)) as listeners:
        group = Group()
        for slot in slots:
            group.joined(slot)
        by_slot = dict(zip(slots, listeners, strict=True))
        for slot in closes:
            by_slot.pop(slot).close()
            group.left(slot)
        assert group.order == expected
        assert_group_matches_kernel(group, by_slot)
        assert group.indices_except({expected[0]}) == list(range(1, len(expected)))


def test_group_after_close_and_rejoin() -> None:
    """A slot that comes back listens last; the new order must match the kernel's."""
    with reuseport_group(3) as listeners:
        group = Group()
        for slot in (0, 1, 2):
            group.joined(slot)
        by_slot = dict(zip((0, 1, 2), listeners, strict=True))
        by_slot.pop(0).close()
        group.left(0)
        port = listeners[1].getsockname()[1]
        new = bind_reuseport(parse_bind(f"127.0.0.1:{port}"), 128)
        try:
            new.setblocking(False)
            by_slot[0] = new
            group.joined(0)
            assert group.order == [2, 1, 0]
            assert_group_matches_kernel(group, by_slot)
            # Steering away from slot 1 sends nothing there.
            attach_cbpf(new, steering_program(group.indices_except({1})))
            counts = distribute([by_slot[s] for s in (0, 1, 2)], 60)
            assert counts[1] == 0, counts
        finally:
            new.close()
