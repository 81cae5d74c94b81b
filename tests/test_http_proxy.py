"""Proxy trust and X-Forwarded-* without sockets."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reuseport.http.proxy import TrustedProxies, forwarded_client, forwarded_scheme


def test_hosts_networks_and_star() -> None:
    trust = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert "127.0.0.1" in trust
    assert "10.1.2.3" in trust
    assert "fd00::1" in trust
    assert "192.0.2.1" not in trust
    assert "not an ip" not in trust
    assert None not in trust
    assert "anything" in TrustedProxies(["*"])
    assert "127.0.0.1" not in TrustedProxies([])


def test_bad_network_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reuseport.http"):
        trust = TrustedProxies(["10.0.0.0/99", "192.0.2.1"])
    assert "10.0.0.0/99" in caplog.text
    assert trust.networks == []
    assert "192.0.2.1" in trust


def test_forwarded_client_is_the_nearest_untrusted_hop() -> None:
    trust = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    direct = ("127.0.0.1", 5000)
    assert forwarded_client(b"203.0.113.7, 10.0.0.2", trust, direct) == ("203.0.113.7", 0)
    assert forwarded_client(b"198.51.100.1, 203.0.113.7", trust, direct) == ("203.0.113.7", 0)
    assert forwarded_client(b"10.0.0.3, 10.0.0.2", trust, direct) == ("10.0.0.3", 0)
    assert forwarded_client(b" , ", trust, direct) == direct


def test_forwarded_scheme_takes_the_last_http_value() -> None:
    assert forwarded_scheme(b"https", "http") == "https"
    assert forwarded_scheme(b"http, HTTPS ", "http") == "https"
    assert forwarded_scheme(b"https, ftp", "http") == "http"
    assert forwarded_scheme(b"", "http") == "http"


@given(st.binary(max_size=80))
def test_any_header_gives_a_client_or_the_direct_peer(header: bytes) -> None:
    direct = ("127.0.0.1", 1)
    client = forwarded_client(header, TrustedProxies(["127.0.0.1"]), direct)
    assert client == direct or (client is not None and client[1] == 0 and client[0])
    assert forwarded_scheme(header, "http") in ("http", "https")
