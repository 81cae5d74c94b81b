"""``reuseport bench`` end to end: real ``reuseport serve`` masters, the built-in
load generator in real client processes, short runs.

Each test is bounded by the bench's own timeouts (every run stops after
--duration; server start and stop are bounded) and by pytest-timeout; the
autouse fixture in conftest.py fails a test that leaves a child process, and
each test also checks that every server and worker pid the report names is
gone.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import alive, wait_until

from reuseport.bench.cli import add_arguments, run
from reuseport.bench.results import LATENCY_LABELS
from reuseport.cli import main

if TYPE_CHECKING:
    from _pytest.capture import CaptureResult

pytestmark = pytest.mark.slow

SUMMARY_FIELDS = {
    "scenario",
    "mode",
    "effective_mode",
    "runs",
    "requests_per_s",
    "latency_ms",
    "errors",
    "error_total",
    "requests_per_worker",
    "busiest_share",
    "idlest_share",
    "fairness",
}
RUN_FIELDS = SUMMARY_FIELDS - {"runs"} | {
    "repeat",
    "workers_expected",
    "server_pid",
    "worker_pids",
    "server_exit_code",
    "server_argv",
    "server_events",
    "server_workers",
    "server_log",
    "churn_actions",
    "generator",
    "requests",
    "elapsed_s",
    "statuses",
    "modes_seen",
    "connections",
    "requests_per_pid",
    "histogram",
}
MACHINE_FIELDS = {"kernel", "cpus_usable", "recommended_mode", "recommendation_reason"}


class MissingEvents(Exception):
    """The server's status snapshot had no ``events`` counters (a master before issue 12)."""


def events_of(run_: dict[str, Any]) -> dict[str, int]:
    """A run's event counts, as the bench read them from the master's status."""
    events = run_["server_events"]
    if events is None:
        raise MissingEvents(f"{run_['scenario']} {run_['mode']}: server_events is null")
    assert isinstance(events, dict)
    return events


def bench(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="reuseport bench")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def bench_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[CaptureResult[str], dict[str, Any]]:
    """Run the bench with ``--json``; return what it printed and the JSON document."""
    out = tmp_path / "bench.json"
    code = bench(*argv, "--json", str(out))
    text = capsys.readouterr()
    assert code == 0, text.err
    doc: dict[str, Any] = json.loads(out.read_text())
    return text, doc


def assert_all_gone(doc: dict[str, Any]) -> None:
    pids = {r["server_pid"] for r in doc["runs"]} | {
        p for r in doc["runs"] for p in r["worker_pids"]
    }
    assert pids
    wait_until(
        lambda: not [p for p in pids if alive(p)],
        timeout=5,
        message=lambda: f"processes still alive: {[p for p in pids if alive(p)]}",
    )


def check_run(run_: dict[str, Any]) -> None:
    assert set(run_) >= RUN_FIELDS, RUN_FIELDS - set(run_)
    assert run_["generator"] == "builtin"
    assert run_["requests"] > 0
    assert run_["effective_mode"] == run_["mode"]
    assert run_["modes_seen"] == [run_["mode"].partition("+")[0]]  # workers report the base
    per_worker = run_["requests_per_worker"]
    assert sum(per_worker.values()) == run_["requests"]
    assert sum(w["requests"] for w in run_["requests_per_pid"]) == run_["requests"]
    assert 0 < run_["fairness"] <= 1
    assert 0 <= run_["idlest_share"] <= run_["busiest_share"] <= 1
    assert set(LATENCY_LABELS) <= set(run_["latency_ms"])
    lat = [run_["latency_ms"][k] for k in LATENCY_LABELS]
    assert lat == sorted(lat)
    assert lat[0] > 0
    assert run_["error_total"] == sum(run_["errors"].values())
    assert run_["histogram"]["count"] == run_["requests"]


@pytest.mark.e2e
def test_keepalive_and_connect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, doc = bench_json(
        tmp_path, capsys,
        "--duration", "1.5", "-w", "2", "--connections", "16", "--modes", "reuseport,shared",
        "--scenario", "keepalive", "--scenario", "connect",
        "--load-generator", "builtin",
    )  # fmt: skip
    lines = text.out.splitlines()
    assert lines[0].startswith("machine: Linux ")
    assert "probe recommends" in lines[0]
    assert any(line.startswith("scenario") and "fairness" in line for line in lines)
    assert any(
        line.startswith("keepalive: reuseport") and " shared req/s" in line for line in lines
    )
    assert "[4/4] connect shared run 1/1" in text.err

    assert {"machine", "config", "summaries", "runs", "verdicts", "generators"} <= set(doc)
    assert set(doc["machine"]) >= MACHINE_FIELDS
    assert doc["config"]["modes"] == ["reuseport", "shared"]
    assert [(r["scenario"], r["mode"]) for r in doc["runs"]] == [
        ("keepalive", "reuseport"),
        ("keepalive", "shared"),
        ("connect", "reuseport"),
        ("connect", "shared"),
    ]
    for run_ in doc["runs"]:
        check_run(run_)
        assert run_["errors"] == {}, run_["errors"]
        assert run_["server_exit_code"] == 0
        # A static pool of 2 without churn: read from the status before and after the load.
        assert run_["server_workers"] == {"before": 2, "after": 2}
    for summary in doc["summaries"]:
        assert set(summary) >= SUMMARY_FIELDS
        assert ("accepts_per_worker" in summary) == (summary["scenario"] == "connect")
    # Connection per request: every request was its own accepted connection.
    connect = [r for r in doc["runs"] if r["scenario"] == "connect"]
    assert all(r["connections"] >= r["requests"] for r in connect)
    assert_all_gone(doc)


@pytest.mark.e2e
def test_skewed_and_churn_lose_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, doc = bench_json(
        tmp_path, capsys,
        "--duration", "3", "-w", "2", "--connections", "16", "--modes", "reuseport,shared",
        "--scenario", "skewed", "--scenario", "churn",
        "--load-generator", "builtin",
    )  # fmt: skip
    assert "churn per run (mean" in text.out
    assert "lost with killed workers" not in text.out
    for run_ in doc["runs"]:
        check_run(run_)
        assert run_["server_exit_code"] == 0
    skewed = [r for r in doc["runs"] if r["scenario"] == "skewed"]
    for r in skewed:
        # Slot 0 burns 2 ms per request, so some requests took at least that.
        assert r["latency_ms"]["max"] >= 2.0
        assert r["churn_actions"] == []
        assert r["errors"] == {}, r["errors"]
    churn = [r for r in doc["runs"] if r["scenario"] == "churn"]
    assert [r["mode"] for r in churn] == ["reuseport", "shared"]
    for r in churn:
        actions = [a["action"] for a in r["churn_actions"]]
        # The graceful pool changes only: no worker is killed.
        assert actions[:3] == ["hup", "ttin", "ttou"], actions
        assert all(a["ok"] for a in r["churn_actions"]), r["churn_actions"]
        assert "--max-requests" in r["server_argv"]
        # Workers were replaced (reload, recycle): more pids than slots...
        assert len(r["worker_pids"]) > 3
        # ...and no client saw an error: reload, scale-up/down and recycling are zero-loss.
        assert r["errors"] == {}, (r["mode"], r["errors"], r["server_events"])
        assert r["error_total"] == 0
    for r in churn:
        events = events_of(r)
        # The reload and the scale-up/down really happened while the load ran.
        assert events.get("reloads", 0) >= 1, events
        assert events.get("spawns.scale", 0) >= 1, events
        assert events.get("exits.scale", 0) >= 1, events
        if r["mode"] == "reuseport":
            assert events.get("drains", 0) >= 1, events  # scale-down drains the slot's queue
        assert not events.get("exits.crash"), events
        assert not events.get("reloads_failed"), events
    recycled = [
        (r["mode"], w["pid"], w["requests"])
        for r in churn
        for w in r["requests_per_pid"]
        if w["requests"] > 3300  # --max-requests 3000 plus the largest jitter
    ]
    if recycled:  # a worker went past its limit, so the master must have recycled workers
        assert sum(events_of(r).get("recycles", 0) for r in churn) >= 1, recycled
    assert_all_gone(doc)


@pytest.mark.e2e
def test_churn_kill_reports_lost_requests_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, doc = bench_json(
        tmp_path, capsys,
        "--duration", "2", "-w", "2", "--connections", "16", "--modes", "reuseport,shared",
        "--scenario", "connect", "--churn-kill", "--load-generator", "builtin",
    )  # fmt: skip
    assert doc["config"]["scenarios"] == ["connect", "churn-kill"]
    assert "churn-kill: lost with killed workers (median per run): reuseport " in text.out
    assert any(
        line.startswith("churn-kill: reuseport") and "lost with killed workers" in line
        for line in text.out.splitlines()
    )
    for r in [r for r in doc["runs"] if r["scenario"] == "churn-kill"]:
        check_run(r)
        assert {a["action"] for a in r["churn_actions"]} == {"kill"}
        killed = [a["pid"] for a in r["churn_actions"] if a["ok"]]
        assert killed, r["churn_actions"]
        assert set(killed) <= set(r["worker_pids"])
        # The master saw each SIGKILL as a crash and replaced the worker.
        events = events_of(r)
        assert events.get("exits.crash", 0) >= len(killed), events
        assert events.get("spawns.respawn", 0) >= len(killed), events
        assert "--max-requests" not in r["server_argv"]
    assert_all_gone(doc)


@pytest.mark.e2e
def test_plot_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")  # the optional `bench` extra
    png = tmp_path / "modes.png"
    code = bench(
        "--duration", "0.5", "--connections", "8", "--scenario", "keepalive",
        "--load-generator", "builtin", "--plot", str(png),
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


def test_refusals_come_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk here, whatever the machine has
    assert main(["bench", "--load-generator", "wrk", "--duration", "0.5"]) == 2
    assert "apt-get install wrk" in capsys.readouterr().err
    assert bench("--plot", str(tmp_path / "chart.jpg")) == 2
    assert ".png or .svg" in capsys.readouterr().err
    assert bench("--modes", "reuseport,bogus") == 2
    assert "invalid mode 'bogus'" in capsys.readouterr().err
    assert bench("--connections", "0") == 2
    assert "--connections 0" in capsys.readouterr().err


@pytest.mark.e2e
def test_wrk_generator_counts_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk); the builtin path is tested above")
    _text, doc = bench_json(
        tmp_path, capsys,
        "--duration", "1", "--connections", "8", "--modes", "reuseport",
        "--scenario", "keepalive", "--load-generator", "wrk",
    )  # fmt: skip
    (run_,) = doc["runs"]
    assert run_["generator"] == "wrk"
    assert run_["requests"] > 0
    # The Lua script saw every response and the pid/slot in each body.
    assert sum(run_["requests_per_worker"].values()) == run_["requests"]
    assert set(LATENCY_LABELS) <= set(run_["latency_ms"])
    assert_all_gone(doc)


@pytest.mark.e2e
def test_steered_mode_runs_reuseport_with_load_steering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, doc = bench_json(
        tmp_path, capsys,
        "--duration", "1.5", "-w", "2", "--connections", "16",
        "--modes", "reuseport+load", "--scenario", "connect",
        "--load-generator", "builtin",
    )  # fmt: skip
    assert any(line.split()[:2] == ["connect", "reuseport+load"] for line in text.out.splitlines())
    (run_,) = doc["runs"]
    assert run_["mode"] == "reuseport+load"
    argv = run_["server_argv"]
    assert argv[argv.index("--mode") + 1] == "reuseport"
    assert argv[argv.index("--steering") + 1] == "load"
    assert run_["modes_seen"] == ["reuseport"]
    assert run_["errors"] == {}
    assert sum(run_["requests_per_worker"].values()) == run_["requests"] > 0
    assert_all_gone(doc)
