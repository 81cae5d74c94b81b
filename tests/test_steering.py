"""Pure steering decisions: which slots may receive new connections."""

from __future__ import annotations

from reuseport.steering import SlotLoad, Steering


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


def test_load_aware_holds_back_a_backlogged_slot_until_its_queue_is_empty() -> None:
    steering = Steering(load_aware=True, queue_limit=4)
    assert steering.allowed([load(0, queue=5), load(1)]) == {1}
    # Still backlogged (below the limit but not empty): stays out.
    assert steering.allowed([load(0, queue=2), load(1)]) == {1}
    assert steering.allowed([load(0, queue=0), load(1)]) == {0, 1}


def test_load_aware_holds_back_a_stale_worker() -> None:
    steering = Steering(load_aware=True)
    assert steering.allowed([load(0, stale=True), load(1)]) == {1}


def test_load_aware_never_leaves_no_slot() -> None:
    steering = Steering(load_aware=True, queue_limit=1)
    assert steering.allowed([load(0, queue=9), load(1, queue=9)]) == {0, 1}


def test_forgotten_slots_are_dropped_from_the_hold_list() -> None:
    steering = Steering(load_aware=True, queue_limit=1)
    steering.allowed([load(0, queue=9), load(1)])
    steering.allowed([load(1)])  # slot 0 left the group
    assert steering.allowed([load(0), load(1)]) == {0, 1}


def test_indices_follow_listen_order() -> None:
    assert Steering.indices([2, 0, 1], {0, 1}) == [1, 2]
