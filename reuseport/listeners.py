"""Every listening socket the master holds, and which slot sits where in each group.

Rules: ``Listeners`` is the only owner of the master's listening sockets and
the only keeper of the group order.  The arbiter asks it (``may_start``,
``may_drain``, ``drainable``) instead of checking conditions of its own, and
tells it what happened (``will_open``, ``slot_opened``, ``opener_gone``,
``release``).  It never forks, signals or reads the scoreboard.

Why the master holds sockets at all (the zero-loss rules).  Shared mode: one
SO_REUSEADDR socket per address, bound before the first fork and kept;
workers come and go, the queue stays.  Reuseport mode: one SO_REUSEPORT socket
per address is bound without listening (the *reservation*: it fixes the port
when port 0 was asked for, and keeps the port ours while no worker listens).
The first worker of a *slot* opens its own listening sockets, before it even
imports the app, and hands the master duplicates over its channel; the master
keeps them as long as the slot exists, so:

- a worker that crashes, hangs or is SIGKILLed loses nothing queued: its
  replacement inherits the very same sockets (nginx does the same);
- a reload or a recycle starts the new worker in the same slot, on the same
  sockets: the queue never closes;
- a slot that goes away for good (scale-down, ondemand idle-out) is first
  steered out of its groups with a classic BPF program, its worker accepts
  until its queue stays empty, and only then are the sockets closed.

The group-order invariant.  The kernel keeps each SO_REUSEPORT group as an
array ordered by ``listen()``; when a member closes, the last member moves
into its hole, and a steering program names members by index.  So the master
must know which slot sits at which index, and it can only if the order
changes one known step at a time: new slots open their sockets one at a time
(``will_open`` ... ``slot_opened``), one slot drains at a time, and never
while a socket opens (``may_start``, ``may_drain``).  The program attached
always leaves out the draining slot; when a slot closes, the program is
re-attached for the new order at once, because the stale one would keep new
connections from the socket that moved into the hole.  If that fails the
program is detached (the kernel's hash takes over); if even that fails, the
error is logged with what it means.  A socket that joins takes the next
index, which no attached program names yet: it gets new connections once the
arbiter next calls ``apply_steering`` (a steering tick with ``--steering
load``; with ``hash`` no program is attached while a socket opens).

With ``--pm ondemand`` in reuseport mode the master opens slot 0's sockets
itself at start (the *anchor*), because something must listen while no worker
exists; slot 0's worker inherits them, and the anchor is never drained.

Room to grow, on purpose: ``for_slot`` is the one place that says which
sockets a worker gets (handing every worker its siblings' sockets too, for
sibling rescue, changes only it); ``_attach_group`` the one place that turns
allowed indices into a program (an eBPF program instead of cBPF goes there);
groups are kept per bind, so sockets whose group forms at ``bind()`` (UDP)
or binds that cannot join one (unix sockets, inherited fds: shared-only) fit
beside TCP; ``held`` lists every socket a new master would need (USR2).

UDP binds (``udp://HOST:PORT``) have per-slot sockets and a group each, like
TCP ones, with four differences, all kept here:

- *The group forms at* ``bind()``.  A bound UDP socket receives datagrams,
  so the reservation is a group member: right after binding it, the master
  attaches the *hand-over* program ("index 1"), which sends every datagram to
  the first slot socket that joins (while the reservation is alone the index
  is out of range and the kernel's hash keeps it); when that socket joins,
  the reservation is closed (the slot's socket moves to index 0) and the
  program detached.  Datagrams that arrive before any slot socket exists are
  lost with the reservation, as connections to a port nobody listens on are
  refused.
- *A UDP socket leaves its group only when its last descriptor closes*
  (``shutdown()`` does nothing to an unconnected UDP socket).  So no other
  process may hold a slot's UDP socket: siblings get no copies (sibling
  rescue is for TCP), and ``release`` closes the master's, the last one.
- *Steering is per datagram, so it must keep flows together.*  A UDP group
  only ever has a program while a slot drains: ``bpf.flow_hash_program``,
  which spreads the flows (source address and port) over the other members.
  Load steering (``--steering load``/``p2c``) would move a flow's datagrams
  between workers, so it never applies to UDP groups: new flows follow the
  kernel's hash, as in nginx's ``listen ... udp reuseport``.
- *The queue is bytes in a receive buffer*, not connections:
  ``sockets.datagram_queue`` (for the drain) and ``/proc/net/udp`` (for
  ``status``, with the drops) measure it.

Binds that cannot join a group (``unix:/path``, ``fd://N``: one accept queue
by nature) are shared sockets in either mode: bound (or adopted) by the
master in ``bind``, handed to every worker by ``for_slot`` after the slot's
own sockets, and never part of a group.  So in reuseport mode ``slot_binds``
(the TCP binds, one group each) and ``binds`` (all of them, in the order
given) differ; a worker of a new slot opens sockets for ``slot_binds`` only.
The master removes the socket files of its Unix binds when it closes them
(never a worker: ``close_in_child`` only closes descriptors).

Handing every socket to a new master (SIGUSR2, ``upgrade.py``): ``holdings``
lists them as descriptors (each bind's shared socket or reservation, and each
slot's sockets *in group order*), and the new master's ``adopt`` takes them
instead of binding: slot ``i`` is the one at index ``i`` of every group, so
its picture of the group order is true from the start.  It detaches whatever
program the old master attached (its own steering attaches afresh) and does
not remove socket files it did not make until ``own_files``.  The old master
never closes, shuts down or unlinks anything the new one holds: after a
hand-over ``keep_files`` stops ``close`` from unlinking, and a failed upgrade
``retake``s the groups (re-attaching the steering the new master replaced).
The order can only be handed over while it is known: no socket opening, no
slot draining (``stable``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from . import procfs
from .bpf import Group, attach_cbpf, detach, flow_hash_program, steering_program
from .config import Bind, BindAddress, FdBind, Mode, UnixBind
from .errors import errno_name
from .loadboard import KernelSteering, LoadBoard
from .sockets import (
    UnixFile,
    adopt_bind,
    bind_reuseport,
    bind_shared,
    bind_unix,
    check_port_guard,
    listen_queue_depth,
    reserve_port,
    socket_inode,
)
from .status import DatagramSocketStatus

__all__ = ["Holdings", "Listeners"]

log = logging.getLogger("reuseport.master")

_REMAP_PATIENCE = 5.0  # seconds a failed new master's socket maps may hold our sockets

# What a group's program allows: its indices, or None for "no program, the
# kernel's hash".
_Program = tuple[int, ...] | None
_HANDOVER_INDEX = 1  # a UDP reservation's program: the first slot socket that joins
_HANDOVER: _Program = (_HANDOVER_INDEX,)


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True, kw_only=True, slots=True)
class Holdings:
    """Every listening socket a master holds, as descriptors, for the master taking over.

    ``bind_fds[i]`` belongs to ``binds[i]``: its shared socket, or in
    reuseport mode its reservation (-1 for a UDP bind whose reservation was
    closed when the first slot socket joined its group).  ``slots[i]`` is the slot
    at index ``i`` of every group, one socket per TCP bind.  ``unix_files``
    are the socket files to remove at stop: (path, device, inode).
    """

    mode: Mode
    binds: tuple[Bind, ...]
    bind_fds: tuple[int, ...]
    slots: tuple[tuple[int, ...], ...] = ()
    anchor: int | None = None  # index in ``slots`` of the ondemand anchor
    unix_files: tuple[tuple[str, int, int], ...] = ()

    def fds(self) -> list[int]:
        held = (fd for fd in self.bind_fds if fd >= 0)
        return [*held, *(fd for socks in self.slots for fd in socks)]


class Listeners:
    """The master's listening sockets: shared ones, reservations, slots, groups, steering."""

    def __init__(
        self, mode: Mode, binds: Sequence[Bind], backlog: int, *, uds_mode: int = 0o666
    ) -> None:
        if mode is Mode.AUTO:
            raise ValueError("listeners need a resolved mode")
        self.mode = mode
        self.binds: tuple[Bind, ...] = tuple(binds)  # real ports once bound
        self.backlog = backlog
        self.uds_mode = uds_mode
        self._unix_files: list[UnixFile] = []
        self._shown: dict[int, str] = {}  # fd bind: what it turned out to be
        self.anchor: int | None = None  # the slot the master opened itself (ondemand)
        self.draining: int | None = None  # the slot being drained, at most one
        self._shared: list[socket.socket] = []
        self._reservations: list[socket.socket] = []
        self._slots: dict[int, list[socket.socket]] = {}  # slot: one socket per bind
        self._groups: list[Group] = []  # one per bind
        self._handover: dict[int, socket.socket] = {}  # group: its UDP reservation, until a join
        self._opening: int | None = None  # a worker of this slot is opening its sockets
        self._excluded: frozenset[int] = frozenset()  # slots steering keeps connections from
        self._attached: list[_Program] = []  # per group, what the attached program allows
        self._stale = False  # a program may name old indices: re-attach at the next chance
        self.kernel: KernelSteering | None = None  # eBPF p2c instead of cBPF programs
        self.board: LoadBoard | None = None  # per-slot load (kernel steering, sibling rescue)
        self.adopted = False  # the sockets came from the previous master (SIGUSR2)
        self._unmapped: set[int] = set()  # slots to put back into our socket maps (retake)
        self._unmapped_since = 0.0
        self._foreign_files: list[UnixFile] = []  # adopted socket files, not ours to remove yet

    # ------------------------------------------------------------------ open, close
    def bind(self, *, anchor: bool = False) -> None:
        """Bind every address (shared sockets, or reservations and the ondemand anchor).

        Raises ``BindError``/``PortGuardError`` with the fix; closes what it
        opened on any failure.
        """
        resolved: list[Bind] = []
        try:
            for addr in self.binds:
                if not isinstance(addr, BindAddress):
                    self._shared.append(self._bind_shared_only(addr))
                    resolved.append(addr)
                    continue
                if self.mode is Mode.SHARED:
                    sock = bind_shared(addr, self.backlog)
                    self._shared.append(sock)
                else:
                    check_port_guard(addr)
                    sock = reserve_port(addr)
                    self._reservations.append(sock)
                    if addr.udp:  # its group index: the IP binds before it
                        index = sum(isinstance(b, BindAddress) for b in resolved)
                        self._reserve_udp(index, sock)
                resolved.append(addr.with_port(sock.getsockname()[1]))
            self.binds = tuple(resolved)
            if self.mode is Mode.REUSEPORT:
                self._groups = [Group() for _ in self.slot_binds]
                self._attached = [
                    _HANDOVER if index in self._handover else None
                    for index in range(len(self.slot_binds))
                ]
                if anchor:
                    socks: list[socket.socket] = []
                    self._slots[0] = socks  # closed with the rest if one bind fails
                    for addr in self.slot_binds:
                        socks.append(bind_reuseport(addr, self.backlog))
                    self._join(0, socks)
                    self.anchor = 0
        except BaseException:
            self.close()
            raise

    def _reserve_udp(self, index: int, sock: socket.socket) -> None:
        """A UDP reservation is group ``index``'s first member: hand its datagrams over.

        Without the program (a kernel without cBPF steering, before Linux
        4.6) the reservation would take a share of the datagrams between the
        first slot socket's bind and the moment the master closes it.
        """
        self._handover[index] = sock
        try:
            attach_cbpf(sock, steering_program([_HANDOVER_INDEX]))
        except OSError as exc:
            log.debug("no hand-over program for udp group %d (%s)", index, errno_name(exc))

    def _bind_shared_only(self, addr: UnixBind | FdBind) -> socket.socket:
        """The one socket of a bind that has one accept queue by nature."""
        if isinstance(addr, FdBind):
            sock = adopt_bind(addr)
            self._show(addr, sock)
            return sock
        sock, unix_file, stale = bind_unix(addr, self.backlog, self.uds_mode)
        self._unix_files.append(unix_file)
        if stale:
            log.info("Removed the stale socket file %s (nothing listened on it)", addr.path)
        return sock

    def _show(self, addr: FdBind, sock: socket.socket) -> None:
        """Remember what an fd bind turned out to be, for the log and ``describe``."""
        where = sock.getsockname()
        if isinstance(where, tuple):
            family = "[%s]:%d" if sock.family == socket.AF_INET6 else "%s:%d"
            self._shown[addr.fd] = family % where[:2]
        elif where:
            self._shown[addr.fd] = f"unix:{where}"

    # ------------------------------------------------------------------ SIGUSR2 hand-over
    @property
    def stable(self) -> bool:
        """The group order is known and will not change by itself (no open, no drain)."""
        return self._opening is None and self.draining is None

    def holdings(self) -> Holdings:
        """Everything held, for a new master (see the module docstring); needs ``stable``."""
        if not self.stable:
            raise RuntimeError("the group order is changing: hand over later")
        orders = {tuple(group.order) for group in self._groups}
        if len(orders) > 1:
            raise RuntimeError(f"the groups disagree on their order: {sorted(orders)}")
        order = list(self._groups[0].order) if self._groups else []
        shared = iter(self._shared)
        pending_udp = {id(sock) for sock in self._handover.values()}
        tcp_reservations = iter(r for r in self._reservations if id(r) not in pending_udp)
        bind_fds = []
        index = 0  # the group index of the next slot bind
        for addr in self.binds:
            if self.mode is Mode.REUSEPORT and isinstance(addr, BindAddress):
                if addr.udp:  # its reservation is gone once a slot socket joined
                    pending = self._handover.get(index)
                    bind_fds.append(-1 if pending is None else pending.fileno())
                else:
                    bind_fds.append(next(tcp_reservations).fileno())
                index += 1
            else:
                bind_fds.append(next(shared).fileno())
        return Holdings(
            mode=self.mode,
            binds=self.binds,
            bind_fds=tuple(bind_fds),
            slots=tuple(tuple(s.fileno() for s in self._slots[slot]) for slot in order),
            anchor=order.index(self.anchor) if self.anchor in order else None,
            unix_files=tuple(
                (f.path, f.device, f.inode) for f in (*self._unix_files, *self._foreign_files)
            ),
        )

    def adopt(self, holdings: Holdings) -> None:
        """Take the previous master's sockets instead of binding (the new master, SIGUSR2).

        Slot ``i`` is the slot at index ``i`` of every group.  Takes
        ownership of the descriptors (closes them on any failure).
        """
        if holdings.mode is not self.mode or len(holdings.bind_fds) != len(holdings.binds):
            raise ValueError("holdings for another mode, or one descriptor per bind missing")
        taken: list[socket.socket] = []

        def take(fd: int) -> socket.socket:
            sock = socket.socket(fileno=fd)
            taken.append(sock)
            sock.set_inheritable(False)
            sock.setblocking(False)
            return sock

        try:
            self.binds = holdings.binds
            index = 0  # the group index of the next slot bind
            for addr, fd in zip(holdings.binds, holdings.bind_fds, strict=True):
                if self.mode is Mode.REUSEPORT and isinstance(addr, BindAddress):
                    index += 1
                    if fd < 0:
                        if not addr.udp:
                            raise ValueError(f"no reservation handed over for {addr}")
                        continue  # a UDP group lives in its slot sockets
                    sock = take(fd)
                    self._reservations.append(sock)
                    if addr.udp:  # no slot socket joined yet: still handing over
                        self._handover[index - 1] = sock
                else:
                    sock = take(fd)
                    self._shared.append(sock)
                    if isinstance(addr, FdBind):
                        self._show(addr, sock)
            if self.mode is Mode.REUSEPORT:
                self._groups = [Group() for _ in self.slot_binds]
                self._attached = [
                    _HANDOVER if group in self._handover else None
                    for group in range(len(self.slot_binds))
                ]
                for slot, fds in enumerate(holdings.slots):
                    if len(fds) != len(self.slot_binds):
                        raise ValueError(f"slot {slot} has {len(fds)} sockets, not one per bind")
                    self._slots[slot] = [take(fd) for fd in fds]
                    for group in self._groups:
                        group.joined(slot)
                self.anchor = holdings.anchor
                # The old master's program (cBPF or p2c) is left attached: take
                # it off, so the kernel state is what ``_attached`` says (none).
                for index, group in enumerate(self._groups):
                    if group.order:
                        with contextlib.suppress(OSError):
                            detach(self._slots[group.order[0]][index])
            self._foreign_files = [UnixFile(*f) for f in holdings.unix_files]
            self.adopted = True
        except BaseException:
            for sock in taken:
                sock.close()
            self._shared.clear()
            self._reservations.clear()
            self._handover.clear()
            self._slots.clear()
            self._groups = []
            raise

    def own_files(self) -> None:
        """The hand-over is complete: the adopted socket files are ours to remove at stop."""
        self._unix_files.extend(self._foreign_files)
        self._foreign_files = []

    def keep_files(self) -> None:
        """Another master took the sockets over: ``close`` must not remove their files."""
        self._foreign_files.extend(self._unix_files)
        self._unix_files = []

    def lend(self) -> None:
        """Before a new master adopts the slots (SIGUSR2): take them out of our socket maps.

        A socket sits in one ``REUSEPORT_SOCKARRAY`` at a time (the kernel
        answers EBUSY to a second), and the new master's p2c program needs
        them in its own.  Ours stays attached but selects nothing, so the
        kernel's hash spreads new connections until the new program replaces it.
        """
        if self.kernel is None:
            return
        for slot in self._slots:
            try:
                self.kernel.remove(slot)
            except OSError as exc:
                log.warning("SIGUSR2: cannot free slot %d's socket map entry (%s)", slot, exc)

    def retake(self) -> None:
        """A new master that adopted these sockets failed: put our own steering back.

        It may have attached its program to the groups (or detached ours);
        this attaches what this master's state says, or detaches.  With p2c
        its socket maps may still hold our sockets for a moment after its
        program is replaced (the kernel frees them asynchronously): slots it
        refuses are mapped again on the next ticks (``_map_again``).
        """
        self._unix_files.extend(self._foreign_files)
        self._foreign_files = []
        try:
            if self.kernel is not None:
                tcp = self._tcp_indices()
                self.kernel.attached = [False] * len(tcp)
                for kernel_index, index in enumerate(tcp):
                    group = self._groups[index]
                    if group.order:
                        self.kernel.attach(kernel_index, self._slots[group.order[0]][index])
                self._unmapped = set(self._slots)
                self._unmapped_since = time.monotonic()
            self._attach(force=True)
        except OSError as exc:
            log.warning(
                "After the failed upgrade, attaching this master's steering again failed "
                "(%s); new connections follow the kernel's hash",
                errno_name(exc),
            )
            self._stale = True

    def _map_again(self) -> None:
        """Put slots back into our socket maps once the kernel lets go of them (``retake``)."""
        kernel = self.kernel
        if kernel is None:
            self._unmapped = set()
            return
        for slot in sorted(self._unmapped):
            socks = self._slots.get(slot)
            if socks is None:
                self._unmapped.discard(slot)
                continue
            try:
                kernel.add(slot, [socks[i] for i in self._tcp_indices()])
            except OSError as exc:
                busy = exc.errno == errno.EBUSY
                if busy and time.monotonic() - self._unmapped_since < _REMAP_PATIENCE:
                    return  # still in the failed master's map: next tick
                self._unmapped = set()
                self._kernel_failed(exc)
                return
            self._unmapped.discard(slot)
        if not self._unmapped:
            log.info("p2c steering: every slot is in this master's socket maps again")

    def queues(self) -> list[tuple[str, int | None, int, int]]:
        """(bind, slot or None for a shared socket, queued, backlog) per TCP listener held."""
        found: list[tuple[str, int | None, int, int]] = []
        for slot in sorted(self._slots):
            for addr, sock in zip(self.slot_binds, self._slots[slot], strict=False):
                depth = listen_queue_depth(sock)
                if depth is not None:
                    found.append((str(addr), slot, depth[0], depth[1]))
        shared_binds = [
            b for b in self.binds if self.mode is Mode.SHARED or not isinstance(b, BindAddress)
        ]
        for bind, shared in zip(shared_binds, self._shared, strict=False):
            depth = listen_queue_depth(shared)
            if depth is not None:
                shown = self._shown.get(bind.fd) if isinstance(bind, FdBind) else None
                found.append((shown or str(bind), None, depth[0], depth[1]))
        return found

    @property
    def slot_binds(self) -> tuple[BindAddress, ...]:
        """The binds a reuseport slot has its own sockets for (one group each)."""
        if self.mode is not Mode.REUSEPORT:
            return ()
        return tuple(b for b in self.binds if isinstance(b, BindAddress))

    def binds_to_open(self, slot: int) -> tuple[BindAddress, ...]:
        """What a new worker of ``slot`` must open itself; () when it inherits everything."""
        return self.slot_binds if self.needs_socket(slot) else ()

    def describe(self, scheme: str) -> list[str]:
        """One "Listening at" text per bind, with the mode each is served in."""
        lines = []
        for addr in self.binds:
            if isinstance(addr, BindAddress):
                shown = str(addr) if addr.udp else f"{scheme}://{addr}"
                lines.append(f"{shown} ({self.mode.value} mode)")
                continue
            where = str(addr)
            if isinstance(addr, FdBind):
                name = f" [{addr.name}]" if addr.name else ""
                shown = self._shown.get(addr.fd, "")
                if shown.startswith("unix:"):
                    where += f"{name} = {shown}"
                elif shown:
                    where += f"{name} = {scheme}://{shown}"
            if self.mode is Mode.SHARED:
                lines.append(f"{where} (shared mode)")
            else:
                lines.append(f"{where} (one shared socket for every worker: no per-worker queues)")
        return lines

    def close(self) -> None:
        for sock in self._all():
            sock.close()
        self._shared.clear()
        self._reservations.clear()
        self._handover.clear()
        self._slots.clear()
        for unix_file in self._unix_files:
            unix_file.remove()
        self._unix_files.clear()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def close_in_child(self, slot: int, *, siblings: bool = False) -> None:
        """In a freshly forked worker: close every socket but the slot's own.

        With ``siblings`` (sibling rescue) the other slots' sockets stay open
        too: the worker may accept from them when their worker stalls.
        Without, a worker holds only its own listeners, so /proc and ``ss``
        show exactly which worker owns which socket.
        """
        keep = list(self.for_slot(slot))
        if siblings:
            for socks in self.siblings_of(slot).values():
                keep.extend(socks)
        kept = {id(sock) for sock in keep}
        for sock in self._all():
            if id(sock) not in kept:
                sock.close()
        if self.kernel is not None:
            self.kernel.close_in_child()

    def _all(self) -> list[socket.socket]:
        socks = [*self._shared, *self._reservations]
        for slot_socks in self._slots.values():
            socks.extend(slot_socks)
        return socks

    # ------------------------------------------------------------------ what is held
    def held(self) -> list[socket.socket]:
        """Every listening socket the master holds (the shared ones, and each slot's)."""
        if self.mode is Mode.SHARED:
            return list(self._shared)
        return [sock for socks in self._slots.values() for sock in socks] + self._shared

    def for_slot(self, slot: int) -> list[socket.socket]:
        """The sockets a worker of ``slot`` inherits: the slot's own (if held), then the shared."""
        if self.mode is Mode.SHARED:
            return list(self._shared)
        return [*self._slots.get(slot, ()), *self._shared]

    def siblings_of(self, slot: int) -> dict[int, list[socket.socket]]:
        """Every other slot's TCP sockets, but the draining one's (reuseport mode)."""
        return {
            other: self.rescue_sockets(other)
            for other in self._slots
            if other != slot and other != self.draining
        }

    def rescue_sockets(self, slot: int) -> list[socket.socket]:
        """The sockets of ``slot`` its siblings may serve when it stalls: its TCP ones.

        Never its UDP sockets: a copy in a sibling would keep a UDP socket in
        its group after the slot is released (see the module docstring).
        """
        return [s for s in self._slots.get(slot, ()) if s.type == socket.SOCK_STREAM]

    def holds(self, slot: int) -> bool:
        return slot in self._slots

    @property
    def order(self) -> list[int]:
        """Slots by their index in the (first) group; empty in shared mode."""
        return list(self._groups[0].order) if self._groups else []

    def queue_depth(self, slot: int) -> tuple[int, int] | None:
        """(queued, backlog) of the slot's own sockets; None if it has none (shared mode)."""
        queue: int | None = None
        limit = 0
        for sock in self._slots.get(slot, ()):
            depth = listen_queue_depth(sock)
            if depth is not None:
                queue = (queue or 0) + depth[0]
                limit += depth[1]
        return None if queue is None else (queue, limit)

    def queued(self) -> int:
        """Connections waiting in every queue the master holds.

        A socket without ``TCP_INFO`` (a Unix socket) counts 1 while a
        connection waits in it: readable is all a listening socket tells.
        """
        total = 0
        for sock in self.held():
            depth = listen_queue_depth(sock)
            if depth is not None:
                total += depth[0]
            elif _readable(sock):
                total += 1
        return total

    # ------------------------------------------------------------------ slots come and go
    def next_slot(self, busy: Collection[int]) -> int:
        """The slot a new worker should take; ``busy`` are the slots workers serve.

        A slot whose sockets are held but which no worker serves comes first:
        connections may be waiting in it.
        """
        for slot in sorted(self._slots):
            if slot not in busy and slot != self.draining:
                return slot
        slot = 0
        while slot in busy or slot == self.draining or slot in self._slots:
            slot += 1
        return slot

    def needs_socket(self, slot: int) -> bool:
        """A worker of ``slot`` must open new sockets (reuseport, slot not held)."""
        return self.mode is Mode.REUSEPORT and slot not in self._slots

    def may_start(self, slot: int) -> bool:
        """A worker may start in ``slot`` now.

        New sockets join the groups one at a time and never while a slot
        drains, so each one's index is known.
        """
        return not self.needs_socket(slot) or (self._opening is None and self.draining is None)

    def will_open(self, slot: int) -> None:
        """A worker was forked to open ``slot``'s sockets."""
        if not self.may_start(slot) or not self.needs_socket(slot):
            raise RuntimeError(f"slot {slot} may not open sockets now")
        self._opening = slot

    def slot_opened(self, slot: int, fds: Sequence[int]) -> bool:
        """The worker of ``slot`` handed over its new sockets; takes ownership of ``fds``.

        Returns False (and closes them) if no new sockets were expected for it.
        """
        if self._opening != slot or len(fds) != len(self.slot_binds):
            for fd in fds:
                os.close(fd)
            return False
        self._opening = None
        socks = [socket.socket(fileno=fd) for fd in fds]
        for sock in socks:
            # SCM_RIGHTS gives inheritable descriptors: only a new master
            # (SIGUSR2) may inherit them, and only when they are handed over.
            sock.set_inheritable(False)
        self._join(slot, socks)
        return True

    def opener_gone(self, slot: int) -> None:
        """The worker that was to open ``slot``'s sockets exited (no-op once they arrived)."""
        if self._opening == slot:
            self._opening = None

    def _join(self, slot: int, socks: list[socket.socket]) -> None:
        self._slots[slot] = socks
        for group in self._groups:
            group.joined(slot)
        if self._handover:
            self._hand_over(socks)
        if self.kernel is not None:
            self._kernel_add(slot, socks)

    def _hand_over(self, socks: Sequence[socket.socket]) -> None:
        """The first slot socket joined each UDP group: close the reservation, detach its program.

        The reservation sat at index 0 and the joined socket at 1; closing the
        reservation moves the joined socket into index 0, which is where
        ``Group`` has had it all along.
        """
        for index, reservation in list(self._handover.items()):
            del self._handover[index]
            self._reservations.remove(reservation)
            reservation.close()
            try:
                self._attach_group(socks[index], None, 1, udp=True)
                self._attached[index] = None
            except OSError:
                self._stale = True  # ("index 1" of one member is the hash anyway)

    def _tcp_indices(self) -> list[int]:
        """The group indices of the TCP binds: the groups kernel (p2c) steering runs on."""
        return [i for i, addr in enumerate(self.slot_binds) if not addr.udp]

    def _kernel_add(self, slot: int, socks: Sequence[socket.socket]) -> None:
        """Put ``slot``'s TCP sockets in the p2c program's socket maps (attaching it once)."""
        assert self.kernel is not None
        try:
            tcp = [socks[i] for i in self._tcp_indices()]
            self.kernel.add(slot, tcp)
            for index, sock in enumerate(tcp):
                self.kernel.attach(index, sock)
        except OSError as exc:
            self._kernel_failed(exc)

    def use_board(self, board: LoadBoard) -> None:
        """Share per-slot load with the workers (sibling rescue) without kernel steering."""
        self.board = board

    def use_kernel_steering(self, kernel: KernelSteering) -> None:
        """Steer with the eBPF p2c program from now on (before any slot opens)."""
        if self._slots and self.anchor is None and not self.adopted:
            raise RuntimeError("kernel steering must be set up before workers open sockets")
        self.kernel = kernel
        self.board = kernel.board
        try:
            for slot, socks in self._slots.items():  # the ondemand anchor, adopted slots
                tcp = [socks[i] for i in self._tcp_indices()]
                kernel.add(slot, tcp)
                for index, sock in enumerate(tcp):
                    kernel.attach(index, sock)
        except BaseException:
            self.kernel = self.board = None  # the caller closes them and falls back
            raise

    @property
    def kernel_binds(self) -> int:
        """How many groups kernel (p2c) steering would run on: the TCP ones."""
        return len(self._tcp_indices())

    def _kernel_failed(self, exc: OSError) -> None:
        """A map update or attach failed: fall back to cBPF programs for good."""
        log.warning(
            "--steering p2c: the kernel refused a socket map update or the program (%s); "
            "falling back to cBPF steering (the master samples the queues)",
            errno_name(exc),
        )
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            for index in self._tcp_indices():
                group = self._groups[index]
                if group.order:
                    with contextlib.suppress(OSError):
                        detach(self._slots[group.order[0]][index])
            kernel.close()
        self._attached = [None for _ in self._groups]
        self._stale = True

    def drainable(self, slot: int) -> bool:
        """Retiring ``slot`` goes through a drain (else its worker just stops).

        Its sockets must be held, it must not be the anchor, and every group
        must keep another member to steer to.
        """
        return (
            self.mode is Mode.REUSEPORT
            and slot in self._slots
            and slot != self.anchor
            and bool(self._groups)
            and all(len(group.order) > 1 for group in self._groups)
        )

    def may_drain(self) -> bool:
        """One drain at a time, and never while a new socket joins."""
        return self.draining is None and self._opening is None

    def begin_drain(self, slot: int, allowed: Collection[int]) -> None:
        """Steer new connections away from ``slot`` (and from what ``allowed`` leaves out).

        Raises OSError if the kernel refuses the program; the slot is then not
        draining and the caller decides what to do.
        """
        if not (self.drainable(slot) and self.may_drain()):
            raise RuntimeError(f"slot {slot} may not drain now")
        self.draining = slot
        try:
            self.apply_steering(allowed, force=True)
        except OSError:
            self.draining = None
            # With several binds, some groups may have the drain program already.
            try:
                self._attach(force=False)
            except OSError:
                self._stale = True
            raise

    def release(self, slot: int) -> None:
        """The drained slot has no worker left: close its sockets, re-steer the rest.

        ``shutdown()`` first: it takes the socket out of its group at once,
        even while a sibling still holds a copy (sibling rescue), so the group
        order changes exactly here.  A UDP socket leaves only when this last
        copy closes; a worker forked a moment ago still holds one until its
        ``close_in_child`` runs (its first step), so a fork racing a release
        can leave the socket in the group for that long.
        """
        if self.kernel is not None:
            try:
                self.kernel.remove(slot)
            except OSError as exc:
                self._kernel_failed(exc)
        for sock in self._slots.pop(slot, ()):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        tcp = self._tcp_indices()
        for index, group in enumerate(self._groups):
            if slot in group.order:
                group.left(slot)
            if not group.order and self.kernel is not None and index in tcp:
                self.kernel.group_closed(tcp.index(index))
        if self.board is not None and 0 <= slot < self.board.capacity:
            self.board.clear_slot(slot)
        if self.draining == slot:
            self.draining = None
        self._excluded -= {slot}
        # The last member took the hole: a program attached for the old
        # order now keeps connections from the socket that moved.
        try:
            self._attach(force=True)
        except OSError as exc:
            self._fall_back_to_hash(slot, exc)

    # ------------------------------------------------------------------ steering
    def apply_steering(self, allowed: Collection[int], *, force: bool = False) -> None:
        """Attach the program that lets new connections reach only ``allowed`` slots.

        The draining slot is never allowed.  Nothing is done when the program
        would not change, unless ``force``.  Raises OSError if the kernel
        refuses; callers decide what that costs.
        """
        self._excluded = frozenset(self.order) - frozenset(allowed)
        self._attach(force=force or self._stale)

    def steered_away(self) -> list[int]:
        """Slots the attached programs keep new connections from."""
        if self.kernel is not None and self.board is not None:
            return sorted(set(self.order) - set(self.board.active()))
        away: set[int] = set()
        for group, program in zip(self._groups, self._attached, strict=True):
            if program is not None:
                away.update(s for i, s in enumerate(group.order) if i not in program)
        return sorted(away)

    def _attach(self, *, force: bool) -> None:
        excluded = set(self._excluded)
        if self.draining is not None:
            excluded.add(self.draining)
        if self._unmapped:
            self._map_again()  # may fall back to cBPF: self.kernel is None then
        # UDP groups: only the draining slot is ever steered out (module docstring).
        draining = set() if self.draining is None else {self.draining}
        kernel = self.kernel is not None and self.board is not None
        udp = [addr.udp for addr in self.slot_binds]
        for index, group in enumerate(self._groups):
            if kernel and not udp[index]:
                continue  # the p2c program, attached once, reads the board
            program = self._program(group, draining if udp[index] else excluded)
            if (program == self._attached[index] and not force) or not group.order:
                continue
            self._attach_group(
                self._slots[group.order[0]][index], program, len(group.order), udp[index]
            )
            self._attached[index] = program
        if kernel:
            assert self.board is not None
            # The program reads the active slots from the board, per connection.
            active = [slot for slot in self.order if slot not in excluded]
            if not active and self.draining is not None:
                active = [slot for slot in self.order if slot != self.draining]
            self.board.set_active(active)
        self._stale = False

    def _program(self, group: Group, excluded: set[int]) -> _Program:
        if not excluded & set(group.order):
            return None
        allowed = group.indices_except(excluded)
        if not allowed and self.draining is not None:
            # Everyone else is held back: queueing somewhere beats refusing.
            allowed = group.indices_except({self.draining})
        return tuple(allowed) or None

    @staticmethod
    def _attach_group(
        sock: socket.socket, program: _Program, members: int, udp: bool = False
    ) -> None:
        """Give ``sock``'s group ``program`` (any member's socket serves the whole group).

        A UDP group gets the flow-hash form of the program (see ``bpf``).
        """
        if program is not None:
            if udp:
                attach_cbpf(sock, flow_hash_program(program, sock.family))
            else:
                attach_cbpf(sock, steering_program(program))
            return
        try:
            detach(sock)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # nothing attached
                return
            # Linux < 5.3 cannot detach: allow every index instead.
            everyone = list(range(members))
            attach_cbpf(
                sock,
                flow_hash_program(everyone, sock.family) if udp else steering_program(everyone),
            )

    def _fall_back_to_hash(self, slot: int, exc: OSError) -> None:
        log.warning(
            "Slot %d closed, but re-attaching the steering program for the new order "
            "failed (%s); detaching it: new connections follow the kernel's hash",
            slot,
            errno_name(exc),
        )
        try:
            for index, (group, addr) in enumerate(zip(self._groups, self.slot_binds, strict=True)):
                if group.order and (self.kernel is None or addr.udp):
                    sock = self._slots[group.order[0]][index]
                    self._attach_group(sock, None, len(group.order), addr.udp)
                    self._attached[index] = None
        except OSError as again:
            self._stale = True
            log.error(
                "Detaching the stale steering program failed too (%s): it still names "
                "the sockets by their old order, so the worker whose socket moved into "
                "slot %d's place may get no new connections until the program is replaced",
                errno_name(again),
                slot,
            )

    # ------------------------------------------------------------------ UDP status
    def datagram_status(self) -> tuple[DatagramSocketStatus, ...]:
        """Each UDP socket the master holds: its receive queue and drops, from /proc/net/udp.

        One row per slot socket (reuseport) or per shared socket; a socket
        the table does not show (it cannot be read) has None figures.
        """
        held: list[tuple[str, int | None, socket.socket]] = []
        if self.mode is Mode.SHARED:
            # Shared mode: one socket per bind, in the order of the binds.
            for addr, sock in zip(self.binds, self._shared, strict=False):
                if isinstance(addr, BindAddress) and addr.udp:
                    held.append((str(addr), None, sock))
        else:
            for index, addr in enumerate(self.slot_binds):
                if addr.udp:
                    for slot in sorted(self._slots):
                        held.append((str(addr), slot, self._slots[slot][index]))
        if not held:
            return ()
        rows: dict[int, procfs.UdpSocket] = {}
        for family in {sock.family for _, _, sock in held}:
            with contextlib.suppress(OSError):
                rows.update((row.inode, row) for row in procfs.udp_sockets(family))
        result = []
        for bind, owner, sock in held:
            inode = socket_inode(sock)
            row = rows.get(inode)
            result.append(
                DatagramSocketStatus(
                    bind=bind,
                    slot=owner,
                    inode=inode,
                    queue=row.rx_queue if row else None,
                    drops=row.drops if row else None,
                )
            )
        return tuple(result)
