"""The cgroup CPU limit and the default worker count, on made-up ``/sys/fs/cgroup`` trees.

Rules: no process, no real cgroup: each case writes the files a kernel
would show (v2, v1, the hybrid layout, a cgroup namespace) under
``tmp_path`` and points ``cpu_limit`` at them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reuseport.cgroups import cpu_limit, default_workers


def _tree(tmp_path: Path, files: dict[str, str], cgroup: str) -> tuple[str, str]:
    root = tmp_path / "sys"
    proc = tmp_path / "proc"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    return str(root), str(proc)


def test_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "cpu.max": "max 100000",
            "system.slice/app.service/cpu.max": "250000 100000",
        },
        "0::/system.slice/app.service\n",
    )
    assert cpu_limit(root, proc) == 2.5


def test_v2_the_smallest_limit_up_the_tree_counts(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu",
            "kubepods/cpu.max": "150000 100000",
            "kubepods/pod1/cpu.max": "max 100000",
            "kubepods/pod1/ctr/cpu.max": "400000 100000",
        },
        "0::/kubepods/pod1/ctr\n",
    )
    assert cpu_limit(root, proc) == 1.5


def test_v2_in_a_cgroup_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    # Inside a container the process sees "/" (or a path that is not under the mount).
    root, proc = _tree(
        tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "200000 100000"}, "0::/\n"
    )
    assert cpu_limit(root, proc) == 2.0
    root, proc = _tree(
        tmp_path / "b",
        {"cgroup.controllers": "cpu", "cpu.max": "100000 100000"},
        "0::/../outside\n",
    )
    assert cpu_limit(root, proc) == 1.0


def test_v2_without_a_limit(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "max 100000"}, "0::/\n")
    assert cpu_limit(root, proc) is None


def test_v1_quota_and_period(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
    )
    assert cpu_limit(root, proc) == 0.5


def test_v1_no_quota_and_hybrid_unified_without_cpu_max(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        {
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "unified/cgroup.procs": "",
        },
        "2:cpuacct:/\n1:cpu:/\n0::/\n",
    )
    assert cpu_limit(root, proc) is None


@pytest.mark.parametrize("text", ["garbage", "0 100000", "100 0", "max"])
def test_nonsense_is_no_limit(tmp_path: Path, text: str) -> None:
    root, proc = _tree(tmp_path, {"cgroup.controllers": "", "cpu.max": text}, "0::/\n")
    assert cpu_limit(root, proc) is None


def test_no_proc_is_no_limit(tmp_path: Path) -> None:
    assert cpu_limit(str(tmp_path), str(tmp_path / "nothing")) is None


@pytest.mark.parametrize(
    ("usable", "limit", "count", "why"),
    [
        (8, None, 8, "8 usable CPUs"),
        (1, None, 1, "1 usable CPU"),
        (8, 2.0, 2, "cgroup CPU limit 2 of 8 CPUs"),
        (8, 1.5, 1, "cgroup CPU limit 1.5 of 8 CPUs"),
        (8, 0.25, 1, "cgroup CPU limit 0.25 of 8 CPUs"),
        (2, 4.0, 2, "2 usable CPUs (cgroup CPU limit 4)"),
    ],
)
def test_default_workers(usable: int, limit: float | None, count: int, why: str) -> None:
    assert default_workers(usable, limit) == (count, why)
