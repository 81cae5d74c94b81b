"""Pool decisions: how many workers to start or retire, given what the scoreboard shows.

Rules: pure.  No ``os`` calls, no clock of its own (``now`` is passed in), no
I/O: the arbiter builds a ``PoolView`` from its handles and the scoreboard,
asks ``PoolPolicy.decide``, and carries the ``Decision`` out.  That keeps
every pool rule testable with a fake clock.

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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .config import Config, ProcessManager

__all__ = ["Decision", "PoolPolicy", "PoolView", "WorkerView"]

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    spawn: int = 0
    retire: tuple[int, ...] = ()  # slots, in the order to retire them
    warning: str | None = None


class PoolPolicy:
    """Pool rules with the little state they need between calls."""

    def __init__(self, config: Config) -> None:
        self.pm = config.pm
        self.max_workers = config.pool_limit
        self.min_spare = config.effective_min_spare
        self.max_spare = config.effective_max_spare
        self.max_spawn_rate = config.max_spawn_rate
        self.idle_timeout = config.idle_timeout
        self._spawn_rate = 1
        self._last_maintenance = float("-inf")
        self._spawned_at: deque[float] = deque()
        self._warned_full = False

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
