"""Pure tests of ``reuseport.config``: bind parsing, validation, pool rules.

No processes, no sockets: config.py does no I/O.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reuseport.config import (
    DEFAULT_BIND,
    BindAddress,
    Config,
    Interface,
    LoopKind,
    Mode,
    ProcessManager,
    parse_bind,
)
from reuseport.errors import ConfigError, ExitCode

V4, V6 = socket.AF_INET, socket.AF_INET6


# ------------------------------------------------------------------ parse_bind
@pytest.mark.parametrize(
    ("text", "host", "port", "family", "shown"),
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000, V4, "127.0.0.1:8000"),
        ("0.0.0.0:80", "0.0.0.0", 80, V4, "0.0.0.0:80"),
        ("[::1]:8000", "::1", 8000, V6, "[::1]:8000"),
        ("[::]:443", "::", 443, V6, "[::]:443"),
        ("[0:0:0:0:0:0:0:1]:9", "::1", 9, V6, "[::1]:9"),  # normalised
        (":8000", "0.0.0.0", 8000, V4, "0.0.0.0:8000"),
        ("localhost:8000", "127.0.0.1", 8000, V4, "127.0.0.1:8000"),
        ("127.0.0.1:0", "127.0.0.1", 0, V4, "127.0.0.1:0"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, V4, "127.0.0.1:65535"),
        ("  127.0.0.1:8000\n", "127.0.0.1", 8000, V4, "127.0.0.1:8000"),
    ],
)
def test_parse_bind_accepts(
    text: str, host: str, port: int, family: socket.AddressFamily, shown: str
) -> None:
    addr = parse_bind(text)
    assert (addr.host, addr.port, addr.family) == (host, port, family)
    assert str(addr) == shown
    assert addr.sockaddr == (host, port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8000", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("127.0.0.1:", "is not a number"),
        ("127.0.0.1:http", "is not a number"),
        ("127.0.0.1:8_000", "is not a number"),
        ("127.0.0.1:+80", "is not a number"),
        ("127.0.0.1: 80", "is not a number"),
        ("127.0.0.1:-1", "is not a number"),
        ("127.0.0.1:\u0668\u0660", "is not a number"),  # Arabic-Indic digits
        ("127.0.0.1:65536", "outside 0-65535"),
        ("127.0.0.1:99999", "outside 0-65535"),
        ("::1:8000", "put IPv6 addresses in brackets"),
        ("[::1]8000", "expected HOST:PORT"),
        ("[::1", "expected HOST:PORT"),
        ("[::1]", "expected HOST:PORT"),
        ("example.com:80", "is not an IP address"),
        ("256.0.0.1:80", "is not an IP address"),
        ("[::g]:80", "is not an IP address"),
    ],
)
def test_parse_bind_rejects_with_the_value_in_the_message(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        parse_bind(text)
    assert repr(text) in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


ports = st.integers(min_value=0, max_value=65535)


@given(ip=st.ip_addresses(v=4), port=ports)
def test_parse_bind_round_trips_ipv4(ip: ipaddress.IPv4Address, port: int) -> None:
    addr = parse_bind(f"{ip}:{port}")
    assert (addr.host, addr.port, addr.family) == (str(ip), port, V4)
    assert str(addr) == f"{ip}:{port}"
    assert parse_bind(str(addr)) == addr


@given(ip=st.ip_addresses(v=6), port=ports)
def test_parse_bind_round_trips_ipv6(ip: ipaddress.IPv6Address, port: int) -> None:
    addr = parse_bind(f"[{ip.exploded}]:{port}")
    assert (addr.host, addr.port, addr.family) == (str(ip), port, V6)
    assert str(addr) == f"[{ip}]:{port}"
    assert parse_bind(str(addr)) == addr


@given(text=st.text(max_size=30))
def test_parse_bind_either_parses_or_raises_config_error(text: str) -> None:
    error: str | None = None
    try:
        addr = parse_bind(text)
    except ConfigError as exc:
        error = str(exc)
    if error is not None:
        assert repr(text) in error
        return
    assert 0 <= addr.port <= 65535
    assert parse_bind(str(addr)) == addr
    port_text = str(addr).rpartition(":")[2]
    assert port_text.isascii()
    assert port_text.isdigit()


def test_with_port_keeps_host_and_family() -> None:
    addr = parse_bind("[::1]:0").with_port(4242)
    assert addr == BindAddress(host="::1", port=4242, family=V6)


# ------------------------------------------------------------------ Config
def test_defaults() -> None:
    config = Config()
    assert config.binds == (parse_bind(DEFAULT_BIND),)
    assert config.workers >= 1
    assert config.mode is Mode.AUTO
    assert config.interface is Interface.AUTO
    assert config.pm is ProcessManager.STATIC
    assert config.initial_workers == config.workers
    assert config.app_label == "demo"


def test_strings_are_normalised_to_enums_and_binds() -> None:
    config = Config(
        mode="SHARED",  # type: ignore[arg-type]
        interface="stream",  # type: ignore[arg-type]
        loop="asyncio",  # type: ignore[arg-type]
        binds=("127.0.0.1:0", "[::1]:0"),  # type: ignore[arg-type]
        forwarded_allow_ips="10.0.0.1, 10.0.0.2,",  # type: ignore[arg-type]
        log_level="DEBUG",
    )
    assert config.mode is Mode.SHARED
    assert config.interface is Interface.STREAM
    assert config.loop is LoopKind.ASYNCIO
    assert [b.family for b in config.binds] == [V4, V6]
    assert config.forwarded_allow_ips == ("10.0.0.1", "10.0.0.2")
    assert config.log_level == "debug"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, r"invalid --workers 0: expected a whole number >= 1"),
        ({"workers": True}, r"invalid --workers True"),
        ({"workers": 2.5}, r"invalid --workers 2.5"),
        ({"backlog": 0}, r"invalid --backlog 0"),
        ({"max_spawn_rate": 0}, r"invalid --max-spawn-rate 0"),
        ({"max_requests": -1}, r"invalid --max-requests -1"),
        ({"max_requests_jitter": -1}, r"invalid --max-requests-jitter -1"),
        ({"graceful_timeout": -1.0}, r"invalid --graceful-timeout -1.0: expected seconds >= 0"),
        ({"timeout": "5"}, r"invalid --timeout '5'"),
        ({"idle_timeout": False}, r"invalid --idle-timeout False"),
        ({"header_read_timeout": -0.5}, r"invalid --header-read-timeout"),
        ({"body_read_timeout": -1}, r"invalid --body-read-timeout -1: expected seconds >= 0"),
        ({"timeout_keep_alive": -1}, r"invalid --timeout-keep-alive"),
        ({"limit_concurrency": 0}, r"invalid --limit-concurrency 0"),
        ({"limit_request_line": 0}, r"invalid --limit-request-line 0"),
        ({"mode": "fast"}, r"invalid mode 'fast': choose one of auto, reuseport, shared"),
        ({"interface": "cgi"}, r"invalid interface 'cgi'"),
        ({"threads": 0}, r"invalid --threads 0"),
        ({"loop": "trio"}, r"invalid loop 'trio'"),
        ({"pm": "lazy"}, r"invalid pm 'lazy'"),
        ({"lifespan": "maybe"}, r"invalid lifespan 'maybe'"),
        ({"log_level": "loud"}, r"invalid --log-level 'loud'"),
        ({"app": "no_colon"}, r"cannot parse app 'no_colon': expected MODULE:ATTRIBUTE"),
        ({"app": "a:b:c"}, r"cannot parse app 'a:b:c'"),
        ({"binds": ()}, r"no --bind given"),
        ({"binds": ("127.0.0.1:80", "127.0.0.1:80")}, r"the same --bind address is given twice"),
        ({"binds": ("nonsense",)}, r"cannot parse bind 'nonsense'"),
    ],
)
def test_validation_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs)  # type: ignore[arg-type]


def test_two_port_zero_binds_are_not_duplicates() -> None:
    config = Config(binds=("127.0.0.1:0", "127.0.0.1:0"))  # type: ignore[arg-type]
    assert len(config.binds) == 2


def test_timeouts_may_be_zero_and_ints() -> None:
    config = Config(timeout=0, graceful_timeout=3)
    assert config.timeout == 0
    assert config.graceful_timeout == 3


def test_field_names_cover_every_field() -> None:
    names = Config.field_names()
    assert {"binds", "graceful_timeout", "workers"} <= set(names)
    assert len(names) == len(set(names))


# ------------------------------------------------------------------ pools
def test_static_pool() -> None:
    config = Config(workers=3)
    assert config.initial_workers == 3
    assert config.pool_limit >= 3


def test_static_pool_max_workers_below_workers() -> None:
    with pytest.raises(ConfigError, match=r"--max-workers \(2\) must not be below --workers \(3\)"):
        Config(workers=3, max_workers=2)


@pytest.mark.parametrize("pm", ["dynamic", "ondemand"])
def test_non_static_pool_needs_max_workers(pm: str) -> None:
    with pytest.raises(ConfigError, match=rf"--pm {pm} needs --max-workers"):
        Config(pm=pm)  # type: ignore[arg-type]


def test_dynamic_pool_defaults_follow_php_fpm() -> None:
    config = Config(pm=ProcessManager.DYNAMIC, max_workers=10)
    assert config.effective_min_spare == 1
    assert config.effective_max_spare == 3
    assert config.effective_start_workers == 2  # min + (max - min) // 2
    assert config.initial_workers == 2
    assert config.pool_limit == 10


def test_dynamic_pool_explicit_values() -> None:
    config = Config(
        pm=ProcessManager.DYNAMIC, max_workers=8, min_spare=2, max_spare=5, start_workers=4
    )
    assert (config.effective_min_spare, config.effective_max_spare) == (2, 5)
    assert config.initial_workers == 4
    assert config.pool_limit == 8


def test_ondemand_pool_starts_empty() -> None:
    config = Config(pm=ProcessManager.ONDEMAND, max_workers=4)
    assert config.initial_workers == 0
    assert config.pool_limit == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_spare": 4, "max_spare": 2}, r"--min-spare \(4\) must not exceed --max-spare \(2\)"),
        ({"max_spare": 9}, r"--max-spare \(9\) must not exceed --max-workers \(8\)"),
        ({"start_workers": 0, "min_spare": 1}, r"--start-workers \(0\) must be between"),
        ({"start_workers": 9, "max_spare": 3}, r"--start-workers \(9\) must be between"),
        ({"min_spare": -1}, r"invalid --min-spare -1"),
        ({"max_workers": 0}, r"invalid --max-workers 0"),
    ],
)
def test_dynamic_pool_validation(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"pm": ProcessManager.DYNAMIC, "max_workers": 8, **kwargs}
    with pytest.raises(ConfigError, match=message):
        Config(**values)  # type: ignore[arg-type]


def test_proxy_protocol_is_off_by_default_and_fits_asgi_wsgi_and_auto() -> None:
    assert Config().proxy_protocol is False
    for interface in ("auto", "asgi", "wsgi"):
        assert Config(proxy_protocol=True, interface=interface).proxy_protocol  # type: ignore[arg-type]
    # The header comes before the handshake: the server reads it, then starts TLS.
    assert Config(proxy_protocol=True, ssl_certfile="c.pem").tls


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interface": "stream"}, r"cannot apply to an --interface stream app"),
        ({"interface": "protocol"}, r"cannot apply to an --interface protocol app"),
        ({"interface": "socket"}, r"cannot apply to an --interface socket app"),
    ],
)
def test_proxy_protocol_refusals(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Config(proxy_protocol=True, **kwargs)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.USAGE
    Config(**kwargs)  # type: ignore[arg-type]  # fine without the flag
