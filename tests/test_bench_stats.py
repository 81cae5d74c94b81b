"""The benchmark's arithmetic, without processes: histogram, fairness, medians,
result merging and wrk output parsing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reuseport.bench import stats
from reuseport.bench.errors import BenchError
from reuseport.bench.loadgen import LoadResult, build_request, split_connections
from reuseport.bench.results import LATENCY_LABELS, Measurement, RunResult, summarize
from reuseport.bench.stats import Histogram, median, shares
from reuseport.bench.wrk import parse_wrk, parse_wrk_output, wrk_command

# Midpoint of a bucket that spans 1/128 of its lower bound, plus integer rounding.
PRECISION = 1 / 128


def exact_percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def assert_close(got: int, want: int) -> None:
    assert abs(got - want) <= max(1, want * PRECISION), (got, want)


def test_percentiles_of_a_uniform_distribution() -> None:
    hist = Histogram()
    for us in range(1, 100_001):  # 1 µs .. 100 ms, one sample each
        hist.record(us * 1000)
    for q in (50, 90, 99, 99.9):
        assert_close(hist.percentile(q), int(q / 100 * 100_000) * 1000)
    assert hist.percentile(100) == hist.max == 100_000_000
    assert hist.percentile(0) == hist.min == 1000
    assert hist.count == 100_000
    assert hist.mean == pytest.approx(50_000.5 * 1000)


def test_percentiles_of_a_lognormal_distribution() -> None:
    rng = random.Random(5)
    values = [int(rng.lognormvariate(math.log(2e6), 0.8)) for _ in range(50_000)]
    hist = Histogram()
    for v in values:
        hist.record(v)
    for q in stats.PERCENTILES:
        assert_close(hist.percentile(q), exact_percentile(values, q))


@given(st.lists(st.integers(min_value=0, max_value=stats.MAX_VALUE_NS), min_size=1, max_size=300))
def test_percentile_is_within_precision_of_the_exact_one(values: list[int]) -> None:
    hist = Histogram()
    for v in values:
        hist.record(v)
    for q in (0.0, 25.0, *stats.PERCENTILES, 100.0):
        assert_close(hist.percentile(q), exact_percentile(values, q))


@given(st.integers(min_value=0, max_value=stats.MAX_VALUE_NS))
def test_every_value_lies_in_its_bucket(value: int) -> None:
    low, high = stats._bounds(stats._index(value))
    assert low <= value < high
    assert high - low <= max(1, low * PRECISION)


def test_buckets_are_contiguous() -> None:
    for index in range(stats._MAX_INDEX):
        assert stats._bounds(index)[1] == stats._bounds(index + 1)[0]


def test_values_beyond_the_range_are_clamped_but_max_is_exact() -> None:
    hist = Histogram()
    hist.record(10 * stats.MAX_VALUE_NS)
    hist.record(-5)
    assert hist.max == 10 * stats.MAX_VALUE_NS
    assert hist.min == 0
    assert hist.percentile(100) == 10 * stats.MAX_VALUE_NS


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(1)
    parts = [[rng.randrange(1, 10**9) for _ in range(1000)] for _ in range(3)]
    merged, single = Histogram(), Histogram()
    for part in parts:
        h = Histogram()
        for v in part:
            h.record(v)
            single.record(v)
        merged.merge(h)
    merged.merge(Histogram())  # an empty one changes nothing
    assert merged.to_dict() == single.to_dict()
    for q in stats.PERCENTILES:
        assert merged.percentile(q) == single.percentile(q)


def test_histogram_survives_json() -> None:
    hist = Histogram()
    for v in (5, 500, 50_000, 5_000_000):
        hist.record(v)
    again = Histogram.from_dict(hist.to_dict())
    assert again.to_dict() == hist.to_dict()
    with pytest.raises(ValueError, match="another version"):
        Histogram.from_dict({**hist.to_dict(), "sub_bits": 3})


def test_empty_histogram() -> None:
    hist = Histogram()
    assert hist.percentile(99) == 0
    assert hist.mean == 0.0
    with pytest.raises(ValueError, match="outside 0-100"):
        hist.percentile(101)


def test_shares() -> None:
    s = shares([30, 10])
    assert s is not None
    assert (s.busiest, s.idlest) == (0.75, 0.25)
    assert s.fairness == pytest.approx(0.8)
    starved = shares([10, 0, 0])
    assert starved is not None
    assert (starved.busiest, starved.idlest) == (1.0, 0.0)
    assert shares([0, 0]) is None
    assert shares([]) is None


def test_median() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 2, 3]) == 2.5
    assert median([]) == 0.0


def test_split_connections() -> None:
    assert split_connections(64, 1) == [64]
    assert split_connections(10, 3) == [4, 3, 3]
    assert split_connections(2, 5) == [1, 1]  # never a process without a connection


def test_request_bytes() -> None:
    assert build_request("127.0.0.1", 80, "/work?slot=0&ms=2", keepalive=False) == (
        b"GET /work?slot=0&ms=2 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n"
        b"User-Agent: reuseport-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )


def _load(workers: dict[tuple[int, int], int], latencies: list[int], **errors: int) -> LoadResult:
    hist = Histogram()
    for v in latencies:
        hist.record(v)
    return LoadResult(
        requests=sum(workers.values()),
        elapsed=2.0,
        histogram=hist,
        workers=workers,
        errors=errors,
        modes_seen=("reuseport",),
        connections=4,
    )


def test_load_results_merge_and_survive_json() -> None:
    a = _load({(10, 0): 3, (11, 1): 1}, [1000, 2000, 3000, 4000], reset=1)
    b = _load({(10, 0): 2, (12, 1): 4}, [5000] * 6, reset=2, timeout=1)
    merged = LoadResult.merge([a, b])
    assert merged.requests == 10
    assert merged.workers == {(10, 0): 5, (11, 1): 1, (12, 1): 4}
    assert merged.errors == {"reset": 3, "timeout": 1}
    assert merged.histogram.count == 10
    assert merged.processes == 2
    assert LoadResult.from_dict(merged.to_dict()).to_dict() == merged.to_dict()


def _run(workers: dict[tuple[int, int], int], repeat: int, expected: int = 2) -> RunResult:
    return RunResult(
        scenario="connect",
        mode="shared",
        repeat=repeat,
        workers_expected=expected,
        measurement=Measurement.from_load(_load(workers, [1_000_000] * 3)),
        server_pid=1,
    )


def test_run_figures_pad_idle_slots_and_summary_takes_medians() -> None:
    starved = _run({(10, 0): 90}, 1, expected=3)
    assert starved.per_slot == {0: 90, 1: 0, 2: 0}
    assert starved.shares is not None
    assert starved.shares.fairness == pytest.approx(1 / 3)
    runs = [_run({(10, 0): 50, (11, 1): 50}, 1), _run({(10, 0): 80, (11, 1): 20}, 2)]
    runs.append(_run({(10, 0): 60, (11, 1): 40}, 3))
    summary = summarize(runs, counts_accepts=True)
    assert summary.rps == 50.0  # 100 requests / 2 s in every run
    assert summary.per_slot == {0: 60, 1: 40}
    assert summary.busiest == 0.6
    assert summary.fairness == pytest.approx(100**2 / (2 * (60**2 + 40**2)))
    assert set(summary.latency_ms) == {*LATENCY_LABELS, "mean"}
    doc = summary.to_dict()
    assert doc["accepts_per_worker"] == doc["requests_per_worker"] == {"0": 60, "1": 40}
    assert sum(runs[0].to_dict()["requests_per_worker"].values()) == runs[0].measurement.requests


WRK_WITH_LUA = """\
Running 2s test @ http://127.0.0.1:8000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    0.50ms  12.00ms   90.00%
    Req/Sec    50.00k     2.00k   55.00k    70.00%
  Latency Distribution
     50%    1.10ms
     75%    1.40ms
     90%    1.80ms
     99%    3.20ms
  100000 requests in 2.00s, 15.00MB read
Requests/sec:  50000.00
Transfer/sec:      7.50MB
REUSEPORT_BENCH latency p50 1100
REUSEPORT_BENCH latency p90 1800
REUSEPORT_BENCH latency p99 3200
REUSEPORT_BENCH latency p99.9 6000
REUSEPORT_BENCH latency max 12000
REUSEPORT_BENCH latency mean 1200
REUSEPORT_BENCH summary 100000 2000000 0 3 0 5 1
REUSEPORT_BENCH bad_body 0
REUSEPORT_BENCH worker 4242:0 49000
REUSEPORT_BENCH worker 4243:1 50995
"""


def test_parse_wrk_output_with_lua_lines() -> None:
    m = parse_wrk_output(WRK_WITH_LUA)
    assert m.generator == "wrk"
    assert m.requests == 99_995  # 5 non-2xx responses are errors, not requests
    assert m.rps == pytest.approx(99_995 / 2)
    assert m.latency_ms == {
        "p50": 1.1,
        "p90": 1.8,
        "p99": 3.2,
        "p99.9": 6.0,
        "max": 12.0,
        "mean": 1.2,
    }
    assert m.errors == {"read_error": 3, "bad_status": 5, "timeout": 1}
    assert m.workers == {(4242, 0): 49000, (4243, 1): 50995}


def test_parse_wrk_output_without_lua_lines() -> None:
    text = WRK_WITH_LUA.split("REUSEPORT_BENCH")[0] + (
        "  Socket errors: connect 0, read 7, write 0, timeout 2\n  Non-2xx or 3xx responses: 4\n"
    )
    m = parse_wrk_output(text)
    assert m.requests == 100_000 - 4
    assert m.elapsed == 2.0
    assert m.latency_ms["p99"] == 3.2
    assert m.latency_ms["max"] == 12.0
    assert m.errors == {"read_error": 7, "timeout": 2, "bad_status": 4}
    assert m.workers == {}
    assert "no per-worker counts" in m.note


def test_wrk_command() -> None:
    cmd = wrk_command(
        "/usr/bin/wrk",
        port=8000,
        path="/",
        keepalive=False,
        connections=64,
        duration=1.5,
        threads=1,
        script=Path("/tmp/x.lua"),
        timeout=5.0,
    )
    assert cmd == [
        "/usr/bin/wrk", "-t1", "-c64", "-d2s", "--timeout=5s", "--latency",
        "-s", "/tmp/x.lua", "-H", "Connection: close", "http://127.0.0.1:8000/",
    ]  # fmt: skip


def test_wrk_command_plain_keepalive() -> None:
    # What the soak and peer scripts run: no Lua, wrk's own timeout, more threads
    # than connections capped.
    cmd = wrk_command("wrk", port=8001, connections=2, duration=60, threads=4, path="/x")
    assert cmd == ["wrk", "-t2", "-c2", "-d60s", "--latency", "http://127.0.0.1:8001/x"]


def test_parse_wrk_keeps_wrks_own_figures() -> None:
    report = parse_wrk(WRK_WITH_LUA)
    assert report.requests == 100_000  # every response, as wrk counts them
    assert report.ok == 99_995
    assert report.rps == 50_000.0  # wrk's Requests/sec line
    assert report.non_2xx == 5
    assert report.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 1}
    assert report.note == ""


def test_parse_wrk_text_only_reads_requests_per_second() -> None:
    text = WRK_WITH_LUA.split("REUSEPORT_BENCH")[0]
    report = parse_wrk(text)
    assert report.rps == 50_000.0
    assert report.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert report.latency_ms["p50"] == 1.1


def test_parse_wrk_refuses_what_is_not_wrks_report() -> None:
    with pytest.raises(BenchError, match="cannot parse wrk's output"):
        parse_wrk("wrk: command not found\n")
