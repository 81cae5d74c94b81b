"""``--cpu-affinity``: each worker slot pinned to one CPU of the master's mask.

The choice itself (``config.cpu_for_slot``) is pure; the end-to-end tests read
each worker's mask from ``/proc/PID/status`` of real processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from support import Server, child_env, run_serve, wait_until

from reuseport.config import Config, cpu_for_slot
from reuseport.errors import ConfigError

CPUS = sorted(os.sched_getaffinity(0))


def test_slots_go_round_robin_over_the_sorted_cpus() -> None:
    assert [cpu_for_slot(slot, {6, 2, 4}) for slot in range(7)] == [2, 4, 6, 2, 4, 6, 2]
    assert cpu_for_slot(3, [0]) == 0
    with pytest.raises(ValueError, match="no CPU"):
        cpu_for_slot(0, [])


def test_off_by_default_and_refused_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().cpu_affinity is False
    assert Config(cpu_affinity=True).cpu_affinity
    monkeypatch.delattr(os, "sched_setaffinity")
    with pytest.raises(ConfigError, match="--cpu-affinity needs sched_setaffinity"):
        Config(cpu_affinity=True)


def _allowed(pid: int) -> set[int]:
    """The CPUs ``pid`` may run on, from ``Cpus_allowed_list`` (e.g. ``0-2,5``)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Cpus_allowed_list:"):
                cpus: set[int] = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    cpus.update(range(int(low), int(high or low) + 1))
                return cpus
    raise AssertionError(f"no Cpus_allowed_list for pid {pid}")


def _slot(pid: int) -> int:
    """The worker's slot, from its title (``reuseport: worker SLOT [...]``)."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        title = fh.read().split(b"\0")[0].decode()
    return int(title.split("worker ", 1)[1].split(" ", 1)[0])


def _pinned(server: Server, count: int, cpus: list[int]) -> dict[int, int]:
    """Wait for ``count`` workers, each alone on its slot's CPU; slot -> pid."""
    by_slot: dict[int, int] = {}

    def settled() -> bool:
        by_slot.clear()
        try:
            for pid in server.wait_workers(count):
                slot = _slot(pid)
                by_slot[slot] = pid
                if _allowed(pid) != {cpu_for_slot(slot, cpus)}:
                    return False
        except (FileNotFoundError, IndexError, ValueError):  # a worker still starting or gone
            return False
        return len(by_slot) == count

    wait_until(settled, 20, message=lambda: f"workers {by_slot}\n{server.stderr}")
    return by_slot


@pytest.mark.e2e
def test_each_worker_runs_on_its_slots_cpu_and_a_replacement_too() -> None:
    with Server("-w", "2", "--mode", "shared", "--cpu-affinity") as server:
        server.wait_ready()
        expected = ", ".join(f"{slot}->{cpu_for_slot(slot, CPUS)}" for slot in range(2))
        server.wait_for_line(
            rf"CPU affinity: each worker runs on one CPU \(slot->CPU: {expected}\)"
        )
        by_slot = _pinned(server, 2, CPUS)
        assert _allowed(server.pid) == set(CPUS)  # the master is left alone
        status, _ = server.request("/")
        assert status == 200
        os.kill(by_slot[1], signal.SIGKILL)
        server.wait_for_line(rf"\(pid {by_slot[1]}\) was killed by SIGKILL")
        replaced = _pinned(server, 2, CPUS)
        assert replaced[1] != by_slot[1]
    if len(CPUS) < 2:
        assert "some share a CPU" in server.stderr
    else:
        assert "some share a CPU" not in server.stderr


@pytest.mark.e2e
def test_without_the_flag_workers_keep_the_whole_mask() -> None:
    with Server("-w", "2", "--mode", "shared") as server:
        server.wait_ready()
        for pid in server.wait_workers(2):
            assert _allowed(pid) == set(CPUS)
    assert "CPU affinity" not in server.stderr


@pytest.mark.e2e
def test_the_masters_own_mask_is_the_set_to_pin_to_and_more_workers_share() -> None:
    # The master started on one CPU only (as under taskset or a cpuset):
    # every worker gets that CPU, and three workers on it are warned about.
    cpu = CPUS[-1]
    server = Server("-w", "3", "--mode", "shared", "--cpu-affinity")
    launcher = (
        f"import os, sys; os.sched_setaffinity(0, {{{cpu}}}); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    server.argv = [sys.executable, "-c", launcher, *server.argv[1:]]
    with server:
        server.wait_ready()
        _pinned(server, 3, [cpu])
        server.wait_for_line(
            r"WARNING --cpu-affinity: up to 3 workers on 1 CPUs, so some share a CPU"
        )


@pytest.mark.e2e
def test_the_flag_on_a_platform_without_it_is_exit_2(tmp_path: Path) -> None:
    # A Python without os.sched_setaffinity (macOS, the BSDs), made here by a
    # sitecustomize that deletes it before reuseport starts.
    (tmp_path / "sitecustomize.py").write_text("import os\ndel os.sched_setaffinity\n")
    path = os.pathsep.join([str(tmp_path), child_env()["PYTHONPATH"]])
    result = run_serve("--cpu-affinity", env={"PYTHONPATH": path})
    assert result.returncode == 2, result.stderr
    assert "--cpu-affinity needs sched_setaffinity" in result.stderr
    assert "Traceback" not in result.stderr
