"""The kernel probe, against the real kernel: real sockets, real syscalls, no mocks
(one test points the /proc reader at an empty folder, to see the probe say "unknown")."""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from features import (
    requires_linux,
    requires_reuseport,
    requires_reuseport_balancing,
    supported,
)
from hypothesis import given
from hypothesis import strategies as st

from reuseport import procfs
from reuseport.config import Mode, parse_bind
from reuseport.errors import ConfigError
from reuseport.probe import (
    FAIRNESS_THRESHOLD,
    MIN_CONNECTIONS_PER_LISTENER,
    NEEDS_PRIVILEGE,
    Feature,
    ProbeReport,
    add_arguments,
    jain_fairness,
    quick_recommendation,
    render_text,
    run,
    run_probe,
)
from reuseport.sockets import find_listeners

FIXED_FEATURES = (
    "so_reuseport_tcp4",
    "so_reuseport_tcp6",
    "so_reuseport_udp",
    "reuseport_balancing",
    "cbpf_attach",
    "cbpf_detach",
    "ebpf_sk_reuseport",
    "p2c_steering",
    "tcp_migrate_req",
    "somaxconn",
    "tcp_max_syn_backlog",
    "so_incoming_cpu",
    "epollexclusive",
    "ipv6",
    "rlimit_nofile",
)


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def report() -> ProbeReport:
    return run_probe()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


@pytest.fixture
def low_fd_limit() -> Iterator[Callable[[int], None]]:
    """Lower this process's soft RLIMIT_NOFILE to leave ``n`` spare descriptors; restore after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(spare: int) -> None:
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + spare, hard))

    try:
        yield lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- report shape


def test_report_has_every_feature_once(report: ProbeReport) -> None:
    names = [f.name for f in report.features]
    assert names == list(FIXED_FEATURES)
    assert len(set(names)) == len(names)
    for feature in report.features:
        assert feature.supported in (True, False, None)
        assert feature.detail, f"{feature.name} has no detail"


def test_kernel_and_cpus_come_from_the_os(report: ProbeReport) -> None:
    assert report.kernel == os.uname().release
    if hasattr(os, "sched_getaffinity"):
        assert report.cpus == len(os.sched_getaffinity(0))
    assert report.cpus >= 1


def test_feature_lookup(report: ProbeReport) -> None:
    assert report.feature("ipv6").name == "ipv6"
    with pytest.raises(KeyError, match="no feature 'nonsense'"):
        report.feature("nonsense")


def test_to_dict_is_json_with_the_documented_keys(report: ProbeReport) -> None:
    data = json.loads(json.dumps(report.to_dict()))
    assert {"kernel", "cpus", "features", "recommended_mode", "reasons", "balance"} <= set(data)
    assert data["kernel"] == report.kernel
    assert data["recommended_mode"] in ("reuseport", "shared")
    assert data["recommended_mode"] == report.recommended_mode.value
    assert [f["name"] for f in data["features"]] == list(FIXED_FEATURES)
    for entry in data["features"]:
        assert set(entry) == {"name", "supported", "detail"}
    assert data["balance"]["counts"] == list(report.balance_counts)
    assert data["balance"]["fairness"] == report.fairness
    assert data["reasons"] == list(report.reasons)


# --------------------------------------------------------------------------- checks


@requires_reuseport
def test_balancing_counts_every_connection(report: ProbeReport) -> None:
    assert len(report.balance_counts) == 4
    # A low RLIMIT_NOFILE caps the test (and says so); otherwise all 400 are counted.
    capped = re.search(r"capped from 400 to (\d+)", report.feature("reuseport_balancing").detail)
    assert sum(report.balance_counts) == (int(capped.group(1)) if capped else 400)
    assert report.fairness is not None
    assert 0 < report.fairness <= 1
    assert report.fairness == jain_fairness(report.balance_counts)


@requires_reuseport
def test_balancing_size_is_configurable() -> None:
    small = run_probe(listeners=3, connections=3 * MIN_CONNECTIONS_PER_LISTENER)
    assert len(small.balance_counts) == 3
    assert sum(small.balance_counts) == 3 * MIN_CONNECTIONS_PER_LISTENER


@pytest.mark.parametrize(
    ("listeners", "connections", "message"),
    [
        (1, 400, "--listeners 1"),
        (65, 4000, "--listeners 65"),
        (4, 4 * MIN_CONNECTIONS_PER_LISTENER - 1, "--connections"),
    ],
)
def test_balancing_size_is_validated(listeners: int, connections: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_probe(listeners=listeners, connections=connections)


def test_recommendation_follows_bind_and_balance(report: ProbeReport) -> None:
    expected = (
        sys.platform.startswith("linux")
        and report.feature("so_reuseport_tcp4").supported is True
        and report.feature("reuseport_balancing").supported is True
    )
    assert report.recommended_mode is (Mode.REUSEPORT if expected else Mode.SHARED)
    assert report.reasons
    assert not report.reasons[0].startswith("note: ")


@requires_reuseport_balancing
def test_this_kernel_balances(report: ProbeReport) -> None:
    assert report.recommended_mode is Mode.REUSEPORT
    assert all(report.balance_counts)
    assert report.fairness is not None
    assert report.fairness >= FAIRNESS_THRESHOLD
    assert "balances SO_REUSEPORT listeners" in report.reasons[0]


def test_cbpf_checks_agree(report: ProbeReport) -> None:
    # Detaching is only meaningful after a program was attached.
    if report.feature("cbpf_detach").supported is True:
        assert report.feature("cbpf_attach").supported is True
    if report.feature("cbpf_attach").supported is True:
        assert "went to listener 0" in report.feature("cbpf_attach").detail


def test_sysctls_match_proc(report: ProbeReport) -> None:
    for name, path in [
        ("somaxconn", "/proc/sys/net/core/somaxconn"),
        ("tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    ]:
        try:
            with open(path, encoding="ascii") as fh:
                value = fh.read().strip()
        except OSError:
            assert report.feature(name).supported is None
        else:
            assert f"= {value}" in report.feature(name).detail
    migrate = report.feature("tcp_migrate_req")
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", encoding="ascii") as fh:
            assert migrate.supported is (fh.read().strip() == "1")
    except FileNotFoundError:
        assert migrate.supported is False
    assert "queued" in migrate.detail


def test_rlimit_matches_getrlimit(report: ProbeReport) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    detail = report.feature("rlimit_nofile").detail
    assert f"soft {soft}" in detail or soft == resource.RLIM_INFINITY
    assert f"hard {hard}" in detail or hard == resource.RLIM_INFINITY


def test_ipv6_matches_a_bind_of_our_own(report: ProbeReport) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        works = False
    else:
        works = True
    assert report.feature("ipv6").supported is works


def test_status_labels() -> None:
    def status(supported: bool | None, detail: str = "x") -> str:
        return Feature(name="f", supported=supported, detail=detail).status

    assert status(True) == "yes"
    assert status(False) == "no"
    assert status(None) == "unknown"
    assert status(None, f"{NEEDS_PRIVILEGE}: EPERM") == "needs privilege"


@requires_linux
@pytest.mark.e2e
def test_ebpf_without_privilege_says_so() -> None:
    script = textwrap.dedent(
        """
        import json
        from reuseport.probe import run_probe
        feature = run_probe(listeners=2, connections=32).feature("ebpf_sk_reuseport")
        print(json.dumps([feature.supported, feature.status, feature.detail]))
        """
    )
    cmd = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("dropping root's capabilities needs setpriv (util-linux)")
        # Root keeps its uid but loses every capability across exec.
        cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    supported_, status, detail = json.loads(done.stdout)
    if "ENOSYS" in detail:
        pytest.skip(f"platform limit: {detail}")
    assert supported_ is None
    assert status == "needs privilege"
    assert detail.startswith(NEEDS_PRIVILEGE)


# --------------------------------------------------------------------------- fd limits


@requires_reuseport
def test_low_fd_limit_caps_the_balancing_test(low_fd_limit: Callable[[int], None]) -> None:
    # Room for the probe's own sockets plus exactly 40 connections (two descriptors each).
    low_fd_limit(32 + 2 + 2 * 40 + 8)
    report = run_probe(listeners=2, connections=400)
    balancing = report.feature("reuseport_balancing")
    assert "capped from 400" in balancing.detail
    assert 2 * MIN_CONNECTIONS_PER_LISTENER <= sum(report.balance_counts) < 400


@requires_reuseport
def test_too_few_fds_leaves_balancing_unknown(low_fd_limit: Callable[[int], None]) -> None:
    low_fd_limit(32 + 8)
    balancing = run_probe(listeners=2, connections=400).feature("reuseport_balancing")
    assert balancing.supported is None
    assert "RLIMIT_NOFILE" in balancing.detail
    mode, reason = quick_recommendation()
    assert mode is Mode.SHARED
    assert "could not be measured" in reason


# --------------------------------------------------------------------------- listeners


@requires_linux
def test_listener_we_hold_is_reported_as_ours(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    addr = parse_bind(f"127.0.0.1:{port}")
    report = run_probe([addr], listeners=2, connections=32)
    feature = report.feature(f"listeners_on_127.0.0.1:{port}")
    assert feature.supported is True
    assert f"inode {os.fstat(listener.fileno()).st_ino}" in feature.detail
    assert f"pid {os.getpid()}" in feature.detail
    assert feature.detail.endswith(": ours")
    assert not any(r.startswith("note: ") and str(port) in r for r in report.reasons)


@requires_linux
def test_free_address_has_no_listeners() -> None:
    # A bound socket that does not listen keeps the port ours without a LISTEN row.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        report = run_probe([parse_bind(f"127.0.0.1:{port}")], listeners=2, connections=32)
    feature = report.feature(f"listeners_on_127.0.0.1:{port}")
    assert feature.supported is True
    assert feature.detail == f"nothing listens on 127.0.0.1:{port}"


@requires_linux
def test_unreadable_listener_table_is_unknown_not_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    report = run_probe([parse_bind("127.0.0.1:8000")], listeners=2, connections=32)
    feature = report.feature("listeners_on_127.0.0.1:8000")
    assert feature.supported is None
    assert f"reading {tmp_path}/net/tcp failed (ENOENT)" in feature.detail


def test_port_zero_needs_no_lookup() -> None:
    report = run_probe([parse_bind("127.0.0.1:0")], listeners=2, connections=32)
    assert report.feature("listeners_on_127.0.0.1:0").supported is True


_DAEMON = textwrap.dedent(
    """
    import os, socket, sys
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    if os.fork():
        os._exit(0)  # the grandchild is re-parented: no longer in the test's process tree
    print(sock.getsockname()[1], os.getpid(), flush=True)
    sys.stdin.read()  # exit when the test closes our stdin
    """
)


@requires_linux
@pytest.mark.e2e
def test_listener_of_another_process_is_foreign() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _DAEMON],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.wait(timeout=10) == 0
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=10), "the daemon did not report its port"
        port_text, pid_text = proc.stdout.readline().split()
        addr = parse_bind(f"127.0.0.1:{port_text}")
        report = run_probe([addr], listeners=2, connections=32)
        feature = report.feature(f"listeners_on_{addr}")
        assert feature.supported is False
        assert f"pid {pid_text}" in feature.detail
        assert ": foreign" in feature.detail
        assert any(r.startswith("note: ") and str(addr) in r for r in report.reasons)
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(timeout=10)
    # Closing its stdin ends the daemon; its listener must go with it.
    wait_until(lambda: not find_listeners(addr), timeout=10)


# --------------------------------------------------------------------------- quick path


def test_quick_recommendation_is_fast_and_threadless() -> None:
    threads = threading.active_count()
    started = time.monotonic()
    mode, reason = quick_recommendation()
    elapsed = time.monotonic() - started
    assert mode in (Mode.REUSEPORT, Mode.SHARED)
    assert reason
    assert "\n" not in reason
    assert threading.active_count() == threads
    # The contract is ~100 ms; the bound is loose because these machines are shared.
    assert elapsed < 1.0


@requires_reuseport_balancing
def test_quick_recommendation_picks_reuseport_here() -> None:
    mode, reason = quick_recommendation()
    assert mode is Mode.REUSEPORT
    assert "balances SO_REUSEPORT listeners" in reason
    assert "over 64 connections" in reason


# --------------------------------------------------------------------------- output


def test_render_text_lists_every_feature_and_the_mode(report: ProbeReport) -> None:
    text = render_text(report)
    lines = text.splitlines()
    assert report.kernel in lines[0]
    assert f"{report.cpus} usable CPU" in lines[0]
    for feature in report.features:
        row = next(line for line in lines if line.startswith(feature.name + " "))
        assert feature.status in row
    assert f"Recommended mode: {report.recommended_mode.value} — " in text


def test_cli_json(capsys: pytest.CaptureFixture[str], listener: socket.socket) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    port = listener.getsockname()[1]
    args = parser.parse_args(
        ["--json", "--bind", f"127.0.0.1:{port}", "--listeners", "2", "--connections", "32"]
    )
    assert run(args) == 0
    data = json.loads(capsys.readouterr().out)
    names = [f["name"] for f in data["features"]]
    assert names == [*FIXED_FEATURES, f"listeners_on_127.0.0.1:{port}"]
    if supported("so_reuseport_tcp4"):
        assert sum(data["balance"]["counts"]) == 32


def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--listeners", "2", "--connections", "32"])) == 0
    out = capsys.readouterr().out
    assert "Recommended mode: " in out
    assert "so_reuseport_tcp4" in out


def test_cli_bad_bind_is_a_config_error() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ConfigError, match="cannot parse bind 'nonsense'"):
        run(parser.parse_args(["--bind", "nonsense"]))


# --------------------------------------------------------------------------- fairness


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([100, 100, 100, 100], 1.0),
        ([400, 0, 0, 0], 0.25),
        ([1, 1, 0, 0], 0.5),
        ([3, 1], 16 / 20),
        ([5000, 5000], 1.0),
        ([7], 1.0),
        ([2.5, 2.5], 1.0),  # the benchmark passes per-worker rates, not only counts
    ],
)
def test_jain_fairness_known_values(counts: list[float], expected: float) -> None:
    assert jain_fairness(counts) == pytest.approx(expected)


def test_jain_fairness_is_undefined_without_counts() -> None:
    assert jain_fairness([]) is None
    assert jain_fairness([0, 0]) is None


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=64))
def test_jain_fairness_is_between_one_over_n_and_one(counts: list[int]) -> None:
    value = jain_fairness(counts)
    if not any(counts):
        assert value is None
        return
    assert value is not None
    assert 1 / len(counts) - 1e-9 <= value <= 1 + 1e-9


def test_p2c_steering_follows_ebpf() -> None:
    """Where SK_REUSEPORT programs load, the real p2c program loads and steers too."""
    report = run_probe(listeners=2, connections=32)
    ebpf, p2c = report.feature("ebpf_sk_reuseport"), report.feature("p2c_steering")
    if ebpf.supported is True:
        assert p2c.supported is True, p2c.detail
        assert "8/8 connections went to the one active slot" in p2c.detail
    else:
        assert p2c.supported is not True
