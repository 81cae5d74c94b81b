"""Pure steering decisions: which slots may receive new connections."""

from __future__ import annotations

from reuseport.steering import Rescue, SiblingSample, SlotLoad, Steering


def load(
    slot: int, *, ready: bool = True, draining: bool = False, queue: int = 0, stale: bool = False
) -> SlotLoad:
    return SlotLoad(slot=slot, ready=ready, draining=draining, queue=queue, stale=stale)


def test_draining_slot_is_always_excluded() -> None:
    for load_aware in (False, True):
        steering = Steering(load_aware=load_aware)
        assert steering.allowed([load(0), load(1, draining=True), load(2)]) == {0, 2}


def test_booting_slot_waits_while_others_serve() -> None:
    steering = Steering(load_aware=False)
    assert steering.allowed([load(0), load(1, ready=False)]) == {0}


def test_nobody_ready_allows_every_open_slot() -> None:
    steering = Steering(load_aware=False)
    loads = [load(0, ready=False), load(1, ready=False), load(2, draining=True)]
    assert steering.allowed(loads) == {0, 1}


def test_hash_mode_ignores_queues() -> None:
    steering = Steering(load_aware=False, queue_limit=4)
    assert steering.allowed([load(0, queue=100), load(1)]) == {0, 1}


def test_load_aware_holds_back_a_backlogged_slot_until_it_catches_up() -> None:
    steering = Steering(load_aware=True, queue_limit=4)
    assert steering.allowed([load(0, queue=5), load(1)]) == {1}
    # Still behind (within the limit, but longer than the shortest): stays out.
    assert steering.allowed([load(0, queue=2), load(1)]) == {1}
    assert steering.allowed([load(0, queue=0), load(1)]) == {0, 1}


def test_queues_are_judged_against_each_other() -> None:
    steering = Steering(load_aware=True, queue_limit=4)
    # A burst fills every queue alike: nobody is skipped.
    assert steering.allowed([load(0, queue=30), load(1, queue=28)]) == {0, 1}
    # One worker stops draining while the other catches up.
    assert steering.allowed([load(0, queue=40), load(1, queue=3)]) == {1}
    assert steering.allowed([load(0, queue=40), load(1, queue=0)]) == {1}


def test_load_aware_holds_back_a_stale_worker() -> None:
    steering = Steering(load_aware=True)
    assert steering.allowed([load(0, stale=True), load(1, queue=9)]) == {1}


def test_when_every_loop_is_stale_queues_decide() -> None:
    steering = Steering(load_aware=True, queue_limit=4)
    loads = [load(0, queue=40, stale=True), load(1, queue=6, stale=True)]
    assert steering.allowed(loads) == {1}


def test_shortest_queue_is_never_held_back() -> None:
    steering = Steering(load_aware=True, queue_limit=1)
    for queues in ([9, 9], [0, 50], [50, 0], [7, 3, 12]):
        allowed = steering.allowed([load(i, queue=q) for i, q in enumerate(queues)])
        assert queues.index(min(queues)) in allowed


def test_forgotten_slots_are_dropped_from_the_hold_list() -> None:
    steering = Steering(load_aware=True, queue_limit=1)
    steering.allowed([load(0, queue=9), load(1)])
    steering.allowed([load(1)])  # slot 0 left the group
    assert steering.allowed([load(0), load(1)]) == {0, 1}


# ------------------------------------------------------------------ who is behind
def test_a_long_queue_that_stops_going_down_is_behind() -> None:
    steering = Steering(load_aware=True, queue_limit=4, stall_after=0.1)
    assert not steering.behind(0, 10, None, now=1.0)  # long, but just seen
    assert not steering.behind(0, 9, None, now=1.5)  # going down: accepted from
    assert not steering.behind(0, 9, None, now=1.55)
    assert steering.behind(0, 9, None, now=1.65)  # standing still for > 0.1 s
    assert not steering.behind(0, 0, None, now=2.0)  # emptied


def test_a_short_queue_that_stands_still_is_not_behind() -> None:
    steering = Steering(load_aware=True, queue_limit=4)
    assert not steering.behind(0, 4, None, now=1.0)
    assert not steering.behind(0, 4, None, now=5.0)


def test_a_late_heartbeat_is_behind() -> None:
    steering = Steering(load_aware=True, stale_after=1.0)
    assert not steering.behind(0, 0, 0.9, now=1.0)
    assert steering.behind(0, 0, 1.1, now=2.0)


def test_decide_in_hash_mode_excludes_only_the_draining_slot() -> None:
    steering = Steering(load_aware=False)
    allowed = steering.decide(
        [0, 1, 2], serving=[], draining=1, queues={0: 50}, beat_ages={}, now=1.0
    )
    assert allowed == {0, 2}  # readiness and queues are not looked at
    assert steering.stalled == []


def test_decide_load_aware_holds_back_the_stalled_slot_and_reports_it() -> None:
    steering = Steering(load_aware=True)
    ages = {0: 0.1, 1: 0.1, 2: 5.0}  # slot 2's loop has not beaten for 5 s

    def decide(queues: dict[int, int], now: float) -> set[int]:
        return steering.decide(
            [0, 1, 2], serving=[0, 1, 2], draining=None, queues=queues, beat_ages=ages, now=now
        )

    assert decide({}, now=1.0) == {0, 1}
    assert steering.stalled == [2]
    assert decide({1: 20}, now=1.01) == {0}  # slot 1 fell behind the shortest queue
    assert steering.stalled == [2]


# ------------------------------------------------------------------ sibling rescue


def sibling(slot: int, *, queue: int = 0, accepted: int = 0) -> SiblingSample:
    return SiblingSample(slot=slot, queue=queue, accepted=accepted)


def test_rescue_starts_once_a_queue_stands_still_for_stall_after() -> None:
    rescue = Rescue(stall_after=0.01)
    assert rescue.decide([sibling(1, queue=3, accepted=10)], now=0.0) == set()
    assert rescue.decide([sibling(1, queue=3, accepted=10)], now=0.005) == set()
    assert rescue.decide([sibling(1, queue=4, accepted=10)], now=0.011) == {1}


def test_a_busy_sibling_that_keeps_accepting_is_never_robbed() -> None:
    """A queue that never empties is no reason while the accept count moves."""
    rescue = Rescue(stall_after=0.01)
    for step in range(100):
        now = step * 0.005
        assert rescue.decide([sibling(1, queue=8, accepted=step)], now) == set()


def test_an_idle_sibling_with_an_empty_queue_is_left_alone() -> None:
    rescue = Rescue(stall_after=0.01)
    for step in range(10):
        assert rescue.decide([sibling(1, queue=0, accepted=5)], now=step * 1.0) == set()


def test_rescue_goes_on_while_we_keep_the_queue_empty_and_ends_when_it_accepts() -> None:
    rescue = Rescue(stall_after=0.01)
    rescue.decide([sibling(1, queue=2, accepted=7)], now=0.0)
    assert rescue.decide([sibling(1, queue=2, accepted=7)], now=0.02) == {1}
    # We took its queue: empty, but it has not accepted anything itself.
    assert rescue.decide([sibling(1, queue=0, accepted=7)], now=0.03) == {1}
    assert rescue.decide([sibling(1, queue=0, accepted=7)], now=5.0) == {1}
    # It accepted one of its own: it is back.
    assert rescue.decide([sibling(1, queue=1, accepted=8)], now=5.01) == set()
    # And it needs a fresh stall of stall_after to be rescued again.
    assert rescue.decide([sibling(1, queue=1, accepted=8)], now=5.015) == set()
    assert rescue.decide([sibling(1, queue=1, accepted=8)], now=5.021) == {1}


def test_each_sibling_is_judged_on_its_own_and_a_gone_one_is_dropped() -> None:
    rescue = Rescue(stall_after=0.01)
    rescue.decide([sibling(1, queue=1, accepted=0), sibling(2, queue=1, accepted=0)], now=0.0)
    both = [sibling(1, queue=1, accepted=0), sibling(2, queue=1, accepted=1)]
    assert rescue.decide(both, now=0.02) == {1}
    assert rescue.decide([sibling(2, queue=1, accepted=1)], now=0.03) == set()
    assert rescue.rescuing == set()
