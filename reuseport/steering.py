"""Which sockets of a reuseport group may receive new connections.

Rules: pure (no I/O, no clock); the arbiter measures, this module decides, and
``bpf.py`` turns the decision into a program.

Why.  The kernel hashes each new connection to one member of a SO_REUSEPORT
group, whatever that member's worker is doing.  Two situations need better:

- a slot leaving the group for good must get no new connections while its
  worker empties its queue (``draining``): always excluded;
- with ``--steering load``, a worker that falls behind (its accept queue holds
  ``queue_limit`` more connections than the shortest queue of the group, its
  queue stops going down, or its event loop misses heartbeats) is taken out of the rotation until it
  catches up (its queue back down to the shortest), so a slow worker no
  longer keeps receiving its share: per-worker queues without reuseport's
  head-of-line blocking.

A slot whose worker is not ready yet (booting, or respawning after a crash)
is left out too when others can serve, so connections do not wait behind an
import.  If no worker serves at all, every member that is not draining is
allowed: queueing somewhere beats refusing.

Sibling rescue (``Rescue``) is the other half of work conservation, decided
in each worker: connections the kernel already queued for a worker that has
stopped accepting are taken by a healthy sibling, which holds a copy of every
slot's socket.  "Stopped" must not mean "busy": a sibling whose loop keeps
accepting, however loaded, is never robbed (that would turn reuseport's even
spread into shared mode's skew); only one whose queue holds connections while
its accept count has not moved for ``stall_after`` is rescued, and only until
it accepts again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Rescue", "SiblingSample", "SlotLoad", "Steering"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotLoad:
    slot: int
    ready: bool  # a ready worker accepts from this slot's socket
    draining: bool
    queue: int  # connections waiting in its accept queue
    stale: bool  # its worker's loop missed heartbeats, or its queue stopped going down


class Steering:
    """Allowed-slot decisions with hysteresis (``--steering load``)."""

    def __init__(
        self,
        *,
        load_aware: bool,
        queue_limit: int = 4,
        stale_after: float = 1.0,
        stall_after: float = 0.1,
    ) -> None:
        self.load_aware = load_aware
        self.queue_limit = queue_limit
        self.stale_after = stale_after  # seconds without a heartbeat
        self.stall_after = stall_after  # seconds a long queue may stand still
        self._held_back: set[int] = set()
        self._trend: dict[int, tuple[int, float]] = {}  # slot: (queue, when it last went down)
        self.stalled: list[int] = []  # slots found behind at the last ``decide``

    def decide(
        self,
        order: Sequence[int],
        *,
        serving: Collection[int],
        draining: int | None,
        queues: Mapping[int, int],
        beat_ages: Mapping[int, float],
        now: float,
    ) -> set[int]:
        """The slots of ``order`` (a group's slots by index) that may get new connections.

        ``serving``: slots a ready worker accepts from; ``queues`` and
        ``beat_ages`` (seconds since a serving worker's last heartbeat) are
        only read when load-aware.
        """
        loads = []
        self.stalled = []
        for slot in order:
            queue = queues.get(slot, 0)
            stale = self.load_aware and self.behind(slot, queue, beat_ages.get(slot), now)
            if stale:
                self.stalled.append(slot)
            loads.append(
                SlotLoad(
                    slot=slot,
                    ready=slot in serving or not self.load_aware,
                    draining=slot == draining,
                    queue=queue,
                    stale=stale,
                )
            )
        return self.allowed(loads)

    def behind(self, slot: int, queue: int, beat_age: float | None, now: float) -> bool:
        """Record ``slot``'s queue at ``now``; True if its worker falls behind (``stale``).

        Behind: its loop has not beaten for ``stale_after`` seconds
        (``beat_age``, None when no worker serves the slot), or its queue holds
        more than ``queue_limit`` connections and has not gone down for
        ``stall_after`` seconds.  A queue that does not go down is not being
        accepted from: a stalled worker, whatever the queue's length.
        """
        last_queue, moved_at = self._trend.get(slot, (0, now))
        if queue == 0 or queue < last_queue:
            moved_at = now
        self._trend[slot] = (queue, moved_at)
        stalled = queue > self.queue_limit and now - moved_at > self.stall_after
        return stalled or (beat_age is not None and beat_age > self.stale_after)

    def allowed(self, loads: Iterable[SlotLoad]) -> set[int]:
        loads = list(loads)
        open_slots = [s for s in loads if not s.draining]
        serving = [s for s in open_slots if s.ready]
        if not serving:
            return {s.slot for s in open_slots}
        if not self.load_aware:
            return {s.slot for s in serving}
        # Queues are compared with each other, not with a fixed bound: under
        # a burst every queue grows and nobody should be skipped, but a
        # worker that stalls falls behind the others.  A worker held back
        # comes back once its queue is down to the shortest one.
        live = [s for s in serving if not s.stale]
        if not live:  # every loop is late: judge by queue alone
            live = serving
        shortest = min(s.queue for s in live)
        for s in serving:
            if s not in live or s.queue > shortest + self.queue_limit:
                self._held_back.add(s.slot)
            elif s.queue <= shortest:
                self._held_back.discard(s.slot)
        self._held_back &= {s.slot for s in loads}
        allowed = {s.slot for s in live if s.slot not in self._held_back}
        return allowed or {s.slot for s in live if s.queue == shortest}


@dataclass(frozen=True, kw_only=True, slots=True)
class SiblingSample:
    """What a worker sees of a sibling slot at one look."""

    slot: int
    queue: int  # connections waiting in the sibling's accept queue (TCP_INFO)
    accepted: int  # connections the sibling's workers took from that queue, ever


class Rescue:
    """Which siblings' queues a worker should accept from now (sibling rescue).

    Feed it a sample of every sibling at each look; it answers the slots to
    rescue.  A sibling is rescued once its queue has held connections for
    ``stall_after`` seconds without its accept count moving, and until that
    count moves again (it is back) or it is no longer sampled (it left).  An
    empty queue alone does not end a rescue: while we rescue, we are the ones
    keeping it empty.
    """

    def __init__(self, *, stall_after: float = 0.01) -> None:
        self.stall_after = stall_after
        self._seen: dict[int, tuple[int, float]] = {}  # slot: (accepted, last seen accepting)
        self.rescuing: set[int] = set()

    def decide(self, samples: Iterable[SiblingSample], now: float) -> set[int]:
        seen: dict[int, tuple[int, float]] = {}
        for sample in samples:
            accepted, since = self._seen.get(sample.slot, (sample.accepted, now))
            moved = sample.accepted != accepted
            if moved:
                self.rescuing.discard(sample.slot)
            if moved or (sample.queue == 0 and sample.slot not in self.rescuing):
                since = now
            elif sample.queue > 0 and now - since >= self.stall_after:
                self.rescuing.add(sample.slot)
            seen[sample.slot] = (sample.accepted, since)
        self._seen = seen
        self.rescuing &= set(seen)
        return set(self.rescuing)
