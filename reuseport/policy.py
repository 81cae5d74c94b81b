"""Pool decisions: how many workers to start or retire, given what the scoreboard shows.

Rules: pure.  No ``os`` calls, no clock of its own (``now`` is passed in), no
I/O: the arbiter builds a ``PoolView`` from its worker handles
(``PoolView.of``), asks ``PoolPolicy.decide``, and carries the ``Decision``
out; SIGTTIN/SIGTTOU come here as ``more``/``fewer``.  That keeps every pool
rule testable with a fake clock.

What "idle" means for an asyncio worker.  A php-fpm child is idle when it is
not running a request.  An asyncio worker runs many requests at once, so we
call it *busy* when, at the last look, it had a request in flight or it had
finished a request since the look before (looks come every heartbeat, at
most one second apart); otherwise it is *idle*, and ``idle_for`` says for how
long.  A keep-alive connection with no request on it does not make a worker
busy.

The three pools, as php-fpm has them:

- static: keep ``target`` workers (``-w``; SIGTTIN/SIGTTOU move the target).
- dynamic: every second, if more than ``max_spare`` workers are idle, retire
  one idle worker; if fewer than ``min_spare`` are idle, start some (1, then
  2, 4, ... up to ``max_spawn_rate`` per second while the shortage lasts),
  never more than ``max_workers`` in all.  A booting worker counts as idle,
  so a slow boot does not trigger a stampede of spawns.
- ondemand: no worker until a connection waits; then start one whenever
  connections wait and no worker is idle (at most ``max_spawn_rate`` per
  second, ``max_workers`` in all); retire a worker idle longer than
  ``idle_timeout`` (the longest idle first, one per second).

Rolling reloads and recycles (``Replacements``): the new worker first, the
old one stopped once the new one is ready.  A reload goes one slot at a
time; it is complete when no slot is left to replace, and abandoned when a
new worker fails (the old generation keeps serving).  Recycles do not
wait their turn: a worker that reached ``--max-requests`` has stopped taking
requests, so its slot waits on its replacement, and when several workers
reach their limits together their replacements boot together (as many as
the arbiter has room for: ``--max-workers`` booting at once, and free
scoreboard rows).  A slot is never replaced twice at once: a job for a slot
whose replacement still boots waits (a reload must also replace a worker
started just before it).

Crash loops (``CrashBackoff``): a worker that dies within a second of its
start, or before it was ready, makes its slot wait before the next try, 0.1 s
doubling up to 30 s; one that served for a while starts the count again.
Becoming ready does not reset it: a worker that crashes right after that
would otherwise be respawned in a tight loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import Config, ProcessManager
from .lifecycle import SpawnCause, WorkerHandle, WorkerState

__all__ = [
    "CrashBackoff",
    "Decision",
    "PoolPolicy",
    "PoolView",
    "Replacement",
    "Replacements",
    "Resize",
    "WorkerView",
]

_MAINTENANCE_INTERVAL = 1.0  # php-fpm's pool maintenance runs once a second


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerView:
    slot: int
    ready: bool
    busy: bool
    idle_for: float  # seconds since the worker was last seen busy (or since it booted)


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolView:
    workers: tuple[WorkerView, ...]  # live workers that are not being retired
    pending: bool = False  # connections wait in a queue
    target: int = 0  # static pool size

    @classmethod
    def of(
        cls,
        live: Sequence[WorkerHandle],
        *,
        now: float,
        anchor: int | None = None,
        pending: bool = False,
        target: int = 0,
    ) -> PoolView:
        """The view of the master's ``live`` workers; ``anchor``: the ondemand anchor slot."""
        views = []
        for handle in live:
            # The anchor's worker goes last: its slot is never drained, so
            # while others run, retiring it would leave a queue nobody serves.
            busy = handle.busy(now) or (handle.slot == anchor and len(live) > 1)
            views.append(
                WorkerView(
                    slot=handle.slot,
                    ready=handle.state is WorkerState.READY,
                    busy=busy,
                    idle_for=now - handle.last_busy,
                )
            )
        return cls(workers=tuple(views), pending=pending, target=target)


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    spawn: int = 0
    retire: tuple[int, ...] = ()  # slots, in the order to retire them
    warning: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Resize:
    """What SIGTTIN/SIGTTOU did: ``done``, or ignored; ``message`` says which."""

    done: bool
    message: str


class PoolPolicy:
    """Pool rules with the little state they need between calls."""

    def __init__(self, config: Config) -> None:
        self.pm = config.pm
        self.max_workers = config.pool_limit
        self.min_spare = config.effective_min_spare
        self.max_spare = config.effective_max_spare
        self.max_spawn_rate = config.max_spawn_rate
        self.idle_timeout = config.idle_timeout
        self.target = config.initial_workers  # static pool size; SIGTTIN/SIGTTOU move it
        self.extra = 0  # SIGTTIN in a dynamic/ondemand pool: workers to start now
        self._spawn_rate = 1
        self._last_maintenance = float("-inf")
        self._spawned_at: deque[float] = deque()
        self._warned_full = False

    def more(self, live: int) -> Resize:
        """SIGTTIN with ``live`` workers: static pools grow the target, others start one."""
        limit = self.max_workers
        if self.pm is not ProcessManager.STATIC:
            if live + self.extra >= limit:
                return Resize(done=False, message=f"SIGTTIN ignored: at --max-workers ({limit})")
            self.extra += 1
            return Resize(done=True, message="SIGTTIN: starting one more worker")
        if self.target >= limit:
            return Resize(
                done=False,
                message=f"SIGTTIN ignored: already at --max-workers ({limit}); "
                "raise it to grow further",
            )
        self.target += 1
        return Resize(done=True, message=f"SIGTTIN: workers {self.target - 1} -> {self.target}")

    def fewer(self) -> Resize:
        """SIGTTOU in a static pool: the target shrinks, never below one worker."""
        if self.target <= 1:
            return Resize(done=False, message="SIGTTOU ignored: keeping the last worker")
        self.target -= 1
        return Resize(done=True, message=f"SIGTTOU: workers {self.target + 1} -> {self.target}")

    def decide(self, view: PoolView, now: float) -> Decision:
        if self.pm is ProcessManager.STATIC:
            return self._static(view)
        if self.pm is ProcessManager.DYNAMIC:
            return self._dynamic(view, now)
        return self._ondemand(view, now)

    # -- static
    def _static(self, view: PoolView) -> Decision:
        live = len(view.workers)
        if live < view.target:
            return Decision(spawn=view.target - live)
        if live > view.target:
            extra = sorted((w.slot for w in view.workers), reverse=True)[: live - view.target]
            return Decision(retire=tuple(extra))
        return Decision()

    # -- dynamic
    def _dynamic(self, view: PoolView, now: float) -> Decision:
        if now - self._last_maintenance < _MAINTENANCE_INTERVAL:
            return Decision()
        self._last_maintenance = now
        live = len(view.workers)
        idle = [w for w in view.workers if not w.ready or not w.busy]
        if len(idle) > self.max_spare:
            self._spawn_rate = 1
            victim = self._longest_idle([w for w in idle if w.ready])
            return Decision(retire=(victim,)) if victim is not None else Decision()
        if len(idle) < self.min_spare:
            if live >= self.max_workers:
                self._spawn_rate = 1
                return self._full()
            count = min(self._spawn_rate, self.min_spare - len(idle), self.max_workers - live)
            self._spawn_rate = min(self._spawn_rate * 2, self.max_spawn_rate)
            return Decision(spawn=count)
        self._spawn_rate = 1
        self._warned_full = False
        return Decision()

    # -- ondemand
    def _ondemand(self, view: PoolView, now: float) -> Decision:
        live = len(view.workers)
        idle = [w for w in view.workers if not w.ready or not w.busy]
        if view.pending and not idle:
            if live >= self.max_workers:
                return self._full()
            while self._spawned_at and now - self._spawned_at[0] >= 1.0:
                self._spawned_at.popleft()
            if len(self._spawned_at) >= self.max_spawn_rate:
                return Decision()
            self._spawned_at.append(now)
            return Decision(spawn=1)
        if not view.pending:
            self._warned_full = False
        if now - self._last_maintenance < _MAINTENANCE_INTERVAL:
            return Decision()
        self._last_maintenance = now
        expired = [w for w in idle if w.ready and w.idle_for >= self.idle_timeout]
        victim = self._longest_idle(expired)
        return Decision(retire=(victim,)) if victim is not None else Decision()

    # -- helpers
    @staticmethod
    def _longest_idle(workers: list[WorkerView]) -> int | None:
        if not workers:
            return None
        # Longest idle first; among equals the highest slot, so low slots stay warm.
        return max(workers, key=lambda w: (w.idle_for, w.slot)).slot

    def _full(self) -> Decision:
        if self._warned_full:
            return Decision()
        self._warned_full = True
        return Decision(
            warning=(
                f"server reached --max-workers ({self.max_workers}) and all workers are busy; "
                "consider raising it"
            )
        )


@dataclass(slots=True)
class _SlotHistory:
    quick_failures: int = 0  # crashes in a row right after start
    not_before: float = 0.0  # no new worker in the slot before this time


class CrashBackoff:
    """Respawn delays for slots whose workers keep dying right after they start."""

    def __init__(
        self, *, quick: float = 1.0, first_delay: float = 0.1, max_delay: float = 30.0
    ) -> None:
        self.quick = quick
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._slots: dict[int, _SlotHistory] = {}

    def crashed(self, slot: int, *, lived: float, was_ready: bool, now: float) -> tuple[int, float]:
        """Record a crash after ``lived`` seconds; return (crashes in a row, delay)."""
        history = self._slots.setdefault(slot, _SlotHistory())
        if lived < self.quick or not was_ready:
            history.quick_failures += 1
            delay = min(self.max_delay, self.first_delay * 2 ** (history.quick_failures - 1))
            history.not_before = now + delay
            return history.quick_failures, delay
        history.quick_failures = 0
        return 0, 0.0

    def may_spawn(self, slot: int, now: float) -> bool:
        history = self._slots.get(slot)
        return history is None or now >= history.not_before


@dataclass(frozen=True, kw_only=True, slots=True)
class Replacement:
    slot: int
    cause: SpawnCause  # RELOAD or RECYCLE
    pid: int | None = None  # recycle: the worker that asked (not a successor of it)


class Replacements:
    """The queue of slots waiting for a new worker (reload, recycle).

    The arbiter queues jobs, asks ``reload_complete`` whenever no reload
    replacement boots, and ``take`` for the jobs to start now; it reports a
    failed reload with ``reload_failed``.
    """

    def __init__(self) -> None:
        self._jobs: deque[Replacement] = deque()
        self.reloading = False  # a reload was asked for and is not over

    def reload(self, slots: Iterable[int]) -> int:
        """Queue a reload of ``slots``; returns how many were not queued already."""
        # A queued recycle may be skipped (its worker replaced meanwhile): only
        # a queued reload makes a slot's reload already pending.
        queued = {job.slot for job in self._jobs if job.cause is SpawnCause.RELOAD}
        added = [slot for slot in slots if slot not in queued]
        self._jobs.extend(Replacement(slot=slot, cause=SpawnCause.RELOAD) for slot in added)
        self.reloading = self.reloading or bool(added)
        return len(added)

    def recycle(self, slot: int, pid: int) -> None:
        self._jobs.append(Replacement(slot=slot, cause=SpawnCause.RECYCLE, pid=pid))

    def take(
        self,
        ready: Mapping[int, int],
        *,
        replacing: Collection[int] = (),
        reloading: bool = False,
        room: int = 1,
    ) -> list[Replacement]:
        """The jobs to start now, in queue order; the others stay queued.

        ``ready`` maps each slot with a ready worker to its pid;
        ``replacing``: slots whose replacement boots now; ``reloading``: one
        of them is a reload's; ``room``: how many new workers may start.
        Recycles start while there is room, a reload only when no reload
        replacement boots (see the module docstring).  Dropped: a job for a
        slot with neither a ready worker nor a replacement under way (the
        slot is gone), a recycle whose worker was replaced meanwhile.
        """
        started: list[Replacement] = []
        kept: deque[Replacement] = deque()
        busy = set(replacing)
        for job in self._jobs:
            reload = job.cause is SpawnCause.RELOAD
            if len(started) >= room or job.slot in busy or (reload and reloading):
                kept.append(job)  # its turn comes (after the replacement in its slot)
                continue
            pid = ready.get(job.slot)
            if pid is None or (job.pid is not None and job.pid != pid):
                continue
            started.append(job)
            busy.add(job.slot)
            reloading = reloading or reload
        self._jobs = kept
        return started

    def next(self, ready: Mapping[int, int]) -> Replacement | None:
        """The next job to start, one at a time (``take`` with room for one)."""
        jobs = self.take(ready)
        return jobs[0] if jobs else None

    def retry(self, *jobs: Replacement) -> None:
        """``jobs`` could not start now: they go first next time, in this order."""
        self._jobs.extendleft(reversed(jobs))

    def reload_complete(self) -> bool:
        """True once when a reload has no slot left to replace."""
        if self.reloading and not any(job.cause is SpawnCause.RELOAD for job in self._jobs):
            self.reloading = False
            return True
        return False

    def reload_failed(self) -> bool:
        """A reload's new worker failed: drop the rest; True if a reload was under way."""
        self._jobs = deque(job for job in self._jobs if job.cause is not SpawnCause.RELOAD)
        was, self.reloading = self.reloading, False
        return was
