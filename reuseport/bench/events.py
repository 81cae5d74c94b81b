"""What the master says happened to its pool: counters from its status snapshot.

Rules: pure functions over the JSON dict that ``reuseport.control.query``
returns; no I/O.  The counts come from the master's own ``events`` counters,
never from its log text, so rewording a log line can never zero a count.  A
snapshot without ``events`` (a master that predates them) gives ``None``,
never zeros: "not counted" must not read as "did not happen".

The snapshot's ``events`` (cumulative over the master's life)::

    "events": {
      "spawns": {"start": 0, "respawn": 0, "reload": 0, "recycle": 0, "scale": 0},
      "exits":  {"crash": 0, "heartbeat": 0, "recycle": 0, "reload": 0, "scale": 0,
                 "stop": 0, "boot": 0},
      "reloads": 0, "reloads_failed": 0, "recycles": 0, "drains": 0
    }

are flattened to one level (``"spawns.start"``, ``"exits.crash"``,
``"reloads"``, ...) so that a run's counts are one small JSON object and the
difference of two snapshots is a subtraction per key.

Counters move when a change *completes*: a worker retired by TTOU counts as
an exit (and, in reuseport mode, a drain) once it has drained and exited,
which can be a second or two after the signal.  So a run reads its "after"
counters once the pool has *settled* (no worker ``starting``, ``draining``
or ``stopping``, and none missing: a static pool runs its ``target``), or
else a scale-down sent near the end of the load would go uncounted, and so
would the respawn of a worker killed near the end (its slot waits out the
crash backoff with no worker in it, so no worker state shows it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EVENT_WORDS", "TRANSITIONAL_STATES", "PoolState", "count_difference", "flatten_events"]

# Worker states (as the snapshot spells them) of a pool still changing.
TRANSITIONAL_STATES = frozenset({"starting", "draining", "stopping"})

# The counters a report line shows, in order, and how it names them.
EVENT_WORDS: tuple[tuple[str, str], ...] = (
    ("reloads", "reloads"),
    ("recycles", "recycles"),
    ("drains", "drains"),
    ("exits.crash", "crashes"),
    ("reloads_failed", "failed reloads"),
    ("rescues", "rescues"),
    ("rescued", "rescued"),
)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def flatten_events(events: Mapping[str, Any]) -> dict[str, int]:
    """``{"spawns": {"start": 2}, "reloads": 1}`` -> ``{"spawns.start": 2, "reloads": 1}``.

    Values that are not counts (a newer master's richer entries, garbage) are
    left out rather than guessed at.
    """
    flat: dict[str, int] = {}
    for key, value in events.items():
        if isinstance(value, Mapping):
            for cause, count in value.items():
                if _is_count(count):
                    flat[f"{key}.{cause}"] = count
        elif _is_count(value):
            flat[str(key)] = value
    return flat


def count_difference(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Per key, how much ``after`` grew since ``before`` (a key new in ``after`` counts whole)."""
    return {key: after[key] - before.get(key, 0) for key in after}


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolState:
    """A master's pool at one moment, as its status snapshot tells it."""

    workers: int | None  # live workers; None if the snapshot does not say
    events: dict[str, int] | None  # flattened counters; None: the master counts no events
    changing: int = 0  # workers starting, draining or stopping
    missing: int = 0  # workers a static pool wants but has not started yet

    @property
    def settled(self) -> bool:
        """No worker is starting, draining or stopping, and none is missing."""
        return self.changing == 0 and self.missing == 0

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> PoolState:
        pool = snapshot.get("pool")
        running = pool.get("running") if isinstance(pool, Mapping) else None
        target = pool.get("target") if isinstance(pool, Mapping) else None
        workers_list = snapshot.get("workers")
        if _is_count(running):
            workers: int | None = running
        elif isinstance(workers_list, list):
            workers = len(workers_list)
        else:
            workers = None
        events = snapshot.get("events")
        changing = 0
        if isinstance(workers_list, list):
            changing = sum(
                1
                for w in workers_list
                if isinstance(w, Mapping) and w.get("state") in TRANSITIONAL_STATES
            )
        flat = flatten_events(events) if isinstance(events, Mapping) else None
        totals = snapshot.get("totals")
        rescued = totals.get("rescued") if isinstance(totals, Mapping) else None
        if flat is not None and isinstance(rescued, int) and _is_count(rescued):
            # Connections served by a sibling of the worker they were queued
            # for (sibling rescue); summed over the live workers.
            flat["rescued"] = rescued
        missing = 0
        if isinstance(target, int) and isinstance(workers, int) and _is_count(target):
            missing = max(0, target - workers)
        return cls(workers=workers, events=flat, changing=changing, missing=missing)

    def events_since(self, earlier: PoolState) -> dict[str, int] | None:
        """The events between ``earlier`` and this state; None if either was not counted."""
        if self.events is None or earlier.events is None:
            return None
        return count_difference(earlier.events, self.events)
