"""BPF programs for a SO_REUSEPORT group: classic BPF to steer, and the eBPF loader.

Why: closing a listener resets every connection still queued in it (unless
``net.ipv4.tcp_migrate_req`` is on).  Before a worker's socket leaves the
group for good, the master attaches a program that never returns that
socket's index, the worker accepts until its queue is empty, and only then is
the socket closed.  A reuseport cBPF program returns an index into the group's
socket array; the array is ordered by ``listen()`` and, when a member closes,
the last member moves into its hole (``Group`` keeps that bookkeeping).  A
returned index past the end makes the kernel fall back to its hash.

The program is a table over the allowed indices::

    ld  random            ; A = a random u32 (SKF_AD_RANDOM)
    mod #k                ; A = A % k
    jeq #0, ret_0         ; one test per allowed index but the last
    ...
    ret allowed[k-1]
    ret_0: ret allowed[0]
    ...

That program picks at random, which suits TCP: only a connection's first
packet (the SYN) goes through it.  A UDP group runs its program for every
datagram, so a random pick would scatter each flow's datagrams over the
workers (a QUIC connection, a game session, a DNS client's retries).
``flow_hash_program`` picks among the allowed indices by a hash of the
datagram's source address and port instead, read from the network header
(``SKF_NET_OFF``: the program itself sees the packet from the UDP payload on),
so each flow stays with one worker while a slot is steered out::

    ld  [net + saddr]      ; IPv6: the four words of the source address, xored
    tax
    ldh [net + sport]      ; the UDP source port (no IP options / extension headers
    xor x                  ;  assumed: the hash is still stable per flow if there are)
    mul #0x9e3779b1        ; spread the bits (Fibonacci hashing), keep the high half
    rsh #16
    mod #k
    ...                    ; then the same table as above

cBPF needs no privilege and no syscall beyond ``setsockopt``.  eBPF
(``SK_REUSEPORT`` programs, the only way to migrate queued connections
without the ``tcp_migrate_req`` sysctl, and later maps of sockets for real
load steering) goes through ``bpf(2)``, which Python does not wrap: the
second half of this module calls it through ctypes.  Its layers, kept apart
so that maps and bigger programs are additions, not rewrites:

- ``EbpfInsn`` and its builders (``mov64_imm``, ``exit_insn``): one 8-byte
  ``struct bpf_insn`` each, encoded in native byte order;
- ``bpf(cmd, attr)``: the raw syscall for any command (``BpfCmd``) and its
  ``union bpf_attr`` member as a ctypes structure; raises ``OSError``;
- ``load_sk_reuseport(insns, attach_type)``: ``BPF_PROG_LOAD`` of an
  ``SK_REUSEPORT`` program, returning its fd, and ``attach_ebpf`` to give it
  to a group.

Loading needs CAP_BPF or CAP_SYS_ADMIN (EPERM otherwise); attaching an
already-loaded program's fd needs nothing.  A map command (``MAP_CREATE``,
``MAP_UPDATE_ELEM``, ...) is another ``BpfCmd`` value, another attr structure
and a three-line function around ``bpf()``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BPF_F_MMAPABLE",
    "SK_PASS",
    "SO_ATTACH_REUSEPORT_CBPF",
    "SO_ATTACH_REUSEPORT_EBPF",
    "SO_DETACH_REUSEPORT_BPF",
    "Asm",
    "AttachType",
    "BpfCmd",
    "EbpfInsn",
    "Group",
    "MapType",
    "attach_cbpf",
    "attach_ebpf",
    "bpf",
    "bpf_syscall_number",
    "detach",
    "exit_insn",
    "flow_hash_program",
    "load_sk_reuseport",
    "map_create",
    "map_delete",
    "map_update",
    "mov64_imm",
    "steering_program",
]

# Constants Python's socket module lacks (asm-generic values, x86-64 and arm64).
SO_ATTACH_REUSEPORT_CBPF = 51
SO_ATTACH_REUSEPORT_EBPF = 52
SO_DETACH_REUSEPORT_BPF = 68

_SKF_AD_OFF = -0x1000
_SKF_AD_RANDOM = 56
_SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_LD_H_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
_BPF_TAX = 0x07  # BPF_MISC | BPF_TAX
_BPF_ALU_XOR_X = 0xAC  # BPF_ALU | BPF_XOR | BPF_X
_BPF_ALU_MUL_K = 0x24  # BPF_ALU | BPF_MUL | BPF_K
_BPF_ALU_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_BPF_ALU_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_GOLDEN = 0x9E3779B1  # 2**32 / the golden ratio: Knuth's multiplicative hash
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_MAX_ALLOWED = 255  # a jump offset is one byte

Insn = tuple[int, int, int, int]  # code, jt, jf, k


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    # The compiler pads `len` to pointer alignment; ctypes does the same.
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def steering_program(allowed: Sequence[int]) -> list[Insn]:
    """A program that picks uniformly at random among the ``allowed`` indices."""
    k = len(allowed)
    if not 1 <= k <= _MAX_ALLOWED:
        raise ValueError(f"steering needs 1..{_MAX_ALLOWED} allowed sockets, got {k}")
    if k == 1:
        return [(_BPF_RET_K, 0, 0, allowed[0])]
    program: list[Insn] = [
        (_BPF_LD_W_ABS, 0, 0, (_SKF_AD_OFF + _SKF_AD_RANDOM) & 0xFFFFFFFF),
        (_BPF_ALU_MOD_K, 0, 0, k),
    ]
    return program + _table(allowed)


def _table(allowed: Sequence[int]) -> list[Insn]:
    """``A`` holds ``i`` in 0..k-1: return ``allowed[i]`` (see ``steering_program``)."""
    k = len(allowed)
    # jeq #i at position i jumps to "ret allowed[i]" at position k+i: offset k-1.
    table = [(_BPF_JEQ_K, k - 1, 0, i) for i in range(k - 1)]
    table.append((_BPF_RET_K, 0, 0, allowed[k - 1]))
    table += [(_BPF_RET_K, 0, 0, allowed[i]) for i in range(k - 1)]
    return table


def _net(offset: int) -> int:
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def flow_hash_program(allowed: Sequence[int], family: socket.AddressFamily) -> list[Insn]:
    """For a UDP group: the allowed index a hash of the source address and port picks.

    Every datagram of one flow (source address and port) gets the same
    index, so a flow stays with one worker while the program is attached.
    """
    k = len(allowed)
    if not 1 <= k <= _MAX_ALLOWED:
        raise ValueError(f"steering needs 1..{_MAX_ALLOWED} allowed sockets, got {k}")
    if k == 1:
        return [(_BPF_RET_K, 0, 0, allowed[0])]
    if family == socket.AF_INET6:
        # struct ipv6hdr: the source address at 8..23, the UDP header at 40.
        program: list[Insn] = [(_BPF_LD_W_ABS, 0, 0, _net(8)), (_BPF_TAX, 0, 0, 0)]
        for offset in (12, 16, 20):
            program += [
                (_BPF_LD_W_ABS, 0, 0, _net(offset)),
                (_BPF_ALU_XOR_X, 0, 0, 0),
                (_BPF_TAX, 0, 0, 0),
            ]
        sport = 40
    else:
        # struct iphdr: the source address at 12, the UDP header at 20 (no options).
        program = [(_BPF_LD_W_ABS, 0, 0, _net(12)), (_BPF_TAX, 0, 0, 0)]
        sport = 20
    program += [
        (_BPF_LD_H_ABS, 0, 0, _net(sport)),
        (_BPF_ALU_XOR_X, 0, 0, 0),
        (_BPF_ALU_MUL_K, 0, 0, _GOLDEN),
        (_BPF_ALU_RSH_K, 0, 0, 16),
        (_BPF_ALU_MOD_K, 0, 0, k),
    ]
    return program + _table(allowed)


def attach_cbpf(sock: socket.socket, program: Sequence[Insn]) -> None:
    """setsockopt(SO_ATTACH_REUSEPORT_CBPF): the program then serves the whole group."""
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    fprog = _SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    # bytes(fprog) holds the address of `filters`, which this frame keeps alive;
    # the kernel copies the instructions during the call.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def detach(sock: socket.socket) -> None:
    """Remove the group's program (Linux >= 5.3); the kernel hashes again."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


class Group:
    """The master's picture of one reuseport group: which slot sits at which index."""

    def __init__(self) -> None:
        self.order: list[int] = []  # order[index] = slot

    def joined(self, slot: int) -> None:
        """A slot's socket called listen(): it takes the next index."""
        self.order.append(slot)

    def left(self, slot: int) -> None:
        """A slot's socket closed: the last member moves into its hole."""
        index = self.order.index(slot)
        last = self.order.pop()
        if index < len(self.order):
            self.order[index] = last

    def indices_except(self, excluded: set[int]) -> list[int]:
        return [i for i, slot in enumerate(self.order) if slot not in excluded]


# --------------------------------------------------------------------------- eBPF

# __NR_bpf per machine (platform.machine()): the syscall has no libc wrapper.
_NR_BPF = {
    "x86_64": 321,
    "amd64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64": 361,
    "ppc64le": 361,
    "s390x": 351,
    "i386": 357,
    "i686": 357,
    "armv7l": 386,
}

_BPF_PROG_TYPE_SK_REUSEPORT = 21
SK_PASS = 1  # an SK_REUSEPORT program's "let the kernel (or my selection) decide"

_BPF_ALU64 = 0x07
_BPF_JMP = 0x05
_BPF_MOV = 0xB0
_BPF_K = 0x00
_BPF_EXIT = 0x90
_INSN = struct.Struct("=BBhi")  # struct bpf_insn: code, dst_reg:4 + src_reg:4, off, imm
_VERIFIER_LOG = 64 * 1024  # bytes of the verifier's explanation kept when a load fails


class BpfCmd(enum.IntEnum):
    """``bpf(2)`` commands (``enum bpf_cmd``) this module issues."""

    MAP_CREATE = 0
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    PROG_LOAD = 5


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` values this project uses."""

    ARRAY = 2
    REUSEPORT_SOCKARRAY = 20  # Linux >= 4.19: the sockets bpf_sk_select_reuseport picks from


BPF_F_MMAPABLE = 1 << 10  # an ARRAY map user space can mmap (Linux >= 5.5)


class AttachType(enum.IntEnum):
    """``expected_attach_type`` of an ``SK_REUSEPORT`` program."""

    SK_REUSEPORT_SELECT = 39
    SK_REUSEPORT_SELECT_OR_MIGRATE = 40  # Linux >= 5.14: also picks for migrated requests


@dataclass(frozen=True, kw_only=True, slots=True)
class EbpfInsn:
    """One ``struct bpf_insn``; the builders below make the common ones."""

    code: int
    dst: int = 0  # register 0-10
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # The two 4-bit register fields share a byte; the bitfield order
        # follows the machine's byte order, as in the kernel's header.
        little = sys.byteorder == "little"
        regs = (self.src << 4) | self.dst if little else (self.dst << 4) | self.src
        return _INSN.pack(self.code, regs, self.off, self.imm)


def mov64_imm(dst: int, imm: int) -> EbpfInsn:
    """``dst = imm`` (64-bit register, sign-extended 32-bit immediate)."""
    return EbpfInsn(code=_BPF_ALU64 | _BPF_MOV | _BPF_K, dst=dst, imm=imm)


def exit_insn() -> EbpfInsn:
    """``exit``: return r0."""
    return EbpfInsn(code=_BPF_JMP | _BPF_EXIT)


class _ProgLoadAttr(ctypes.Structure):
    # The BPF_PROG_LOAD member of `union bpf_attr`, up to expected_attach_type.
    # The kernel zero-fills the fields we leave out.
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


def bpf_syscall_number() -> int | None:
    """``__NR_bpf`` on this machine; None off Linux or on an architecture we do not know."""
    if not sys.platform.startswith("linux"):
        return None
    return _NR_BPF.get(platform.machine())


def bpf(cmd: BpfCmd, attr: ctypes.Structure) -> int:
    """``bpf(cmd, &attr, sizeof attr)``; returns the syscall's result or raises ``OSError``.

    ``OSError(ENOSYS)`` where the syscall number is unknown (not Linux, or an
    architecture missing from the table).
    """
    nr = bpf_syscall_number()
    if nr is None:
        where = f"{sys.platform} {platform.machine()}"
        raise OSError(errno.ENOSYS, f"the bpf(2) syscall number is unknown on {where}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = int(
        libc.syscall(
            ctypes.c_long(nr),
            ctypes.c_long(int(cmd)),
            ctypes.byref(attr),
            ctypes.c_uint(ctypes.sizeof(attr)),
        )
    )
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


#: How many times a program load interrupted by a signal is tried again.
_PROG_LOAD_ATTEMPTS = 5


def _prog_load(attr: ctypes.Structure) -> int:
    """``BPF_PROG_LOAD``, again when a signal interrupted the verifier.

    The verifier gives up with EAGAIN when a signal is pending on the caller
    (a master gets SIGCHLD whenever a worker exits), which says nothing about
    the program; the load is tried again a few times before the EAGAIN stands.
    """
    for _ in range(_PROG_LOAD_ATTEMPTS - 1):
        try:
            return bpf(BpfCmd.PROG_LOAD, attr)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
    return bpf(BpfCmd.PROG_LOAD, attr)


def load_sk_reuseport(
    insns: Sequence[EbpfInsn], attach_type: AttachType, *, name: bytes = b"reuseport"
) -> int:
    """``BPF_PROG_LOAD`` an ``SK_REUSEPORT`` program; returns its fd (the caller closes it).

    Raises ``OSError``: EPERM/EACCES without CAP_BPF or CAP_SYS_ADMIN, EINVAL
    when the kernel knows no such program or attach type, ENOSYS without
    ``bpf(2)``.
    """
    code = b"".join(insn.encode() for insn in insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=_BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt=len(insns),
        insns=ctypes.addressof(buffer),
        license=ctypes.addressof(license_),
        prog_name=name[:15],
        expected_attach_type=int(attach_type),
    )
    # `buffer` and `license_` live in this frame until bpf() returns; the
    # kernel copies both during the call.
    try:
        return _prog_load(attr)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise
        # The verifier refused it (or the kernel lacks a feature): load again
        # with its log on, so the error says why.
        log = ctypes.create_string_buffer(_VERIFIER_LOG)
        attr.log_level, attr.log_size, attr.log_buf = 1, _VERIFIER_LOG, ctypes.addressof(log)
        try:
            return _prog_load(attr)
        except OSError as again:
            lines = log.value.decode("ascii", "replace").strip().splitlines()
            why = " / ".join(lines[-3:]) if lines else "no verifier log"
            raise OSError(again.errno, f"{again.strerror} (verifier: {why})") from None


def attach_ebpf(sock: socket.socket, prog_fd: int) -> None:
    """setsockopt(SO_ATTACH_REUSEPORT_EBPF): the loaded program then serves the whole group."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog_fd)


# ---------------------------------------------------------------- maps


class _MapCreateAttr(ctypes.Structure):
    # The BPF_MAP_CREATE member of `union bpf_attr`, up to map_name.
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _MapElemAttr(ctypes.Structure):
    # The BPF_MAP_*_ELEM member: map_fd, key, value (or next_key), flags.
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def map_create(
    map_type: MapType,
    *,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    name: bytes = b"reuseport",
) -> int:
    """``BPF_MAP_CREATE``; returns the map's fd (the caller closes it).

    Raises ``OSError`` (EPERM without CAP_BPF, EINVAL for a map type or flag
    this kernel lacks).
    """
    attr = _MapCreateAttr(
        map_type=int(map_type),
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name[:15],
    )
    return bpf(BpfCmd.MAP_CREATE, attr)


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    """``BPF_MAP_UPDATE_ELEM`` (create or replace)."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = _MapElemAttr(
        map_fd=map_fd, key=ctypes.addressof(key_buf), value=ctypes.addressof(value_buf)
    )
    bpf(BpfCmd.MAP_UPDATE_ELEM, attr)


def map_delete(map_fd: int, key: bytes) -> None:
    """``BPF_MAP_DELETE_ELEM``; raises ``OSError(ENOENT)`` if the key holds nothing."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _MapElemAttr(map_fd=map_fd, key=ctypes.addressof(key_buf))
    bpf(BpfCmd.MAP_DELETE_ELEM, attr)


# ---------------------------------------------------------------- a small assembler

# Instruction classes, sizes, modes and operations (linux/bpf_common.h, bpf.h).
_LD, _LDX, _ST, _STX, _JMP_CLASS = 0x00, 0x01, 0x02, 0x03, 0x05
_W, _DW = 0x00, 0x18
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_X = 0x08
_PSEUDO_MAP_FD = 1  # src_reg of a 64-bit immediate load that names a map by fd


def _s32(value: int) -> int:
    """``value`` (0 .. 2**32-1) as the signed 32-bit immediate an instruction holds."""
    return value - (1 << 32) if value >= 1 << 31 else value


class Asm:
    """Builds an eBPF program with named jump targets; ``program()`` resolves them.

    Registers are plain ints (r0 return value and helper result, r1-r5
    helper arguments, clobbered by calls, r6-r9 kept across calls, r10 the
    read-only frame pointer).  Only what the steering program needs is here.
    """

    W, DW = _W, _DW  # access sizes: u32, u64
    ADD, SUB, MUL, LSH, RSH, MOD, MOV = 0x00, 0x10, 0x20, 0x60, 0x70, 0x90, 0xB0
    JA, JEQ, JGT, JGE, JNE, JSGT, JLT, JLE, JSLE = (
        0x00,
        0x10,
        0x20,
        0x30,
        0x50,
        0x60,
        0xA0,
        0xB0,
        0xD0,
    )

    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def _emit(
        self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0
    ) -> None:
        self._insns.append((code, dst, src, off, imm))

    def alu_imm(self, op: int, dst: int, imm: int) -> None:
        """``dst op= imm`` (64-bit)."""
        self._emit(_BPF_ALU64 | op | _BPF_K, dst, 0, 0, imm)

    def alu_reg(self, op: int, dst: int, src: int) -> None:
        """``dst op= src`` (64-bit)."""
        self._emit(_BPF_ALU64 | op | _X, dst, src)

    def load(self, dst: int, base: int, off: int, *, size: int = _DW) -> None:
        """``dst = *(u64 *)(base + off)`` (``size=Asm.W`` for u32)."""
        self._emit(_LDX | size | _MEM, dst, base, off)

    def store(self, base: int, off: int, src: int, *, size: int = _DW) -> None:
        """``*(u64 *)(base + off) = src``."""
        self._emit(_STX | size | _MEM, base, src, off)

    def store_imm(self, base: int, off: int, imm: int, *, size: int = _DW) -> None:
        self._emit(_ST | size | _MEM, base, 0, off, imm)

    def atomic_add(self, base: int, off: int, src: int) -> None:
        """``lock *(u64 *)(base + off) += src``."""
        self._emit(_STX | _DW | _ATOMIC, base, src, off, self.ADD)

    def load_imm64(self, dst: int, value: int) -> None:
        """``dst = value`` (a full 64-bit immediate, two instruction slots)."""
        self._emit(_LD | _DW | _IMM, dst, 0, 0, _s32(value & 0xFFFFFFFF))
        self._emit(0, 0, 0, 0, _s32(value >> 32))

    def load_map(self, dst: int, map_fd: int) -> None:
        """``dst = the map named by map_fd`` (two instruction slots)."""
        self._emit(_LD | _DW | _IMM, dst, _PSEUDO_MAP_FD, 0, map_fd)
        self._emit(0)

    def jump_imm(self, op: int, dst: int, imm: int, target: str) -> None:
        self._emit(_JMP_CLASS | op | _BPF_K, dst, 0, target, imm)

    def jump_reg(self, op: int, dst: int, src: int, target: str) -> None:
        self._emit(_JMP_CLASS | op | _X, dst, src, target)

    def jump(self, target: str) -> None:
        self._emit(_JMP_CLASS | self.JA, 0, 0, target)

    def call(self, helper: int) -> None:
        self._emit(_JMP_CLASS | 0x80, 0, 0, 0, helper)

    def exit(self) -> None:
        self._emit(_JMP_CLASS | _BPF_EXIT)

    def program(self) -> list[EbpfInsn]:
        out = []
        for index, (code, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"jump to undefined label {off!r}")
                off = self._labels[off] - index - 1
            out.append(EbpfInsn(code=code, dst=dst, src=src, off=off, imm=imm))
        return out
