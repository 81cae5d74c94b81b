"""``PoolPolicy``: the pool rules, fed views and a fake clock, no processes.

Rules: every test builds a ``PoolView`` by hand, advances its own clock and
asserts the ``Decision``.  Nothing here sleeps or forks; the arbiter's side
(carrying the decisions out) is tested in ``test_pool.py``.
"""

from __future__ import annotations

import socket

import pytest
from handles import handle_in

from reuseport.config import Config, ProcessManager
from reuseport.errors import ConfigError
from reuseport.lifecycle import SpawnCause, WorkerState
from reuseport.policy import (
    CrashBackoff,
    Decision,
    PoolPolicy,
    PoolView,
    Replacement,
    Replacements,
    Resize,
    WorkerView,
)

FULL = "server reached --max-workers"


def worker(
    slot: int, *, busy: bool = False, ready: bool = True, idle_for: float = 0.0
) -> WorkerView:
    return WorkerView(slot=slot, ready=ready, busy=busy, idle_for=idle_for)


def pool(*workers: WorkerView, pending: bool = False, target: int = 0) -> PoolView:
    return PoolView(workers=tuple(workers), pending=pending, target=target)


def busy_pool(count: int) -> PoolView:
    return pool(*(worker(i, busy=True) for i in range(count)))


def dynamic(**kwargs: object) -> PoolPolicy:
    values: dict[str, object] = {"pm": ProcessManager.DYNAMIC, "max_workers": 8, **kwargs}
    return PoolPolicy(Config(**values))  # type: ignore[arg-type]


def ondemand(**kwargs: object) -> PoolPolicy:
    values: dict[str, object] = {"pm": ProcessManager.ONDEMAND, "max_workers": 4, **kwargs}
    return PoolPolicy(Config(**values))  # type: ignore[arg-type]


class Clock:
    """A fake monotonic clock: the tests move it by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


# ------------------------------------------------------------------ static
def test_static_spawns_up_to_target() -> None:
    policy = PoolPolicy(Config(workers=4))
    assert policy.decide(pool(worker(0), target=4), 0.0) == Decision(spawn=3)


def test_static_retires_the_highest_slots_first() -> None:
    policy = PoolPolicy(Config(workers=2))
    view = pool(worker(3), worker(0), worker(5), worker(1), target=2)
    assert policy.decide(view, 0.0) == Decision(retire=(5, 3))


def test_static_at_target_does_nothing_and_has_no_rate_limit() -> None:
    policy = PoolPolicy(Config(workers=2))
    view = pool(worker(0), worker(1), target=2)
    for now in (0.0, 0.0, 0.1):
        assert policy.decide(view, now) == Decision()
    # A static pool answers every call: a lost worker is replaced at once.
    assert policy.decide(pool(worker(0), target=2), 0.1) == Decision(spawn=1)
    assert policy.decide(pool(worker(0), target=2), 0.1) == Decision(spawn=1)


def test_static_ignores_busy_and_idle() -> None:
    policy = PoolPolicy(Config(workers=2))
    view = pool(worker(0, idle_for=1e6), worker(1, busy=True), target=2)
    assert policy.decide(view, 0.0) == Decision()


# ------------------------------------------------------------------ dynamic: spawning
def test_dynamic_spawn_rate_doubles_while_the_shortage_lasts() -> None:
    policy = dynamic(max_workers=64, min_spare=40, max_spare=40, max_spawn_rate=32)
    clock = Clock()
    spawned = []
    live = 1
    for _ in range(8):
        decision = policy.decide(busy_pool(live), clock.tick())
        spawned.append(decision.spawn)
        live += decision.spawn
    # 1, 2, 4, 8, 16, then capped at 32 per second... but never past max_workers (64).
    assert spawned == [1, 2, 4, 8, 16, 32, 0, 0]
    assert live == 64


def test_dynamic_spawn_is_capped_by_max_spawn_rate() -> None:
    policy = dynamic(max_workers=50, min_spare=20, max_spare=20, max_spawn_rate=3)
    clock = Clock()
    spawned = [policy.decide(busy_pool(1), clock.tick()).spawn for _ in range(5)]
    assert spawned == [1, 2, 3, 3, 3]


def test_dynamic_spawn_is_capped_by_the_shortage() -> None:
    policy = dynamic(min_spare=3, max_spare=5)
    clock = Clock()
    for _ in range(3):
        policy.decide(busy_pool(1), clock.tick())  # the rate grows to 8
    # One idle worker short of min_spare: start exactly one.
    view = pool(worker(0, busy=True), worker(1), worker(2))
    assert policy.decide(view, clock.tick()) == Decision(spawn=1)


def test_dynamic_spawn_is_capped_by_max_workers() -> None:
    policy = dynamic(max_workers=4, min_spare=4, max_spare=4)
    clock = Clock()
    policy.decide(busy_pool(1), clock.tick())
    policy.decide(busy_pool(1), clock.tick())
    # The rate is now 4; the pool has room for one more.
    assert policy.decide(busy_pool(3), clock.tick()) == Decision(spawn=1)


def test_dynamic_rate_resets_once_the_shortage_ends() -> None:
    policy = dynamic(max_workers=32, min_spare=2, max_spare=6)
    clock = Clock()
    assert policy.decide(busy_pool(1), clock.tick()).spawn == 1
    assert policy.decide(busy_pool(2), clock.tick()).spawn == 2
    # Enough idle workers: no spawn, and the doubling starts over.
    assert policy.decide(pool(worker(0), worker(1)), clock.tick()) == Decision()
    assert policy.decide(busy_pool(4), clock.tick()).spawn == 1


def test_dynamic_booting_workers_count_as_idle() -> None:
    """A slow boot must not trigger a stampede of spawns."""
    policy = dynamic(min_spare=2, max_spare=4)
    clock = Clock()
    booting = pool(worker(0, busy=True), worker(1, ready=False), worker(2, ready=False))
    for _ in range(5):
        assert policy.decide(booting, clock.tick()) == Decision()


def test_dynamic_booting_workers_are_never_retired() -> None:
    policy = dynamic(min_spare=0, max_spare=1)
    clock = Clock()
    view = pool(worker(0, ready=False), worker(1, ready=False), worker(2, ready=False))
    # Three idle > max_spare 1, but none of them is ready: nothing to retire yet.
    assert policy.decide(view, clock.tick()) == Decision()


def test_dynamic_warns_once_when_full() -> None:
    policy = dynamic(max_workers=3, min_spare=1, max_spare=2)
    clock = Clock()
    first = policy.decide(busy_pool(3), clock.tick())
    assert first.spawn == 0
    assert first.warning is not None
    assert first.warning.startswith(FULL + " (3)")
    for _ in range(5):
        assert policy.decide(busy_pool(3), clock.tick()) == Decision()
    # The load eases, then comes back: one new warning.
    assert policy.decide(pool(worker(0), worker(1, busy=True)), clock.tick()) == Decision()
    again = policy.decide(busy_pool(3), clock.tick())
    assert again.warning is not None
    assert again.warning.startswith(FULL)


def test_dynamic_full_pool_resets_the_spawn_rate() -> None:
    policy = dynamic(max_workers=4, min_spare=2, max_spare=3)
    clock = Clock()
    assert policy.decide(busy_pool(1), clock.tick()).spawn == 1
    assert policy.decide(busy_pool(2), clock.tick()).spawn == 2
    assert policy.decide(busy_pool(4), clock.tick()).warning is not None
    # Two busy workers went away: the rate starts at 1 again.
    assert policy.decide(busy_pool(2), clock.tick()).spawn == 1


# ------------------------------------------------------------------ dynamic: retiring
def test_dynamic_retires_one_idle_worker_per_second() -> None:
    policy = dynamic(min_spare=1, max_spare=2)
    clock = Clock()
    view = pool(
        worker(0, idle_for=5.0),
        worker(1, idle_for=9.0),
        worker(2, idle_for=1.0),
        worker(3, idle_for=7.0),
        worker(4, busy=True),
    )
    assert policy.decide(view, clock.tick()) == Decision(retire=(1,))  # the longest idle
    # Still 4 idle > 2, but the next retirement waits for the next second.
    assert policy.decide(view, clock.tick(0.5)) == Decision()
    assert policy.decide(view, clock.tick(0.49)) == Decision()
    rest = pool(*(w for w in view.workers if w.slot != 1))
    assert policy.decide(rest, clock.tick(0.01)) == Decision(retire=(3,))
    rest = pool(*(w for w in rest.workers if w.slot != 3))
    # Two idle workers (slots 0 and 2) are within max_spare: nothing more.
    assert policy.decide(rest, clock.tick()) == Decision()


def test_dynamic_equal_idle_retires_the_highest_slot() -> None:
    policy = dynamic(min_spare=0, max_spare=1)
    view = pool(worker(0, idle_for=3.0), worker(2, idle_for=3.0), worker(1, idle_for=3.0))
    assert policy.decide(view, Clock().tick()) == Decision(retire=(2,))


def test_dynamic_within_spare_range_does_nothing() -> None:
    policy = dynamic(min_spare=1, max_spare=3)
    clock = Clock()
    view = pool(worker(0, idle_for=100.0), worker(1, busy=True), worker(2, idle_for=50.0))
    for _ in range(3):
        assert policy.decide(view, clock.tick()) == Decision()


def test_dynamic_maintenance_runs_once_per_second() -> None:
    policy = dynamic(max_workers=32, min_spare=4, max_spare=8)
    clock = Clock()
    assert policy.decide(busy_pool(1), clock.now).spawn == 1
    for step in (0.0, 0.25, 0.5, 0.99):
        assert policy.decide(busy_pool(1), clock.now + step) == Decision()
    assert policy.decide(busy_pool(1), clock.now + 1.0).spawn == 2


# ------------------------------------------------------------------ ondemand
def test_ondemand_does_nothing_without_connections() -> None:
    policy = ondemand()
    clock = Clock()
    for _ in range(3):
        assert policy.decide(pool(), clock.tick()) == Decision()


def test_ondemand_spawns_when_connections_wait_and_no_worker_is_idle() -> None:
    policy = ondemand()
    clock = Clock()
    assert policy.decide(pool(pending=True), clock.now) == Decision(spawn=1)
    # The new worker boots (booting counts as idle): no second spawn for the same queue.
    assert policy.decide(pool(worker(0, ready=False), pending=True), clock.tick(0.1)) == Decision()
    # It is ready and idle: it will take the queue.
    assert policy.decide(pool(worker(0), pending=True), clock.tick(0.1)) == Decision()
    # It is busy and connections still wait: one more.
    view = pool(worker(0, busy=True), pending=True)
    assert policy.decide(view, clock.tick(0.1)) == Decision(spawn=1)


def test_ondemand_spawn_rate_is_limited_per_second() -> None:
    policy = ondemand(max_workers=10, max_spawn_rate=2)
    clock = Clock()
    view = pool(worker(0, busy=True), pending=True)
    assert policy.decide(view, clock.now).spawn == 1
    assert policy.decide(view, clock.now + 0.1).spawn == 1
    assert policy.decide(view, clock.now + 0.2) == Decision()
    assert policy.decide(view, clock.now + 0.99) == Decision()
    # One second after the first spawn, a slot in the window frees up.
    assert policy.decide(view, clock.now + 1.0).spawn == 1
    assert policy.decide(view, clock.now + 1.05) == Decision()
    assert policy.decide(view, clock.now + 1.1).spawn == 1


def test_ondemand_warns_once_at_max_workers() -> None:
    policy = ondemand(max_workers=2)
    clock = Clock()
    full = pool(worker(0, busy=True), worker(1, busy=True), pending=True)
    first = policy.decide(full, clock.tick())
    assert first.spawn == 0
    assert first.warning is not None
    assert first.warning.startswith(FULL + " (2)")
    for _ in range(3):
        assert policy.decide(full, clock.tick()) == Decision()
    # The queue empties, then fills again: warn again.
    policy.decide(pool(worker(0, busy=True), worker(1, busy=True)), clock.tick())
    again = policy.decide(full, clock.tick())
    assert again.warning is not None


def test_ondemand_idles_out_after_idle_timeout_longest_first() -> None:
    policy = ondemand(idle_timeout=10.0)
    clock = Clock()
    view = pool(worker(0, idle_for=9.9), worker(1, idle_for=3.0), worker(2, busy=True))
    assert policy.decide(view, clock.tick()) == Decision()
    view = pool(worker(0, idle_for=12.0), worker(1, idle_for=10.0), worker(2, busy=True))
    assert policy.decide(view, clock.tick()) == Decision(retire=(0,))
    # One per second.
    view = pool(worker(1, idle_for=10.5), worker(2, busy=True))
    assert policy.decide(view, clock.tick(0.5)) == Decision()
    assert policy.decide(view, clock.tick(0.5)) == Decision(retire=(1,))
    # A busy worker is never idled out, however long ago it started.
    assert policy.decide(pool(worker(2, busy=True, idle_for=99.0)), clock.tick()) == Decision()


def test_ondemand_retires_the_last_worker_too() -> None:
    policy = ondemand(idle_timeout=1.0)
    assert policy.decide(pool(worker(0, idle_for=1.0)), Clock().tick()) == Decision(retire=(0,))


def test_ondemand_does_not_idle_out_a_booting_worker() -> None:
    policy = ondemand(idle_timeout=1.0)
    view = pool(worker(0, ready=False, idle_for=30.0))
    assert policy.decide(view, Clock().tick()) == Decision()


def test_ondemand_spawning_has_priority_over_idling_out() -> None:
    policy = ondemand(idle_timeout=1.0, max_workers=4)
    clock = Clock()
    # Every worker busy and connections waiting: no retirement even of an expired view.
    view = pool(worker(0, busy=True, idle_for=5.0), pending=True)
    assert policy.decide(view, clock.tick()) == Decision(spawn=1)


def test_ondemand_stops_spawning_when_connections_stop_waiting() -> None:
    policy = ondemand(max_workers=4)
    clock = Clock()
    assert policy.decide(pool(worker(0, busy=True), pending=True), clock.tick()).spawn == 1
    view = pool(worker(0, busy=True), worker(1, busy=True))
    for _ in range(3):
        assert policy.decide(view, clock.tick(0.3)) == Decision()


# ------------------------------------------------------------------ config of the pool flags
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pm": "ondemand", "max_workers": 0}, r"invalid --max-workers 0"),
        ({"pm": "ondemand", "max_workers": 2, "max_spawn_rate": 0}, r"--max-spawn-rate 0"),
        ({"pm": "dynamic", "max_workers": 2, "max_spare": -1}, r"invalid --max-spare -1"),
        ({"pm": "dynamic", "max_workers": 2, "start_workers": -1}, r"--start-workers -1"),
        ({"pm": "dynamic", "max_workers": 2, "min_spare": 1.5}, r"invalid --min-spare 1.5"),
        ({"pm": "ondemand", "max_workers": 2, "idle_timeout": -1}, r"invalid --idle-timeout -1"),
        ({"workers": 4, "max_workers": 3}, r"--max-workers \(3\) must not be below"),
    ],
)
def test_pool_flag_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs)  # type: ignore[arg-type]


def test_policy_takes_the_effective_pool_figures() -> None:
    policy = PoolPolicy(Config(pm=ProcessManager.DYNAMIC, max_workers=10))
    assert (policy.min_spare, policy.max_spare, policy.max_workers) == (1, 3, 10)
    static = PoolPolicy(Config(workers=3))
    assert static.max_workers == 6  # a static pool may grow to twice -w by SIGTTIN


# ------------------------------------------------------------------ SIGTTIN / SIGTTOU
def test_static_sigttin_grows_the_target_up_to_max_workers() -> None:
    policy = PoolPolicy(Config(workers=2, max_workers=3))
    assert policy.more(live=2) == Resize(done=True, message="SIGTTIN: workers 2 -> 3")
    assert policy.target == 3
    refused = policy.more(live=3)
    assert not refused.done
    assert "already at --max-workers (3)" in refused.message
    assert policy.target == 3
    assert policy.extra == 0


def test_static_sigttou_shrinks_the_target_but_keeps_one() -> None:
    policy = PoolPolicy(Config(workers=2))
    assert policy.fewer() == Resize(done=True, message="SIGTTOU: workers 2 -> 1")
    assert policy.fewer() == Resize(done=False, message="SIGTTOU ignored: keeping the last worker")
    assert policy.target == 1


def test_dynamic_sigttin_owes_spawns_counting_those_not_started_yet() -> None:
    policy = dynamic(max_workers=3)
    assert policy.more(live=1).done
    assert policy.more(live=1).done
    assert policy.extra == 2
    refused = policy.more(live=1)  # 1 running + 2 owed = the limit
    assert refused == Resize(done=False, message="SIGTTIN ignored: at --max-workers (3)")


# ------------------------------------------------------------------ the view of the handles
def test_pool_view_of_handles_marks_busy_ready_and_the_anchor() -> None:
    a, b = socket.socketpair()
    try:
        handles = []
        for slot, state in (
            (0, WorkerState.READY),
            (1, WorkerState.READY),
            (2, WorkerState.STARTING),
        ):
            handles.append(handle_in(state, a, pid=50 + slot, slot=slot, last_busy=90.0))
        handles[1].saw(requests=3, in_flight=0, now=99.5)
        view = PoolView.of(handles, now=100.0, anchor=0, pending=True, target=3)
    finally:
        a.close()
        b.close()
    assert view == PoolView(
        workers=(
            WorkerView(slot=0, ready=True, busy=True, idle_for=10.0),  # the anchor goes last
            WorkerView(slot=1, ready=True, busy=True, idle_for=0.5),
            WorkerView(slot=2, ready=False, busy=False, idle_for=10.0),
        ),
        pending=True,
        target=3,
    )


# ------------------------------------------------------------------ reload and recycle queue
def test_reload_queues_each_slot_once() -> None:
    jobs = Replacements()
    assert jobs.reload([0, 1]) == 2
    assert jobs.reload([0, 1, 2]) == 1  # a second SIGHUP adds only the new slot
    assert jobs.reloading
    order = []
    while (job := jobs.next({0: 10, 1: 11, 2: 12})) is not None:
        order.append((job.slot, job.cause))
    assert order == [(0, SpawnCause.RELOAD), (1, SpawnCause.RELOAD), (2, SpawnCause.RELOAD)]
    assert jobs.reload_complete()
    assert not jobs.reload_complete()  # once


def test_jobs_for_slots_without_a_ready_worker_are_dropped() -> None:
    jobs = Replacements()
    jobs.reload([0, 1])
    assert jobs.next({1: 11}) == Replacement(slot=1, cause=SpawnCause.RELOAD)
    assert jobs.next({0: 10, 1: 11}) is None
    assert jobs.reload_complete()


def test_a_recycle_of_a_worker_replaced_meanwhile_is_skipped() -> None:
    jobs = Replacements()
    jobs.recycle(0, pid=10)
    jobs.recycle(1, pid=11)
    assert jobs.next({0: 99, 1: 11}) == Replacement(slot=1, cause=SpawnCause.RECYCLE, pid=11)
    assert not jobs.reload_complete()  # no reload was asked for


def test_a_reload_is_not_complete_while_a_slot_waits() -> None:
    jobs = Replacements()
    jobs.reload([0, 1])
    job = jobs.next({0: 10, 1: 11})
    assert job is not None
    jobs.retry(job)  # could not start now: it goes first next time
    assert not jobs.reload_complete()
    assert jobs.next({0: 10, 1: 11}) == job


def test_a_failed_reload_drops_its_slots_but_keeps_recycles() -> None:
    jobs = Replacements()
    jobs.reload([0, 1, 2])
    jobs.recycle(3, pid=13)
    assert jobs.next({0: 10}) is not None
    assert jobs.reload_failed()
    assert not jobs.reload_failed()  # reported once
    assert not jobs.reloading
    assert jobs.next({0: 10, 1: 11, 2: 12, 3: 13}) == Replacement(
        slot=3, cause=SpawnCause.RECYCLE, pid=13
    )


def test_recycles_of_several_slots_start_together_within_the_room() -> None:
    jobs = Replacements()
    for slot in (0, 1, 2):
        jobs.recycle(slot, pid=10 + slot)
    ready = {0: 10, 1: 11, 2: 12}
    assert [job.slot for job in jobs.take(ready, room=2)] == [0, 1]
    # Slots 0 and 1 now boot their replacements; slot 2 had no room.
    assert [job.slot for job in jobs.take(ready, replacing={0, 1}, room=1)] == [2]
    assert jobs.take(ready, replacing={0, 1, 2}, room=3) == []


def test_a_reload_goes_one_slot_at_a_time_beside_recycles() -> None:
    jobs = Replacements()
    jobs.reload([0, 1, 2])
    jobs.recycle(3, pid=13)
    ready = {0: 10, 1: 11, 2: 12, 3: 13}
    started = jobs.take(ready, room=4)
    assert [(job.slot, job.cause) for job in started] == [
        (0, SpawnCause.RELOAD),
        (3, SpawnCause.RECYCLE),
    ]
    assert jobs.take(ready, replacing={0, 3}, reloading=True, room=4) == []
    assert [job.slot for job in jobs.take(ready, replacing={3}, room=4)] == [1]


def test_a_reload_waits_for_the_recycle_under_way_in_its_slot() -> None:
    """The recycle's new worker may have been forked before the reload: it is replaced too."""
    jobs = Replacements()
    jobs.recycle(0, pid=10)
    assert [job.slot for job in jobs.take({0: 10, 1: 11}, room=2)] == [0]
    jobs.reload([0, 1])  # SIGHUP while slot 0's replacement boots
    started = jobs.take({1: 11}, replacing={0}, room=2)  # slot 0: nothing ready meanwhile
    assert [(job.slot, job.cause) for job in started] == [(1, SpawnCause.RELOAD)]
    assert not jobs.reload_complete()
    # Slot 0's replacement (pid 20) is ready, slot 1's reload is done.
    started = jobs.take({0: 20, 1: 21}, room=2)
    assert [(job.slot, job.cause) for job in started] == [(0, SpawnCause.RELOAD)]
    assert jobs.reload_complete()


def test_jobs_that_could_not_start_go_back_first_in_order() -> None:
    jobs = Replacements()
    for slot in (0, 1, 2):
        jobs.recycle(slot, pid=10 + slot)
    ready = {0: 10, 1: 11, 2: 12}
    first, second = jobs.take(ready, room=2)
    jobs.retry(first, second)
    assert jobs.take(ready, room=3) == [
        first,
        second,
        Replacement(slot=2, cause=SpawnCause.RECYCLE, pid=12),
    ]


# ------------------------------------------------------------------ crash backoff
def test_quick_crashes_double_the_wait_up_to_the_cap() -> None:
    backoff = CrashBackoff(max_delay=1.0)
    delays = [backoff.crashed(0, lived=0.2, was_ready=True, now=10.0) for _ in range(6)]
    assert delays == [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (6, 1.0)]
    assert not backoff.may_spawn(0, 10.9)
    assert backoff.may_spawn(0, 11.0)
    assert backoff.may_spawn(1, 10.0)  # other slots are not held back


def test_a_worker_that_never_got_ready_counts_as_quick_however_long_it_took() -> None:
    backoff = CrashBackoff()
    assert backoff.crashed(0, lived=50.0, was_ready=False, now=0.0) == (1, 0.1)


def test_a_worker_that_served_a_while_starts_the_count_again() -> None:
    backoff = CrashBackoff()
    backoff.crashed(0, lived=0.1, was_ready=True, now=0.0)
    backoff.crashed(0, lived=0.1, was_ready=True, now=1.0)
    assert backoff.crashed(0, lived=5.0, was_ready=True, now=10.0) == (0, 0.0)
    assert backoff.crashed(0, lived=0.1, was_ready=True, now=20.0) == (1, 0.1)
