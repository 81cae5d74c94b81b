"""Skip markers computed by the kernel probe.

Rule: a test skips only when the probe shows a real platform limit (no
SO_REUSEPORT, no IPv6 loopback, no cBPF steering, no privilege for eBPF...),
never to hide a failure, and a marker lives here only while some test uses
it.  The probe runs once per test session, on first import, with a small
balancing test so collection stays fast; the skip reason quotes what the
probe found.

    from features import requires_reuseport

    @requires_reuseport
    def test_something() -> None: ...
"""

from __future__ import annotations

import functools
import sys

import pytest

from reuseport.probe import ProbeReport, run_probe


@functools.cache
def probe_report() -> ProbeReport:
    """The session's probe report (2 listeners x 64 connections)."""
    return run_probe(listeners=2, connections=64)


def _requires(feature_name: str) -> pytest.MarkDecorator:
    feature = probe_report().feature(feature_name)
    return pytest.mark.skipif(
        feature.supported is not True,
        reason=f"platform limit: {feature_name} is {feature.status!r} ({feature.detail})",
    )


def supported(feature_name: str) -> bool:
    """Whether the probe found ``feature_name`` working (not unknown, not privileged)."""
    return probe_report().feature(feature_name).supported is True


requires_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason=f"platform limit: {sys.platform} is not Linux"
)
requires_reuseport = _requires("so_reuseport_tcp4")
requires_reuseport_ipv6 = _requires("so_reuseport_tcp6")
requires_reuseport_balancing = _requires("reuseport_balancing")
requires_ipv6 = _requires("ipv6")
requires_cbpf = _requires("cbpf_attach")
requires_cbpf_detach = _requires("cbpf_detach")
requires_ebpf = _requires("ebpf_sk_reuseport")
requires_p2c = _requires("p2c_steering")

__all__ = [
    "probe_report",
    "requires_cbpf",
    "requires_cbpf_detach",
    "requires_ebpf",
    "requires_ipv6",
    "requires_linux",
    "requires_p2c",
    "requires_reuseport",
    "requires_reuseport_balancing",
    "requires_reuseport_ipv6",
    "supported",
]
