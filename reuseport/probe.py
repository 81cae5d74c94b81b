"""Kernel feature probe: what this kernel really does, and which mode to run.

Rules: every answer comes from a syscall or a /proc read made now, never from a
table of kernel versions; a check that cannot run says why (``supported=None``)
instead of guessing.  Nothing here starts a thread or an event loop, because
the master calls ``quick_recommendation()`` before it forks.  Every socket is
closed on every path, and every wait is bounded by a deadline.

Why balancing is *measured* rather than assumed from "Linux >= 3.9": the
option exists on FreeBSD and macOS too, where it does not spread connections
(macOS hands everything to one socket; FreeBSD needs ``SO_REUSEPORT_LB``), and
a container or seccomp profile can make a Linux kernel refuse parts of it.  So
the probe opens N listeners on one loopback port, makes a few hundred
connections and counts where the kernel put them.  The clients connect with
blocking ``connect()`` before anything is accepted: the listen backlog is at
least the number of connections, so every handshake completes into some
listener's accept queue, and draining each queue until ``EAGAIN`` gives the
per-listener counts.  Jain's index (sum x)^2 / (n * sum x^2) summarises them:
1.0 is perfectly even, 1/n is "one listener got everything".

The BPF checks mirror what ``sockets.py`` / ``bpf.py`` need to drain a retiring
worker without resets (docs/architecture.md, kernel facts): a classic-BPF program attached
with ``SO_ATTACH_REUSEPORT_CBPF`` must really steer (we check that ``ret #0``
sends every connection to the first listener), and detaching it must give the
kernel's hash back.  Loading an eBPF ``SK_REUSEPORT`` program needs
CAP_BPF/CAP_SYS_ADMIN; without them the answer is "needs privilege", not "no".
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import re
import resource
import select
import selectors
import socket
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .bpf import (
    SK_PASS,
    AttachType,
    attach_cbpf,
    attach_ebpf,
    bpf_syscall_number,
    detach,
    exit_insn,
    load_sk_reuseport,
    mov64_imm,
    steering_program,
)
from .config import SECONDS, BindAddress, Mode, parse_tcp_bind, usable_cpus
from .errors import ConfigError, PlatformError, errno_name
from .procfs import descendants_of
from .sockets import ListenerInfo, describe_owner, find_listeners, open_socket

__all__ = [
    "FAIRNESS_THRESHOLD",
    "MIN_CONNECTIONS_PER_LISTENER",
    "NEEDS_PRIVILEGE",
    "Feature",
    "ProbeReport",
    "add_arguments",
    "jain_fairness",
    "quick_recommendation",
    "render_text",
    "run",
    "run_probe",
]

SO_INCOMING_CPU: int = getattr(socket, "SO_INCOMING_CPU", 49)  # asm-generic value

FAIRNESS_THRESHOLD = 0.8
# Below this many connections per listener, chance alone may leave one empty.
MIN_CONNECTIONS_PER_LISTENER = 16
NEEDS_PRIVILEGE = "needs privilege (CAP_BPF/CAP_SYS_ADMIN)"

_CONNECT_TIMEOUT = 2 * SECONDS  # one loopback connect; normally well under a millisecond
_BALANCE_DEADLINE = 5 * SECONDS  # the whole balancing test, connects and drain
_QUICK_DEADLINE = 1 * SECONDS  # quick_recommendation's balancing test
_STEER_DEADLINE = 1 * SECONDS  # each cBPF steering check
_FD_MARGIN = 32  # descriptors left for the rest of the process
_MAX_LISTENERS = 64

_QUICK_LISTENERS = 2
_QUICK_CONNECTIONS = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class Feature:
    """One probed capability.  ``supported`` is None when unknown or privileged."""

    name: str
    supported: bool | None
    detail: str

    @property
    def status(self) -> str:
        """``yes`` / ``no`` / ``needs privilege`` / ``unknown``, as printed."""
        if self.supported is None:
            return "needs privilege" if self.detail.startswith(NEEDS_PRIVILEGE) else "unknown"
        return "yes" if self.supported else "no"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "supported": self.supported, "detail": self.detail}


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeReport:
    """Everything ``reuseport probe`` found, and the mode it recommends."""

    kernel: str
    cpus: int
    features: tuple[Feature, ...]
    recommended_mode: Mode
    reasons: tuple[str, ...]
    balance_counts: tuple[int, ...]
    fairness: float | None

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        known = ", ".join(f.name for f in self.features)
        raise KeyError(f"the probe has no feature {name!r}; it has: {known}")

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict (the ``probe --json`` output)."""
        return {
            "kernel": self.kernel,
            "platform": sys.platform,
            "machine": platform.machine(),
            "cpus": self.cpus,
            "features": [f.to_dict() for f in self.features],
            "recommended_mode": self.recommended_mode.value,
            "reasons": list(self.reasons),
            "balance": {
                "listeners": len(self.balance_counts),
                "connections": sum(self.balance_counts),
                "counts": list(self.balance_counts),
                "fairness": self.fairness,
                "threshold": FAIRNESS_THRESHOLD,
            },
        }


# --------------------------------------------------------------------------- helpers


def _is_linux() -> bool:
    return sys.platform.startswith("linux")


def _kernel_short(release: str) -> str:
    match = re.match(r"\d+\.\d+", release)
    return match.group(0) if match else release


def _loopback(family: socket.AddressFamily) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


@contextlib.contextmanager
def _reuseport_group(
    count: int, backlog: int, family: socket.AddressFamily = socket.AF_INET
) -> Iterator[list[socket.socket]]:
    """``count`` listeners in one SO_REUSEPORT group on a fresh loopback port.

    Their order is the group's index order (listen order), which the cBPF
    steering check relies on.
    """
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(
            open_socket(
                family, socket.SOCK_STREAM, (_loopback(family), 0), reuseport=True, backlog=backlog
            )
        )
        port = first.getsockname()[1]
        group = [first]
        for _ in range(count - 1):
            group.append(
                stack.enter_context(
                    open_socket(
                        family,
                        socket.SOCK_STREAM,
                        (_loopback(family), port),
                        reuseport=True,
                        backlog=backlog,
                    )
                )
            )
        yield group


def _drain(listener: socket.socket) -> int:
    """Accept (and close) everything queued on a non-blocking listener."""
    accepted = 0
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        conn.close()
        accepted += 1


def _connect_and_count(
    group: Sequence[socket.socket], connections: int, *, deadline: float
) -> tuple[list[int], int, str | None]:
    """Make ``connections`` loopback connections to the group; count where each landed.

    Returns (per-listener counts, connections made, error or None).  All
    clients are connected before anything is accepted, so the kernel's choice
    is not influenced by which worker happens to be fastest.
    """
    sockaddr = group[0].getsockname()[:2]
    counts = [0] * len(group)
    made = 0
    error: str | None = None
    with contextlib.ExitStack() as clients:
        for _ in range(connections):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"deadline reached after {made} connections"
                break
            try:
                client = clients.enter_context(socket.socket(group[0].family, socket.SOCK_STREAM))
                client.settimeout(min(_CONNECT_TIMEOUT, remaining))
                client.connect(sockaddr)
            except OSError as exc:  # TimeoutError is an OSError too (errno None)
                reason = errno_name(exc) if exc.errno else "timed out"
                error = f"client {made + 1} could not connect ({reason})"
                break
            made += 1
        # On loopback the handshake normally completes inside connect(); the
        # selector covers the rare case where the final ACK is still in flight.
        with selectors.DefaultSelector() as selector:
            for index, listener in enumerate(group):
                selector.register(listener, selectors.EVENT_READ, index)
            while True:
                for index, listener in enumerate(group):
                    counts[index] += _drain(listener)
                remaining = deadline - time.monotonic()
                if sum(counts) >= made or remaining <= 0:
                    break
                selector.select(timeout=min(remaining, 0.05))
    if sum(counts) < made and error is None:
        error = f"only {sum(counts)} of {made} connections reached an accept queue"
    return counts, made, error


def jain_fairness(counts: Sequence[float]) -> float | None:
    """Jain's fairness index ``(Σx)² / (n·Σx²)``: 1.0 is even, 1/n is all-on-one.

    None when there is nothing to judge (no counts, or all zero).  The
    benchmark uses it too, for requests per worker.
    """
    squares = sum(c * c for c in counts)
    if not counts or squares == 0:
        return None
    return sum(counts) ** 2 / (len(counts) * squares)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _fd_budget() -> int:
    """How many more descriptors this process may open, minus a margin."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(0, soft - _open_fds() - _FD_MARGIN)


def _read_sysctl(name: str) -> str | None:
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


# --------------------------------------------------------------------------- checks


def _probe_reuseport_bind(
    name: str, family: socket.AddressFamily, kind: socket.SocketKind
) -> Feature:
    what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    host = _loopback(family)
    if not hasattr(socket, "SO_REUSEPORT"):
        return Feature(name=name, supported=False, detail=f"{sys.platform} has no SO_REUSEPORT")
    backlog = None if kind == socket.SOCK_DGRAM else 8
    try:
        first = open_socket(family, kind, (host, 0), reuseport=True, backlog=backlog)
    except OSError as exc:
        if family == socket.AF_INET6 and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            return Feature(
                name=name,
                supported=None,
                detail=f"not tested: IPv6 loopback unavailable ({errno_name(exc)})",
            )
        return Feature(
            name=name,
            supported=False,
            detail=f"SO_REUSEPORT {what} socket on {host} failed ({errno_name(exc)})",
        )
    with first:
        port = first.getsockname()[1]
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        try:
            second = open_socket(family, kind, (host, port), reuseport=True, backlog=backlog)
        except OSError as exc:
            return Feature(
                name=name,
                supported=False,
                detail=f"a second {what} socket could not bind {where} ({errno_name(exc)})",
            )
        second.close()
    verb = "bind and listen on" if backlog is not None else "bind"
    return Feature(name=name, supported=True, detail=f"two {what} sockets {verb} {where}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Balance:
    """Outcome of one balancing test."""

    listeners: int
    counts: tuple[int, ...] = ()
    fairness: float | None = None
    error: str | None = None  # the test ran into a failure: "does not balance"
    not_run: str | None = None  # the test could not judge: "unknown"
    cap_note: str | None = None

    @property
    def made(self) -> int:
        return sum(self.counts)

    @property
    def balances(self) -> bool:
        return (
            self.error is None
            and self.not_run is None
            and bool(self.counts)
            and all(self.counts)
            and self.fairness is not None
            and self.fairness >= FAIRNESS_THRESHOLD
        )

    def feature(self) -> Feature:
        name = "reuseport_balancing"
        if self.not_run is not None:
            return Feature(name=name, supported=None, detail=f"not run: {self.not_run}")
        if not self.counts:
            return Feature(name=name, supported=False, detail=f"failed: {self.error}")
        fairness = "n/a" if self.fairness is None else f"{self.fairness:.3f}"
        detail = (
            f"{self.listeners} listeners, {self.made} connections: "
            f"{list(self.counts)}, fairness {fairness} (needs >= {FAIRNESS_THRESHOLD})"
        )
        if self.error:
            detail += f"; {self.error}"
        elif not all(self.counts):
            detail += "; some listeners got nothing"
        if self.cap_note:
            detail += f"; {self.cap_note}"
        return Feature(name=name, supported=self.balances, detail=detail)


def _balance_test(listeners: int, connections: int, *, deadline: float) -> _Balance:
    if not hasattr(socket, "SO_REUSEPORT"):
        return _Balance(listeners=listeners, error=f"{sys.platform} has no SO_REUSEPORT")
    cap_note = None
    budget = _fd_budget() - listeners
    # Each connection costs two descriptors while all clients are open (client + accepted).
    if connections * 2 > budget:
        capped = max(0, budget // 2)
        cap_note = f"capped from {connections} to {capped} connections by RLIMIT_NOFILE"
        connections = capped
    somaxconn = _read_sysctl("net.core.somaxconn")
    if somaxconn is not None and somaxconn.isdigit() and connections > int(somaxconn):
        # listen() silently caps the backlog at somaxconn; beyond it SYNs are
        # dropped and connect() would wait for retransmits.
        cap_note = f"capped from {connections} to {somaxconn} connections by net.core.somaxconn"
        connections = int(somaxconn)
    if connections < MIN_CONNECTIONS_PER_LISTENER * listeners:
        # Too few connections and chance alone leaves a listener empty: no verdict.
        return _Balance(
            listeners=listeners,
            not_run=f"{cap_note or f'only {connections} connections'}, fewer than "
            f"{MIN_CONNECTIONS_PER_LISTENER} per listener; raise the limit and probe again",
        )
    try:
        with _reuseport_group(listeners, backlog=connections) as group:
            counts, _, error = _connect_and_count(group, connections, deadline=deadline)
    except OSError as exc:
        return _Balance(
            listeners=listeners,
            error=f"SO_REUSEPORT listeners could not be set up ({errno_name(exc)})",
            cap_note=cap_note,
        )
    return _Balance(
        listeners=listeners,
        counts=tuple(counts),
        fairness=jain_fairness(counts),
        error=error,
        cap_note=cap_note,
    )


def _probe_cbpf() -> tuple[Feature, Feature]:
    attach_name, detach_name = "cbpf_attach", "cbpf_detach"
    if not _is_linux() or not hasattr(socket, "SO_REUSEPORT"):
        no = f"{sys.platform} has no SO_ATTACH_REUSEPORT_CBPF"
        return (
            Feature(name=attach_name, supported=False, detail=no),
            Feature(name=detach_name, supported=False, detail=no),
        )
    connections = 8
    try:
        with _reuseport_group(2, backlog=4 * connections) as group:
            try:
                attach_cbpf(group[0], steering_program([0]))  # `ret #0`
            except OSError as exc:
                reason = f"setsockopt(SO_ATTACH_REUSEPORT_CBPF) failed ({errno_name(exc)})"
                return (
                    Feature(name=attach_name, supported=False, detail=reason),
                    Feature(name=detach_name, supported=None, detail="not tested: attach failed"),
                )
            deadline = time.monotonic() + _STEER_DEADLINE
            counts, made, error = _connect_and_count(group, connections, deadline=deadline)
            steered = error is None and counts == [made, 0]
            attach = Feature(
                name=attach_name,
                supported=steered,
                detail=(
                    f"`ret #0` attached; {counts[0]}/{made} connections went to listener 0"
                    + (f" ({error})" if error else "")
                ),
            )
            try:
                detach(group[0])
            except OSError as exc:
                detail = f"setsockopt(SO_DETACH_REUSEPORT_BPF) failed ({errno_name(exc)})"
                if exc.errno == errno.ENOPROTOOPT:
                    detail += ": kernel < 5.3; re-attach a program that hashes instead"
                return attach, Feature(name=detach_name, supported=False, detail=detail)
            connections = 16
            deadline = time.monotonic() + _STEER_DEADLINE
            counts, made, error = _connect_and_count(group, connections, deadline=deadline)
            spread = error is None and all(counts)
            detail = f"detached; {made} connections spread {counts} again"
            if error:
                detail = f"detached, but {error}"
            elif not spread:
                detail = f"detached, but {made} connections still went {counts}"
            return attach, Feature(name=detach_name, supported=spread, detail=detail)
    except OSError as exc:
        reason = f"not tested: SO_REUSEPORT listeners could not be set up ({errno_name(exc)})"
        return (
            Feature(name=attach_name, supported=None, detail=reason),
            Feature(name=detach_name, supported=None, detail=reason),
        )


def _load_pass_program(attach_type: AttachType) -> int:
    """Load ``r0 = SK_PASS; exit`` as an SK_REUSEPORT program; return its fd or raise OSError."""
    return load_sk_reuseport(
        [mov64_imm(0, SK_PASS), exit_insn()], attach_type, name=b"reuseport_probe"
    )


def _probe_ebpf() -> Feature:
    name = "ebpf_sk_reuseport"
    if not _is_linux():
        return Feature(name=name, supported=False, detail=f"{sys.platform} has no bpf(2)")
    if bpf_syscall_number() is None:
        machine = platform.machine()
        return Feature(name=name, supported=None, detail=f"bpf(2) number unknown on {machine}")
    migrate = True
    try:
        try:
            fd = _load_pass_program(AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Kernels before 5.14 know SK_REUSEPORT but not the migrate attach type.
            migrate = False
            fd = _load_pass_program(AttachType.SK_REUSEPORT_SELECT)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            return Feature(
                name=name,
                supported=None,
                detail=f"{NEEDS_PRIVILEGE}: BPF_PROG_LOAD returned {errno_name(exc)}; "
                "attaching a program loaded by a privileged helper needs nothing",
            )
        if exc.errno == errno.ENOSYS:
            return Feature(
                name=name, supported=False, detail="kernel built without bpf(2) (ENOSYS)"
            )
        if exc.errno == errno.EINVAL:
            return Feature(
                name=name,
                supported=False,
                detail="BPF_PROG_LOAD rejected BPF_PROG_TYPE_SK_REUSEPORT (EINVAL): kernel < 4.19",
            )
        return Feature(
            name=name, supported=False, detail=f"BPF_PROG_LOAD failed ({errno_name(exc)})"
        )
    try:
        kind = "SELECT_OR_MIGRATE" if migrate else "SELECT only (kernel < 5.14: no migration)"
        detail = f"loaded SK_REUSEPORT program, attach type {kind}"
        try:
            with open_socket(
                socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), reuseport=True, backlog=1
            ) as sock:
                attach_ebpf(sock, fd)
        except OSError as exc:
            return Feature(
                name=name,
                supported=False,
                detail=f"{detail}, but SO_ATTACH_REUSEPORT_EBPF failed ({errno_name(exc)})",
            )
        return Feature(
            name=name, supported=True, detail=f"{detail}; SO_ATTACH_REUSEPORT_EBPF works"
        )
    finally:
        os.close(fd)


def _probe_p2c() -> Feature:
    """The steering ``--steering auto`` prefers: load the real p2c program and watch it choose."""
    name = "p2c_steering"
    if not _is_linux() or bpf_syscall_number() is None:
        return Feature(name=name, supported=False, detail="needs Linux eBPF (bpf(2))")
    from .loadboard import KernelSteering, LoadBoard

    try:
        board = LoadBoard(2, ebpf=True)
    except OSError as exc:
        supported = None if exc.errno in (errno.EPERM, errno.EACCES) else False
        prefix = f"{NEEDS_PRIVILEGE}: " if supported is None else ""
        return Feature(
            name=name,
            supported=supported,
            detail=f"{prefix}an mmapable BPF array map could not be created ({errno_name(exc)}); "
            "--steering auto uses load (cBPF) instead",
        )
    try:
        try:
            kernel = KernelSteering(board, binds=1)
        except OSError as exc:
            return Feature(
                name=name,
                supported=None if exc.errno in (errno.EPERM, errno.EACCES) else False,
                detail=f"the p2c program did not load ({exc}); --steering auto uses load (cBPF)",
            )
        try:
            with _reuseport_group(2, backlog=16) as group:
                for slot, sock in enumerate(group):
                    kernel.add(slot, [sock])
                kernel.attach(0, group[0])
                board.set_active([1])  # only slot 1 may receive: the program must obey
                counts, made, error = _connect_and_count(
                    group, 8, deadline=time.monotonic() + _STEER_DEADLINE
                )
        finally:
            kernel.close()
    except OSError as exc:
        return Feature(name=name, supported=False, detail=f"p2c test failed ({errno_name(exc)})")
    finally:
        board.close()
    if error or counts[1] != made or not made:
        return Feature(
            name=name,
            supported=False,
            detail=f"the p2c program loaded but did not steer ({made} connections went {counts})",
        )
    return Feature(
        name=name,
        supported=True,
        detail=f"program loaded and attached; {made}/{made} connections went to the one "
        "active slot; --steering auto uses it",
    )


def _probe_tcp_migrate_req() -> Feature:
    name = "tcp_migrate_req"
    value = _read_sysctl("net.ipv4.tcp_migrate_req")
    if value is None:
        return Feature(
            name=name,
            supported=False,
            detail="net.ipv4.tcp_migrate_req absent (kernel < 5.14): closing a listener resets "
            "the connections queued in it; reuseport drains with a cBPF program instead",
        )
    if value == "1":
        return Feature(
            name=name,
            supported=True,
            detail="net.ipv4.tcp_migrate_req = 1: connections queued in a closing listener "
            "migrate to another listener of the group",
        )
    return Feature(
        name=name,
        supported=False,
        detail=f"net.ipv4.tcp_migrate_req = {value} (off): closing a listener resets the "
        "connections queued in it; reuseport drains with a cBPF program instead "
        "(root can set it to 1, per network namespace)",
    )


def _probe_int_sysctl(name: str, sysctl: str, meaning: str) -> Feature:
    value = _read_sysctl(sysctl)
    if value is None:
        return Feature(name=name, supported=None, detail=f"{sysctl} unreadable")
    return Feature(name=name, supported=True, detail=f"{sysctl} = {value}: {meaning}")


def _probe_incoming_cpu() -> Feature:
    name = "so_incoming_cpu"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            value = sock.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU)
            # Setting it on a listener is what makes the kernel prefer the
            # listener of the CPU that took the packet (worker pinning).
            sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, 0)
    except OSError as exc:
        return Feature(
            name=name,
            supported=False,
            detail=f"SO_INCOMING_CPU ({SO_INCOMING_CPU}) failed ({errno_name(exc)})",
        )
    return Feature(
        name=name,
        supported=True,
        detail=f"getsockopt/setsockopt SO_INCOMING_CPU ({SO_INCOMING_CPU}) work "
        f"(unconnected socket reports {value})",
    )


def _probe_epollexclusive() -> Feature:
    name = "epollexclusive"
    flag = getattr(select, "EPOLLEXCLUSIVE", None)
    if not hasattr(select, "epoll") or flag is None:
        return Feature(name=name, supported=False, detail=f"{sys.platform} has no epoll")
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
            select.epoll() as ep,
        ):
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            ep.register(sock.fileno(), select.EPOLLIN | flag)
    except OSError as exc:
        detail = f"epoll_ctl(EPOLLIN | EPOLLEXCLUSIVE) failed ({errno_name(exc)})"
        if exc.errno == errno.EINVAL:
            detail += ": kernel < 4.5"
        return Feature(name=name, supported=False, detail=detail)
    return Feature(
        name=name,
        supported=True,
        detail="epoll_ctl accepts EPOLLEXCLUSIVE (uvloop/libuv do not use it: shared mode herds)",
    )


def _probe_ipv6() -> Feature:
    name = "ipv6"
    if not socket.has_ipv6:
        return Feature(name=name, supported=False, detail="Python built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        return Feature(
            name=name, supported=False, detail=f"cannot bind [::1]:0 ({errno_name(exc)})"
        )
    return Feature(name=name, supported=True, detail="a TCP socket binds [::1]")


def _probe_rlimit() -> Feature:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def show(value: int) -> str:
        return "unlimited" if value == resource.RLIM_INFINITY else str(value)

    detail = f"soft {show(soft)}, hard {show(hard)}"
    if soft != resource.RLIM_INFINITY and soft < 4096:
        detail += (
            f": each worker can hold fewer than {soft} connections; raise it with "
            "`ulimit -n` or LimitNOFILE="
        )
    return Feature(name="rlimit_nofile", supported=True, detail=detail)


def _process_tree() -> set[int]:
    """Our pid and every descendant's (workers, if the probe runs in a master)."""
    me = os.getpid()
    return {me, *descendants_of(me)} if _is_linux() else {me}


def _is_ours(info: ListenerInfo, tree: set[int]) -> bool:
    return info.uid == os.getuid() and bool(info.pids) and set(info.pids) <= tree


def _probe_listeners(addr: BindAddress) -> Feature:
    name = f"listeners_on_{addr}"
    if addr.port == 0:
        return Feature(
            name=name, supported=True, detail="port 0: a free port is picked at start-up"
        )
    if not _is_linux():
        return Feature(name=name, supported=None, detail="listener lookup needs Linux's /proc")
    try:
        found = find_listeners(addr)
    except PlatformError as exc:
        return Feature(name=name, supported=None, detail=str(exc))
    if not found:
        return Feature(name=name, supported=True, detail=f"nothing listens on {addr}")
    tree = _process_tree()
    parts = []
    foreign = 0
    for info in found:
        ours = _is_ours(info, tree)
        foreign += not ours
        parts.append(
            f"{info.local} inode {info.inode} held by {describe_owner(info)}: "
            + ("ours" if ours else "foreign")
        )
    detail = "; ".join(parts)
    if foreign:
        detail += (
            f". `reuseport serve` refuses {addr} while a foreign listener holds it; stop that "
            "process or choose another port"
        )
    return Feature(name=name, supported=not foreign, detail=detail)


# --------------------------------------------------------------------------- recommendation


def _recommend(kernel: str, tcp4: Feature, balance: _Balance) -> tuple[Mode, list[str]]:
    """Mode and the reasons for it: reuseport only if binding works *and* it balances."""
    if not _is_linux():
        return Mode.SHARED, [
            f"{sys.platform} is not Linux: SO_REUSEPORT there does not balance connections "
            "across listeners (macOS gives one socket everything; FreeBSD needs SO_REUSEPORT_LB)"
        ]
    if not tcp4.supported:
        return Mode.SHARED, [f"SO_REUSEPORT TCP bind test failed: {tcp4.detail}"]
    if balance.not_run is not None:
        return Mode.SHARED, [
            f"SO_REUSEPORT balancing could not be measured ({balance.not_run}); "
            "pass --mode reuseport to use it anyway"
        ]
    if not balance.balances:
        return Mode.SHARED, [
            f"kernel {kernel} does not balance SO_REUSEPORT listeners: {balance.feature().detail}"
        ]
    assert balance.fairness is not None
    return Mode.REUSEPORT, [
        f"kernel {_kernel_short(kernel)} balances SO_REUSEPORT listeners (fairness "
        f"{balance.fairness:.2f} over {balance.made} connections, {balance.listeners} listeners)"
    ]


def run_probe(
    binds: Sequence[BindAddress] = (), *, listeners: int = 4, connections: int = 400
) -> ProbeReport:
    """Probe every feature: ~0.1 s on an idle machine, a few seconds at worst (deadlines).

    ``listeners``/``connections`` size the balancing test; out-of-range values
    raise ``ConfigError``.
    """
    if not 2 <= listeners <= _MAX_LISTENERS:
        raise ConfigError(
            f"invalid --listeners {listeners!r}: expected 2-{_MAX_LISTENERS} (the balancing test "
            "needs at least two listeners)"
        )
    minimum = MIN_CONNECTIONS_PER_LISTENER * listeners
    if connections < minimum:
        raise ConfigError(
            f"invalid --connections {connections!r}: expected at least {minimum} "
            f"({MIN_CONNECTIONS_PER_LISTENER} per listener), or chance alone may leave a "
            "listener empty"
        )
    kernel = os.uname().release
    tcp4 = _probe_reuseport_bind("so_reuseport_tcp4", socket.AF_INET, socket.SOCK_STREAM)
    balance = _balance_test(listeners, connections, deadline=time.monotonic() + _BALANCE_DEADLINE)
    cbpf_attach, cbpf_detach = _probe_cbpf()
    migrate = _probe_tcp_migrate_req()
    p2c = _probe_p2c()
    features = [
        tcp4,
        _probe_reuseport_bind("so_reuseport_tcp6", socket.AF_INET6, socket.SOCK_STREAM),
        _probe_reuseport_bind("so_reuseport_udp", socket.AF_INET, socket.SOCK_DGRAM),
        balance.feature(),
        cbpf_attach,
        cbpf_detach,
        _probe_ebpf(),
        p2c,
        migrate,
        _probe_int_sysctl(
            "somaxconn",
            "net.core.somaxconn",
            "listen backlogs above this are silently capped",
        ),
        _probe_int_sysctl(
            "tcp_max_syn_backlog",
            "net.ipv4.tcp_max_syn_backlog",
            "half-open handshakes each listener may hold",
        ),
        _probe_incoming_cpu(),
        _probe_epollexclusive(),
        _probe_ipv6(),
        _probe_rlimit(),
        *(_probe_listeners(addr) for addr in binds),
    ]
    mode, reasons = _recommend(kernel, tcp4, balance)
    if mode is Mode.REUSEPORT and not migrate.supported:
        reasons.append(
            "note: closing a listener resets its queued connections (tcp_migrate_req off); "
            + (
                "a retiring worker can be drained with a cBPF program first"
                if cbpf_attach.supported
                else "cBPF steering is unavailable too, so scale-down may reset a few connections"
            )
        )
    if mode is Mode.REUSEPORT:
        reasons.append(
            "note: new connections are steered "
            + (
                "by load in the kernel (p2c, eBPF)"
                if p2c.supported
                else "away from workers that fall behind (load, cBPF, sampled every 20 ms)"
            )
            + ", and a worker that stops accepting has its queue served by its siblings "
            "(sibling rescue): `--steering auto`, the default"
        )
    for feature in features:
        if feature.name.startswith("listeners_on_") and feature.supported is False:
            reasons.append(f"note: {feature.detail}")
    return ProbeReport(
        kernel=kernel,
        cpus=usable_cpus(),
        features=tuple(features),
        recommended_mode=mode,
        reasons=tuple(reasons),
        balance_counts=balance.counts,
        fairness=balance.fairness,
    )


def quick_recommendation() -> tuple[Mode, str]:
    """The mode for ``serve --mode auto``, in well under 100 ms on an idle machine.

    Binds two SO_REUSEPORT listeners and makes 64 connections.  Safe to call in
    the master before forking: plain sockets only, no threads, no event loop.
    """
    kernel = os.uname().release
    tcp4 = _probe_reuseport_bind("so_reuseport_tcp4", socket.AF_INET, socket.SOCK_STREAM)
    if _is_linux() and tcp4.supported:
        balance = _balance_test(
            _QUICK_LISTENERS,
            _QUICK_CONNECTIONS,
            deadline=time.monotonic() + _QUICK_DEADLINE,
        )
    else:
        balance = _Balance(listeners=_QUICK_LISTENERS, not_run="SO_REUSEPORT is unusable")
    mode, reasons = _recommend(kernel, tcp4, balance)
    return mode, "; ".join(reasons)


# --------------------------------------------------------------------------- output


def render_text(report: ProbeReport) -> str:
    """An aligned table: feature | status | detail, with a header and the recommendation."""
    name_width = max(len("feature"), *(len(f.name) for f in report.features))
    status_width = max(len("status"), *(len(f.status) for f in report.features))
    indent = name_width + status_width + 4
    detail_width = max(40, 110 - indent)
    lines = [
        f"reuseport probe: kernel {report.kernel} ({sys.platform}, {platform.machine()}), "
        f"{report.cpus} usable CPU{'s' if report.cpus != 1 else ''}",
        "",
        f"{'feature':<{name_width}}  {'status':<{status_width}}  detail",
        f"{'-' * name_width}  {'-' * status_width}  {'-' * 6}",
    ]
    for feature in report.features:
        wrapped = textwrap.wrap(feature.detail, width=detail_width) or [""]
        lines.append(
            f"{feature.name:<{name_width}}  {feature.status:<{status_width}}  {wrapped[0]}"
        )
        lines.extend(" " * indent + more for more in wrapped[1:])
    main = [r for r in report.reasons if not r.startswith("note: ")]
    notes = [r for r in report.reasons if r.startswith("note: ")]
    lines.append("")
    lines.append(f"Recommended mode: {report.recommended_mode.value} — {'; '.join(main)}")
    for note in notes:
        lines.extend(textwrap.wrap(note, width=110, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``probe`` subcommand's options."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also report who already listens on this address (repeatable)",
    )
    parser.add_argument(
        "--listeners",
        type=int,
        default=4,
        metavar="N",
        help="SO_REUSEPORT listeners in the balancing test (default 4)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=400,
        metavar="N",
        help="loopback connections in the balancing test (default 400)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the probe and print text or JSON to stdout.  Bad values raise ConfigError."""
    binds = [parse_tcp_bind(text) for text in args.bind]
    report = run_probe(binds, listeners=args.listeners, connections=args.connections)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
