"""The CPU limit a container or a systemd unit puts on this process (cgroup v2 and v1).

Rules: a start-up input, read by the CLI (``config.py`` does no I/O), never
by a worker; a file that is missing or unreadable means "no limit seen",
never an error (the limit only lowers a default).  ``default_workers`` is
pure: it turns the usable CPUs and the limit into the default ``--workers``
and the sentence the master logs.

Why: ``--workers`` defaults to the CPUs this process may run on, but a
container limited to 2 CPUs on a 64-core host still sees 64 of them.  Run
64 workers there and the CFS quota throttles them all: every worker stalls
for the rest of each period once the group used its share, and latency
jumps.  The quota is ``cpu.max`` (v2: ``QUOTA PERIOD`` or ``max PERIOD``)
or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1, -1 for none), on this
process's cgroup and on every parent up to the mount point; the smallest
counts.  The default is the limit rounded down (at least 1): a worker too
many under a quota is throttled, a fraction of a CPU left idle is not.
"""

from __future__ import annotations

import math
import os

__all__ = ["cpu_limit", "default_workers"]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _dirs(mount: str, path: str) -> list[str]:
    """``mount/path`` and its parents up to ``mount`` (the mount alone if the path is absent)."""
    here = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    if not os.path.isdir(here):
        return [mount]  # a cgroup namespace shows another root: the mount is ours
    found = []
    while True:
        found.append(here)
        if os.path.normpath(here) == os.path.normpath(mount):
            return found
        parent = os.path.dirname(here)
        if parent == here or not parent.startswith(os.path.normpath(mount)):
            return found
        here = parent


def _v2_limit(directory: str) -> float | None:
    text = _read(os.path.join(directory, "cpu.max"))
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: str) -> float | None:
    quota_text = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period_text = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc") -> float | None:
    """The smallest CPU quota over this process's cgroups, in CPUs; None when there is none."""
    text = _read(os.path.join(proc, "self", "cgroup"))
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if controllers == "":  # cgroup v2 (unified)
            mount = root if os.path.exists(os.path.join(root, "cgroup.controllers")) else None
            if mount is None and os.path.isdir(os.path.join(root, "unified")):
                mount = os.path.join(root, "unified")  # a hybrid v1/v2 layout
            if mount is None:
                continue
            limits.extend(limit for d in _dirs(mount, path) if (limit := _v2_limit(d)) is not None)
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct"):
                mount = os.path.join(root, name)
                if os.path.isdir(mount):
                    limits.extend(
                        limit for d in _dirs(mount, path) if (limit := _v1_limit(d)) is not None
                    )
                    break
    return min(limits) if limits else None


def default_workers(usable: int, limit: float | None) -> tuple[int, str]:
    """The default ``--workers`` and why, for the log: the smaller of the CPUs and the limit."""
    plural = "CPU" if usable == 1 else "CPUs"
    if limit is None or limit >= usable:
        count = usable
        why = f"{usable} usable {plural}"
        if limit is not None:
            why += f" (cgroup CPU limit {limit:g})"
        return count, why
    count = max(1, math.floor(limit))
    return count, f"cgroup CPU limit {limit:g} of {usable} {plural}"
