"""Per-slot load that the kernel's steering program, the workers and the master share.

Rules: one table of 64-bit cells in shared memory, created by the master
before the first fork (every worker inherits the mapping).  Each cell has one
writer: the kernel program adds to ``ASSIGNED`` (atomically), a worker writes
only its own *lane* (a slot has at most two workers at once, the serving one
and its replacement during a reload or recycle, so two lanes), and the master
writes the header, ``BASE``, ``PENALTY`` and a lane no worker owns.  Readers
take what they find: a value one write old moves one connection's worth.

Why.  Reuseport's weakness is head-of-line blocking: the kernel hashes a new
connection to a worker whatever that worker is doing.  With this table the
choice can follow the load, per connection and inside the kernel: the
``SK_REUSEPORT`` eBPF program below takes two candidates by the connection's
hash ("power of two choices") among the slots the master lets receive, and
gives the connection to the one where it would wait least, estimated as::

    queued(s) = max(0, ASSIGNED - BASE - ACCEPTED0 - ACCEPTED1)
    delay(s)  = (queued(s) + OPEN0 + OPEN1 + 1) x COST(s) + PENALTY
                (+ PENALTY_STALE while stalled)

``queued`` is the slot's accept queue as the program itself counted it
(connections it sent there, minus those the slot's workers accepted), so a
worker that stops accepting looks busier with every connection sent to it, at
once, with no sampling.  ``OPEN`` is the connections a worker has open.
``COST`` is what a request costs that worker: the CPU time its process used
per request completed, measured over each heartbeat (``max(COST0, COST1)``,
at least ``COST_FLOOR``).  Comparing counts alone would send a slow worker (one
that burns 2 ms per request where the others take 50 us) as many connections
as the others hold, and they would wait behind each other (join the shortest
queue); weighting them by cost compares expected delays instead (join the
shortest expected delay), so a slow worker gets a connection only when it
would still answer it first.  A slot is *stalled* when its queue has held
connections with no accept for ``STALL_NS``.  ``BASE`` is the master's correction:
a handshake that never completes, or a connection a sibling rescued from the
queue, is counted as assigned but never accepted by the slot, so the master
re-anchors the queue term on the real queue length (``TCP_INFO``) each tick.
``PENALTY`` keeps new connections from a slot whose loop stopped beating.

Workers publish with plain stores into the mapping: no syscall on the hot
path.  Without eBPF (no privilege, old kernel) the same table lives in an
anonymous shared mapping: the kernel does not read it then, but sibling rescue
reads the lanes' ``ACCEPTED`` to see whether a sibling still accepts.

Layout (cell = 8 bytes, native byte order)::

    0                 number of active slots
    1 .. capacity     the active slots (those new connections may go to)
    BASE + 16*s + ... slot s: ASSIGNED, BASE, ACCEPTED0, ACCEPTED1, OPEN0, OPEN1,
                      PENALTY, LAST0, LAST1 (the last accept, ns), SINCE (when
                      its queue last became non-empty, ns), COST0, COST1 (ns)
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import time
from collections.abc import Sequence

from .bpf import (
    BPF_F_MMAPABLE,
    Asm,
    AttachType,
    EbpfInsn,
    MapType,
    attach_ebpf,
    load_sk_reuseport,
    map_create,
    map_delete,
    map_update,
)

__all__ = ["PENALTY_STALE", "KernelSteering", "Lane", "LoadBoard", "p2c_program"]

# Cells of a slot's block (two-cell fields: one cell per lane).
_ASSIGNED, _BASE, _ACCEPTED, _OPEN, _PENALTY, _LAST, _SINCE, _COST = 0, 1, 2, 4, 6, 7, 9, 10
_SLOT_CELLS = 16  # a power of two: the program finds a block with one shift
_SLOT_SHIFT = 7  # log2(_SLOT_CELLS * _CELL)
STALL_NS = 1_000_000  # a queue that holds connections this long with no accept: stalled
_CELL = 8
_MASK = (1 << 64) - 1  # cells wrap like the kernel's u64 arithmetic
PENALTY_STALE = 1 << 50  # ns: a stalled slot loses every comparison
COST_FLOOR = 1_000  # ns per request: a worker that has not measured yet (or idles)


def _value_size(capacity: int) -> int:
    return _CELL * (1 + capacity + _SLOT_CELLS * capacity)


def _slot_base(capacity: int) -> int:
    """Cell index of slot 0's first cell."""
    return 1 + capacity


class LoadBoard:
    """The shared table (see the module docstring); ``map_fd`` is set when eBPF backs it."""

    def __init__(self, capacity: int, *, ebpf: bool) -> None:
        if capacity < 1:
            raise ValueError("a load board needs at least one slot")
        self.capacity = capacity
        size = _value_size(capacity)
        self.map_fd: int | None = None
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        if ebpf:
            fd = map_create(
                MapType.ARRAY,
                key_size=4,
                value_size=size,
                max_entries=1,
                flags=BPF_F_MMAPABLE,
                name=b"reuseport_load",
            )
            try:
                self._mem = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(fd)
                raise
            self.map_fd = fd
        else:
            self._mem = mmap.mmap(-1, length, flags=mmap.MAP_SHARED)
        self.cells = memoryview(self._mem).cast("Q")
        self._base = _slot_base(capacity)

    # ------------------------------------------------------------------ master
    def set_active(self, slots: Sequence[int]) -> None:
        """The slots new connections may go to (in any order)."""
        slots = [s for s in slots if 0 <= s < self.capacity]
        cells = self.cells
        # Shrinking: the count first, so the program never reads a stale tail;
        # growing: the slots first, then the count.
        if len(slots) < cells[0]:
            cells[0] = len(slots)
        for index, slot in enumerate(slots):
            cells[1 + index] = slot
        cells[0] = len(slots)

    def active(self) -> list[int]:
        cells = self.cells
        return [int(cells[1 + i]) for i in range(min(int(cells[0]), self.capacity))]

    def _cell(self, slot: int, field: int) -> int:
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} is outside the load board (capacity {self.capacity})")
        return self._base + _SLOT_CELLS * slot + field

    def accepted(self, slot: int) -> int:
        """Connections the slot's workers took from its own queue, ever."""
        cells = self.cells
        index = self._cell(slot, _ACCEPTED)
        return int(cells[index] + cells[index + 1])

    def assigned(self, slot: int) -> int:
        return int(self.cells[self._cell(slot, _ASSIGNED)])

    def open(self, slot: int) -> int:
        cells = self.cells
        index = self._cell(slot, _OPEN)
        return int(cells[index] + cells[index + 1])

    def queued(self, slot: int) -> int:
        """The program's idea of the slot's queue (assigned, not yet accepted)."""
        cells = self.cells
        index = self._cell(slot, 0)
        queued = (
            cells[index + _ASSIGNED]
            - cells[index + _BASE]
            - cells[index + _ACCEPTED]
            - cells[index + _ACCEPTED + 1]
        ) & _MASK
        return 0 if queued >= 1 << 63 else int(queued)

    def cost(self, slot: int) -> int:
        """ns per request of the slot's workers, as the program uses it."""
        cells = self.cells
        index = self._cell(slot, _COST)
        return int(max(cells[index], cells[index + 1], COST_FLOOR))

    def load(self, slot: int, now_ns: int | None = None) -> int:
        """The expected delay the program compares, in ns (see the module docstring);
        with ``now_ns``, as it would at that moment, the stall penalty included."""
        waiting = self.queued(slot) + self.open(slot) + 1
        load = waiting * self.cost(slot) + int(self.cells[self._cell(slot, _PENALTY)])
        if now_ns is not None and self.stalled(slot, now_ns):
            load += PENALTY_STALE
        return load

    def stalled(self, slot: int, now_ns: int) -> bool:
        """The program's stall test: queued for ``STALL_NS`` with no accept (see the module)."""
        cells = self.cells
        index = self._cell(slot, 0)
        since = max(cells[index + _SINCE], cells[index + _LAST], cells[index + _LAST + 1])
        return self.queued(slot) > 0 and now_ns - since > STALL_NS

    def rebase(self, slot: int, queue: int) -> None:
        """Re-anchor the slot's queue term on ``queue``, its real accept-queue length."""
        cells = self.cells
        index = self._cell(slot, 0)
        base = (
            cells[index + _ASSIGNED]
            - cells[index + _ACCEPTED]
            - cells[index + _ACCEPTED + 1]
            - queue
        )
        cells[index + _BASE] = base & 0xFFFF_FFFF_FFFF_FFFF

    def set_penalty(self, slot: int, penalty: int) -> None:
        self.cells[self._cell(slot, _PENALTY)] = penalty

    def lane_gone(self, slot: int, lane: int) -> None:
        """The worker of ``lane`` exited: its open connections went with it."""
        self.cells[self._cell(slot, _OPEN + lane)] = 0
        self.cells[self._cell(slot, _COST + lane)] = 0

    def clear_slot(self, slot: int) -> None:
        """The slot closed for good: a new socket in it starts from zero."""
        for field in range(_SLOT_CELLS):
            self.cells[self._cell(slot, field)] = 0

    # ------------------------------------------------------------------ worker
    def lane(self, slot: int, lane: int) -> Lane:
        if lane not in (0, 1):
            raise ValueError(f"lane {lane} is not 0 or 1")
        return Lane(
            self.cells,
            self._cell(slot, _ACCEPTED + lane),
            self._cell(slot, _OPEN + lane),
            self._cell(slot, _LAST + lane),
            self._cell(slot, _COST + lane),
        )

    def close_fd(self) -> None:
        """Drop the map's fd; the mapping stays valid (a worker needs only that)."""
        if self.map_fd is not None:
            os.close(self.map_fd)
            self.map_fd = None

    def close(self) -> None:
        self.cells.release()
        self._mem.close()
        self.close_fd()


class Lane:
    """One worker's cells in its slot: what it accepted from its own queue, what it has open.

    ``publish`` is called on every connection opened and closed; it is a few
    stores into shared memory.  The accepted count continues where the lane's
    previous worker left it, so the slot's sum only ever grows; when it moves,
    the time of that accept goes in too (``CLOCK_MONOTONIC`` ns, the program's
    clock), which is how the program tells a stalled worker from a busy one.
    """

    __slots__ = ("_accepted", "_cells", "_cost", "_last", "_last_value", "_offset", "_open")

    def __init__(self, cells: memoryview, accepted: int, open_: int, last: int, cost: int) -> None:
        self._cells = cells
        self._accepted = accepted
        self._open = open_
        self._last = last
        self._cost = cost
        self._offset = int(cells[accepted])
        self._last_value = self._offset

    def publish(self, accepted: int, open_: int) -> None:
        cells = self._cells
        total = self._offset + accepted
        if total != self._last_value:
            self._last_value = total
            cells[self._last] = time.monotonic_ns()
            cells[self._accepted] = total
        cells[self._open] = open_

    def publish_cost(self, cost_ns: int) -> None:
        """What a request costs this worker (ns of CPU), measured by its heartbeat."""
        self._cells[self._cost] = max(0, cost_ns)


# ---------------------------------------------------------------- the program

_CTX_HASH = 32  # offsetof(struct sk_reuseport_md, hash)
_HELPER_MAP_LOOKUP = 1
_HELPER_KTIME_GET_NS = 5  # CLOCK_MONOTONIC, as time.monotonic_ns()
_HELPER_SK_SELECT_REUSEPORT = 82
# Stack slots (offsets from r10).
_KEY, _SEL, _I1, _SLOT1, _SLOT2, _LOAD1, _CHOSEN, _NOW = -4, -8, -16, -24, -32, -40, -48, -56
_QUEUED1, _QUEUED2, _QUEUED = -64, -72, -80


def p2c_program(board_fd: int, socks_fd: int, capacity: int) -> list[EbpfInsn]:
    """The ``SK_REUSEPORT`` program: the less loaded of two hashed candidates.

    ``board_fd`` is the load board's map, ``socks_fd`` a
    ``REUSEPORT_SOCKARRAY`` of this group's sockets keyed by slot.  With n
    active slots, candidate one is ``active[hash % n]`` and candidate two
    another active slot chosen by the hash's upper bits, so two candidates
    always differ when n > 1 (with two workers: join the shorter queue).

    A candidate is *stalled* when its queue term is positive and neither an
    accept (its lanes' ``LAST``) nor the moment its queue last went from
    empty to non-empty (``SINCE``, which this program writes) is more recent
    than ``STALL_NS``: it then gets ``PENALTY_STALE`` added, so a worker that
    stopped accepting is avoided within milliseconds, without waiting for
    the master's sampling.  A busy worker that keeps accepting is not.

    The chosen slot's ``ASSIGNED`` is bumped once the selection succeeded
    (and its ``SINCE`` set if its queue was empty).  If anything is missing
    (no active slot, no socket for the slot), the program returns SK_PASS
    without a selection and the kernel falls back to its hash.  Every index
    is bounds-checked against ``capacity`` right before use so the verifier
    can prove each memory access stays inside the map value.
    """
    r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10 = range(11)
    base = _CELL * _slot_base(capacity)
    a = Asm()
    a.alu_reg(Asm.MOV, r6, r1)  # r6 = ctx
    a.load(r7, r6, _CTX_HASH, size=Asm.W)  # r7 = hash
    a.call(_HELPER_KTIME_GET_NS)
    a.store(r10, _NOW, r0)
    a.store_imm(r10, _KEY, 0, size=Asm.W)
    a.load_map(r1, board_fd)
    a.alu_reg(Asm.MOV, r2, r10)
    a.alu_imm(Asm.ADD, r2, _KEY)
    a.call(_HELPER_MAP_LOOKUP)
    a.jump_imm(Asm.JEQ, r0, 0, "pass")
    a.alu_reg(Asm.MOV, r8, r0)  # r8 = the board
    a.load(r9, r8, 0)  # r9 = n active
    a.jump_imm(Asm.JEQ, r9, 0, "pass")
    a.jump_imm(Asm.JGT, r9, capacity, "pass")
    # Candidate one: active[hash % n].
    a.alu_reg(Asm.MOV, r1, r7)
    a.alu_reg(Asm.MOD, r1, r9)
    a.jump_imm(Asm.JGE, r1, capacity, "pass")
    a.store(r10, _I1, r1)
    a.alu_imm(Asm.LSH, r1, 3)
    a.alu_reg(Asm.ADD, r1, r8)
    a.load(r1, r1, _CELL)
    a.jump_imm(Asm.JGE, r1, capacity, "pass")
    a.store(r10, _SLOT1, r1)

    def block_of(slot: int, block: int) -> None:
        # block = &board[base + slot * _SLOT_CELLS]
        a.alu_reg(Asm.MOV, block, slot)
        a.alu_imm(Asm.LSH, block, _SLOT_SHIFT)
        a.alu_imm(Asm.ADD, block, base)
        a.alu_reg(Asm.ADD, block, r8)

    emitted = [0]  # slot_load is emitted more than once: its labels need a suffix

    def slot_load(slot: int, out: int, queued_at: int) -> None:
        # queued = max(0, ASSIGNED - BASE - ACCEPTED0 - ACCEPTED1), kept at queued_at;
        # out = (queued + OPEN0 + OPEN1 + 1) * max(COST0, COST1, COST_FLOOR) + PENALTY
        #       (+ PENALTY_STALE if stalled).
        block, tmp, since, cost = r3, r5, r1, r0
        emitted[0] += 1
        n = emitted[0]
        block_of(slot, block)
        a.load(out, block, _CELL * _ASSIGNED)
        for field in (_BASE, _ACCEPTED, _ACCEPTED + 1):
            a.load(tmp, block, _CELL * field)
            a.alu_reg(Asm.SUB, out, tmp)
        a.jump_imm(Asm.JSGT, out, 0, f"positive{n}")
        a.alu_imm(Asm.MOV, out, 0)
        a.label(f"positive{n}")
        a.store(r10, queued_at, out)
        for field in (_OPEN, _OPEN + 1):
            a.load(tmp, block, _CELL * field)
            a.alu_reg(Asm.ADD, out, tmp)
        a.alu_imm(Asm.ADD, out, 1)
        a.alu_imm(Asm.MOV, cost, COST_FLOOR)
        for field in (_COST, _COST + 1):
            a.load(tmp, block, _CELL * field)
            a.jump_reg(Asm.JGE, cost, tmp, f"cost{n}{field}")
            a.alu_reg(Asm.MOV, cost, tmp)
            a.label(f"cost{n}{field}")
        a.alu_reg(Asm.MUL, out, cost)
        a.load(tmp, block, _CELL * _PENALTY)
        a.alu_reg(Asm.ADD, out, tmp)
        # Stalled?  queued > 0 and now - max(SINCE, LAST0, LAST1) > STALL_NS.
        a.load(tmp, r10, queued_at)
        a.jump_imm(Asm.JEQ, tmp, 0, f"done{n}")
        a.load(since, block, _CELL * _SINCE)
        for field in (_LAST, _LAST + 1):
            a.load(tmp, block, _CELL * field)
            a.jump_reg(Asm.JGE, since, tmp, f"later{n}{field}")
            a.alu_reg(Asm.MOV, since, tmp)
            a.label(f"later{n}{field}")
        a.load(tmp, r10, _NOW)
        a.alu_reg(Asm.SUB, tmp, since)
        a.jump_imm(Asm.JSLE, tmp, STALL_NS, f"done{n}")  # (a clock step back: not stalled)
        a.load_imm64(tmp, PENALTY_STALE)
        a.alu_reg(Asm.ADD, out, tmp)
        a.label(f"done{n}")

    a.jump_imm(Asm.JNE, r9, 1, "two")
    # One active slot: it is the choice; only its queue term is needed.
    slot_load(r1, r4, _QUEUED1)
    a.load(r2, r10, _SLOT1)
    a.load(r4, r10, _QUEUED1)
    a.store(r10, _QUEUED, r4)
    a.jump("select")
    a.label("two")
    # Candidate two: active[(i1 + 1 + (hash >> 8) % (n - 1)) % n], never i1.
    a.alu_reg(Asm.MOV, r2, r7)
    a.alu_imm(Asm.RSH, r2, 8)
    a.alu_reg(Asm.MOV, r3, r9)
    a.alu_imm(Asm.ADD, r3, -1)
    a.alu_reg(Asm.MOD, r2, r3)
    a.load(r1, r10, _I1)
    a.alu_reg(Asm.ADD, r2, r1)
    a.alu_imm(Asm.ADD, r2, 1)
    a.alu_reg(Asm.MOD, r2, r9)
    a.jump_imm(Asm.JGE, r2, capacity, "pass")
    a.alu_imm(Asm.LSH, r2, 3)
    a.alu_reg(Asm.ADD, r2, r8)
    a.load(r2, r2, _CELL)
    a.jump_imm(Asm.JGE, r2, capacity, "pass")
    a.store(r10, _SLOT2, r2)
    a.load(r1, r10, _SLOT1)
    a.jump_imm(Asm.JGE, r1, capacity, "pass")
    slot_load(r1, r4, _QUEUED1)
    a.store(r10, _LOAD1, r4)
    a.load(r2, r10, _SLOT2)
    a.jump_imm(Asm.JGE, r2, capacity, "pass")
    slot_load(r2, r4, _QUEUED2)
    a.load(r5, r10, _LOAD1)
    a.load(r2, r10, _SLOT2)
    a.load(r0, r10, _QUEUED2)
    a.store(r10, _QUEUED, r0)
    a.jump_reg(Asm.JLT, r4, r5, "select")  # strictly less: ties go to candidate one
    a.load(r2, r10, _SLOT1)
    a.load(r0, r10, _QUEUED1)
    a.store(r10, _QUEUED, r0)
    a.label("select")
    a.jump_imm(Asm.JGE, r2, capacity, "pass")
    a.store(r10, _CHOSEN, r2)
    a.store(r10, _SEL, r2, size=Asm.W)
    a.alu_reg(Asm.MOV, r1, r6)
    a.load_map(r2, socks_fd)
    a.alu_reg(Asm.MOV, r3, r10)
    a.alu_imm(Asm.ADD, r3, _SEL)
    a.alu_imm(Asm.MOV, r4, 0)
    a.call(_HELPER_SK_SELECT_REUSEPORT)
    a.jump_imm(Asm.JNE, r0, 0, "pass")
    a.load(r2, r10, _CHOSEN)
    a.jump_imm(Asm.JGE, r2, capacity, "pass")
    block_of(r2, r3)
    a.alu_imm(Asm.MOV, r1, 1)
    a.atomic_add(r3, _CELL * _ASSIGNED, r1)
    # Its queue was empty: it starts being non-empty now.
    a.load(r4, r10, _QUEUED)
    a.jump_imm(Asm.JNE, r4, 0, "pass")
    a.load(r4, r10, _NOW)
    a.store(r3, _CELL * _SINCE, r4)
    a.label("pass")
    a.alu_imm(Asm.MOV, r0, 1)  # SK_PASS
    a.exit()
    return a.program()


_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class KernelSteering:
    """The eBPF side of ``--steering p2c``: per bind, a socket map and the loaded program.

    Rules: created by the master at start-up, before any worker exists
    (loading needs CAP_BPF or CAP_SYS_ADMIN; the constructor raises OSError
    without it and the caller falls back to cBPF).  ``add``/``remove`` keep
    each bind's ``REUSEPORT_SOCKARRAY`` in step with the slots the master
    holds; ``attach`` gives each group its program (once per group: it stays
    attached while any member lives, and needs no re-attaching when the
    group's order changes, because it names sockets by slot, not by index).
    """

    def __init__(self, board: LoadBoard, binds: int) -> None:
        if board.map_fd is None:
            raise ValueError("kernel steering needs a load board backed by a BPF map")
        self.board = board
        self.socks_fds: list[int] = []
        self.prog_fds: list[int] = []
        self.attached = [False] * binds
        try:
            for _ in range(binds):
                socks = map_create(
                    MapType.REUSEPORT_SOCKARRAY,
                    key_size=4,
                    value_size=8,
                    max_entries=board.capacity,
                    name=b"reuseport_socks",
                )
                self.socks_fds.append(socks)
                program = p2c_program(board.map_fd, socks, board.capacity)
                self.prog_fds.append(
                    load_sk_reuseport(
                        program, AttachType.SK_REUSEPORT_SELECT, name=b"reuseport_p2c"
                    )
                )
        except BaseException:
            self.close()
            raise

    def add(self, slot: int, socks: Sequence[socket.socket]) -> None:
        """Slot ``slot``'s listening sockets (one per bind) may be selected."""
        for socks_fd, sock in zip(self.socks_fds, socks, strict=True):
            map_update(socks_fd, _U32.pack(slot), _U64.pack(sock.fileno()))

    def remove(self, slot: int) -> None:
        for socks_fd in self.socks_fds:
            with contextlib.suppress(FileNotFoundError):
                map_delete(socks_fd, _U32.pack(slot))

    def attach(self, index: int, sock: socket.socket) -> None:
        """Give bind ``index``'s group its program through ``sock``, a member."""
        if not self.attached[index]:
            attach_ebpf(sock, self.prog_fds[index])
            self.attached[index] = True

    def group_closed(self, index: int) -> None:
        """The group's last member closed: the next member starts a new group."""
        self.attached[index] = False

    def close(self) -> None:
        for fd in (*self.prog_fds, *self.socks_fds):
            os.close(fd)
        self.prog_fds.clear()
        self.socks_fds.clear()

    def close_in_child(self) -> None:
        """In a worker: it only publishes into the board's mapping, never loads or attaches."""
        self.close()
        self.board.close_fd()
