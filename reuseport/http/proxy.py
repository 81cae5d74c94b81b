"""Proxy trust: which peers may tell us the real client and scheme.

Rules: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are honoured only when
the TCP peer is trusted (``--forwarded-allow-ips``: addresses, networks in
CIDR notation, or ``*``); from anyone else they are ignored, as any client
can send them.  Trust is decided once per connection (the peer does not
change), the headers once per request.  Nothing here does I/O; a CIDR entry
that does not parse is logged and ignored.

After a PROXY header (``--proxy-protocol``, ``proxystage.py``) the peer is
the client the header names, and trust is decided for *that* address: an L4
balancer adds no X-Forwarded-* headers, so any it passes on came from the
client, and count only if the client itself is a trusted proxy (an HTTP
proxy in front of the balancer, listed in ``--forwarded-allow-ips``).  The
balancer's own trust only lets it send the header.  A v2 ``LOCAL`` or a v1
``UNKNOWN`` header keeps the real peer, and its trust.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

__all__ = ["TrustedProxies", "forwarded_client", "forwarded_scheme"]

logger = logging.getLogger("reuseport.http")


class TrustedProxies:
    """Which peers may set X-Forwarded-For / X-Forwarded-Proto."""

    __slots__ = ("all", "hosts", "networks")

    def __init__(self, entries: Iterable[str]) -> None:
        self.all = False
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == "*":
                self.all = True
            elif "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    logger.warning("ignoring forwarded_allow_ips entry %r: not a network", entry)
            else:
                self.hosts.add(entry)

    def __contains__(self, host: object) -> bool:
        if self.all or host in self.hosts:
            return True
        if not self.networks or not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def forwarded_client(
    header: bytes, trust: TrustedProxies, direct: tuple[str, int] | None
) -> tuple[str, int] | None:
    """The client a chain of trusted proxies vouches for.

    Walk X-Forwarded-For from the right (the hop nearest to us) and take the
    first address that is not itself a trusted proxy; if all are trusted, the
    leftmost one.  The port is unknown, hence 0.
    """
    hosts = [h.strip() for h in header.decode("latin-1").split(",") if h.strip()]
    if not hosts:
        return direct
    for host in reversed(hosts):
        if host not in trust:
            return (host, 0)
    return (hosts[0], 0)


def forwarded_scheme(header: bytes, default: str) -> str:
    """The scheme the nearest proxy saw (the last X-Forwarded-Proto value), if http(s)."""
    scheme = header.decode("latin-1").split(",")[-1].strip().lower()
    return scheme if scheme in ("http", "https") else default
