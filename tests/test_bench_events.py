"""The bench's pool counts come from the master's status snapshot, never from its log.

Pure tests over fake snapshots in the schema the master sends (``events``,
issue 12); the end-to-end runs are in test_bench_e2e.py.
"""

from __future__ import annotations

from typing import Any

from reuseport.bench.events import PoolState, count_difference, flatten_events
from reuseport.bench.loadgen import LoadResult
from reuseport.bench.report import render
from reuseport.bench.results import Measurement, RunResult, summarize
from reuseport.bench.runner import BenchConfig, BenchResult
from reuseport.bench.scenarios import scenario_by_name
from reuseport.bench.stats import Histogram


def events(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "spawns": {"start": 2, "respawn": 0, "reload": 0, "recycle": 0, "scale": 0},
        "exits": {"crash": 0, "heartbeat": 0, "recycle": 0, "reload": 0, "scale": 0,
                  "stop": 0, "boot": 0},
        "reloads": 0,
        "reloads_failed": 0,
        "recycles": 0,
        "drains": 0,
    }  # fmt: skip
    for key, value in changes.items():
        if isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def snapshot(running: int, **changes: Any) -> dict[str, Any]:
    return {
        "master": {"pid": 100, "mode": "reuseport"},
        "pool": {"pm": "static", "target": running, "running": running},
        "workers": [{"slot": i, "pid": 200 + i, "state": "ready"} for i in range(running)],
        "events": events(**changes),
    }


def test_flatten_events_keeps_counts_only() -> None:
    flat = flatten_events(
        {
            "spawns": {"start": 2, "scale": True, "reload": -1},
            "exits": {"crash": 1},
            "reloads": 3,
            "drains": "many",
            "future": {"nested": {"deeper": 1}},
        }
    )
    assert flat == {"spawns.start": 2, "exits.crash": 1, "reloads": 3}


def test_count_difference_is_per_key_growth() -> None:
    assert count_difference({"a": 2, "b": 5}, {"a": 3, "b": 5, "c": 1}) == {"a": 1, "b": 0, "c": 1}


def test_events_between_two_snapshots() -> None:
    before = PoolState.from_snapshot(snapshot(2))
    after = PoolState.from_snapshot(
        snapshot(
            3,
            spawns={"reload": 2, "recycle": 4, "scale": 1},
            exits={"reload": 2, "recycle": 4, "crash": 1},
            reloads=1,
            recycles=4,
        )
    )
    assert (before.workers, after.workers) == (2, 3)
    delta = after.events_since(before)
    assert delta is not None
    assert delta["reloads"] == 1
    assert delta["recycles"] == 4
    assert delta["exits.crash"] == 1
    assert delta["spawns.scale"] == 1
    assert delta["spawns.start"] == 0  # the initial pool was there before the run


def test_a_snapshot_without_events_counts_nothing_rather_than_zero() -> None:
    old_master = snapshot(2)
    del old_master["events"]
    state = PoolState.from_snapshot(old_master)
    assert state.events is None
    assert state.workers == 2
    assert state.events_since(PoolState.from_snapshot(snapshot(2))) is None
    assert PoolState.from_snapshot(snapshot(2)).events_since(state) is None


def test_a_pool_with_a_worker_draining_or_starting_has_not_settled() -> None:
    snap = snapshot(3)
    assert PoolState.from_snapshot(snap).settled
    snap["workers"][2]["state"] = "draining"  # a TTOU's worker, not yet exited
    snap["workers"][0]["state"] = "starting"  # a recycle's replacement
    state = PoolState.from_snapshot(snap)
    assert not state.settled
    assert state.changing == 2
    snap["workers"][2]["state"] = "stopping"
    snap["workers"][0]["state"] = "ready"
    assert PoolState.from_snapshot(snap).changing == 1


def test_a_static_pool_short_of_its_target_has_not_settled() -> None:
    """A killed worker's slot waits out the crash backoff with no worker in it."""
    snap = snapshot(2)
    snap["pool"]["running"] = 1
    snap["workers"].pop()
    state = PoolState.from_snapshot(snap)
    assert (state.missing, state.changing) == (1, 0)
    assert not state.settled
    snap["pool"]["running"] = 3  # a TTOU's worker still counted: its state says it
    assert PoolState.from_snapshot(snap).missing == 0


def test_workers_fall_back_to_the_worker_list_and_to_unknown() -> None:
    assert PoolState.from_snapshot({"workers": [{}, {}, {}]}).workers == 3
    assert PoolState.from_snapshot({"pool": {"running": "x"}}).workers is None


def _churn_result(server_events: dict[str, int] | None) -> BenchResult:
    churn = scenario_by_name("churn")
    hist = Histogram()
    hist.record(1_000_000)
    load = LoadResult(
        requests=10, elapsed=1.0, histogram=hist, workers={(10, 0): 10}, errors={}, statuses={}
    )
    run = RunResult(
        scenario="churn",
        mode="reuseport",
        repeat=1,
        workers_expected=1,
        measurement=Measurement.from_load(load),
        server_pid=1,
        churn_actions=({"t": 0.5, "action": "hup", "ok": True},),
        server_events=server_events,
        server_workers=(1, 1),
    )
    config = BenchConfig(modes=("reuseport",), workers=1, scenarios=(churn,))
    return BenchResult(
        config=config, runs=(run,), summaries=(summarize([run], counts_accepts=False),)
    )


MACHINE = {
    "system": "Linux",
    "kernel": "6.1",
    "arch": "x86_64",
    "cpus_usable": 2,
    "cpu_model": "cpu",
    "python": "3.11",
    "uvloop": None,
    "recommended_mode": None,
    "recommendation_reason": "probe skipped",
}


def test_the_report_shows_what_the_master_counted() -> None:
    counted = {"reloads": 1, "recycles": 4, "drains": 0, "exits.crash": 0, "reloads_failed": 0}
    text = render(_churn_result(counted), MACHINE)
    assert (
        "  churn reuseport: sent hup 1.0; master counted 1.0 reloads, 4.0 recycles, "
        "0.0 drains, 0.0 crashes, 0.0 failed reloads, 0.0 rescues, 0.0 rescued"
    ) in text.splitlines()


def test_the_report_says_when_the_master_counts_no_events() -> None:
    text = render(_churn_result(None), MACHINE)
    assert (
        "  churn reuseport: sent hup 1.0; the master's status has no event counters"
        in text.splitlines()
    )


def _stall_result(rescued_per_run: dict[str, list[int | None]]) -> BenchResult:
    stall = scenario_by_name("stall")
    hist = Histogram()
    hist.record(1_000_000)
    load = LoadResult(
        requests=10, elapsed=1.0, histogram=hist, workers={(10, 0): 10}, errors={}, statuses={}
    )
    runs = []
    for mode, counts in rescued_per_run.items():
        for repeat, rescued in enumerate(counts, 1):
            events = (
                None if rescued is None else {"rescues": 1 if rescued else 0, "rescued": rescued}
            )
            runs.append(
                RunResult(
                    scenario="stall",
                    mode=mode,
                    repeat=repeat,
                    workers_expected=1,
                    measurement=Measurement.from_load(load),
                    server_pid=1,
                    server_events=events,
                    server_workers=(1, 1),
                )
            )
    config = BenchConfig(modes=tuple(rescued_per_run), workers=1, scenarios=(stall,))
    summaries = tuple(
        summarize([r for r in runs if r.mode == mode], counts_accepts=True)
        for mode in rescued_per_run
    )
    return BenchResult(config=config, runs=tuple(runs), summaries=summaries)


def test_the_report_counts_rescued_connections_per_mode() -> None:
    text = render(_stall_result({"reuseport": [30, 10, 20], "shared": [0, 0, None]}), MACHINE)
    lines = text.splitlines()
    heading = lines.index(
        "connections served by a sibling from a stalled worker's queue (median per run):"
    )
    assert lines[heading + 1] == "  stall: reuseport 20 (1 rescues), shared 0 (0 rescues)"


def test_no_rescue_line_when_nothing_was_rescued() -> None:
    text = render(_stall_result({"reuseport": [0, 0], "shared": [0, 0]}), MACHINE)
    assert "stalled worker's queue" not in text
