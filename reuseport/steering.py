"""Which sockets of a reuseport group may receive new connections.

Rules: pure (no I/O, no clock); the arbiter measures, this module decides, and
``bpf.py`` turns the decision into a program.

Why.  The kernel hashes each new connection to one member of a SO_REUSEPORT
group, whatever that member's worker is doing.  Two situations need better:

- a slot leaving the group for good must get no new connections while its
  worker empties its queue (``draining``): always excluded;
- with ``--steering load``, a worker that falls behind (its accept queue holds
  more than ``queue_limit`` connections, or its event loop misses heartbeats)
  is taken out of the rotation until it catches up (queue back to zero), so a
  slow worker no longer keeps receiving its share: per-worker queues without
  reuseport's head-of-line blocking.

A slot whose worker is not ready yet (booting, or respawning after a crash)
is left out too when others can serve, so connections do not wait behind an
import.  If no slot qualifies, every member that is not draining is allowed:
queueing somewhere beats refusing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["SlotLoad", "Steering"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotLoad:
    slot: int
    ready: bool  # a ready worker accepts from this slot's socket
    draining: bool
    queue: int  # connections waiting in its accept queue
    stale: bool  # its worker's loop missed heartbeats


class Steering:
    """Allowed-slot decisions with hysteresis (``--steering load``)."""

    def __init__(self, *, load_aware: bool, queue_limit: int = 4) -> None:
        self.load_aware = load_aware
        self.queue_limit = queue_limit
        self._held_back: set[int] = set()

    def allowed(self, loads: Iterable[SlotLoad]) -> set[int]:
        loads = list(loads)
        open_slots = [s for s in loads if not s.draining]
        serving = [s for s in open_slots if s.ready]
        if self.load_aware:
            for s in serving:
                if s.stale or s.queue > self.queue_limit:
                    self._held_back.add(s.slot)
                elif s.queue == 0:
                    self._held_back.discard(s.slot)
            known = {s.slot for s in loads}
            self._held_back &= known
            healthy = [s for s in serving if s.slot not in self._held_back]
            if healthy:
                return {s.slot for s in healthy}
        if serving:
            return {s.slot for s in serving}
        return {s.slot for s in open_slots}

    @staticmethod
    def indices(order: Sequence[int], allowed: set[int]) -> list[int]:
        """Group indices (listen order) of the allowed slots."""
        return [index for index, slot in enumerate(order) if slot in allowed]
