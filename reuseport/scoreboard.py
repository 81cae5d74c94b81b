"""The scoreboard: one shared-memory row per worker process.

Rules: created by the master before the first fork (an anonymous shared
mapping, so every worker inherits it).  It has twice as many rows as the pool
has slots, because during a rolling reload a slot's old and new worker live
side by side; the master hands each new worker a free row.  Each worker writes
only its own row; the master reads every row and writes a row only while no
worker owns it (before spawning into it, after reaping).  No locks: a row is
small, packed first and then copied in with one slice assignment; a reader may
see a row that mixes two consecutive writes field by field, at worst for one
heartbeat, which no decision depends on to the byte (but never a field that
neither write had: see ``write``).
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass

__all__ = ["Row", "Scoreboard", "SlotState"]


class SlotState(enum.IntEnum):
    EMPTY = 0
    STARTING = 1
    READY = 2
    DRAINING = 3
    STOPPING = 4


# pid, slot, generation, state, started, heartbeat, requests, in_flight, connections,
# accepted, rescued
_ROW = struct.Struct("<iiIB3xddQIIQQ")


@dataclass(frozen=True, slots=True)
class Row:
    index: int
    pid: int
    slot: int
    generation: int
    state: SlotState
    started: float  # time.monotonic() when the worker booted
    heartbeat: float  # time.monotonic() of the worker loop's last beat
    requests: int
    in_flight: int
    connections: int
    accepted: int
    rescued: int = 0  # of accepted, from a stalled sibling's queue


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.size = 2 * max(1, slots)
        self._mem = mmap.mmap(-1, self.size * _ROW.size, flags=mmap.MAP_SHARED)

    def write(
        self,
        index: int,
        *,
        pid: int,
        slot: int,
        generation: int,
        state: SlotState,
        started: float,
        heartbeat: float,
        requests: int = 0,
        in_flight: int = 0,
        connections: int = 0,
        accepted: int = 0,
        rescued: int = 0,
    ) -> None:
        # Pack first, then copy the row in one go: ``pack_into`` would zero
        # the whole row before writing each field, and a reader catching that
        # moment would see heartbeat 0 (a loop stuck since boot) or state
        # EMPTY (a live worker's row looking free).
        offset = index * _ROW.size
        self._mem[offset : offset + _ROW.size] = _ROW.pack(
            pid,
            slot,
            generation,
            int(state),
            started,
            heartbeat,
            requests,
            max(0, in_flight),
            max(0, connections),
            accepted,
            rescued,
        )

    def read(self, index: int) -> Row:
        pid, slot, gen, state, started, beat, req, inflight, conns, acc, res = _ROW.unpack_from(
            self._mem, index * _ROW.size
        )
        return Row(
            index, pid, slot, gen, SlotState(state), started, beat, req, inflight, conns, acc, res
        )

    def rows(self) -> list[Row]:
        return [self.read(index) for index in range(self.size)]

    def free_index(self) -> int | None:
        for index in range(self.size):
            if self.read(index).state is SlotState.EMPTY:
                return index
        return None

    def claim(self, *, slot: int, generation: int, now: float) -> int | None:
        """Take a free row for a worker about to be forked (STARTING); None if all are taken."""
        index = self.free_index()
        if index is not None:
            self.write(
                index,
                pid=0,
                slot=slot,
                generation=generation,
                state=SlotState.STARTING,
                started=now,
                heartbeat=now,
            )
        return index

    def clear(self, index: int) -> None:
        self.write(
            index, pid=0, slot=0, generation=0, state=SlotState.EMPTY, started=0.0, heartbeat=0.0
        )

    def close(self) -> None:
        self._mem.close()
