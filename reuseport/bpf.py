"""Classic BPF programs that steer a SO_REUSEPORT group (pure Python, unprivileged).

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
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Sequence

__all__ = [
    "SO_ATTACH_REUSEPORT_CBPF",
    "SO_DETACH_REUSEPORT_BPF",
    "Group",
    "attach_cbpf",
    "detach",
    "steering_program",
]

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

_SKF_AD_OFF = -0x1000
_SKF_AD_RANDOM = 56
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_ALU_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
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
    # jeq #i at position 2+i jumps to "ret allowed[i]" at position k+2+i:
    # the offset (k+2+i) - (2+i) - 1 is k-1 for every i.
    program += [(_BPF_JEQ_K, k - 1, 0, i) for i in range(k - 1)]
    program.append((_BPF_RET_K, 0, 0, allowed[k - 1]))
    program += [(_BPF_RET_K, 0, 0, allowed[i]) for i in range(k - 1)]
    return program


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
