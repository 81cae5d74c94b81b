"""``reuseport serve --proxy-protocol`` end to end: raw sockets send the PROXY header.

The apps (``tests/apps_proxied.py``) answer with the client they were told
about.  In-process checks of the same feature are ``test_proxy_protocol.py``.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from asgi_apps import parse_responses
from features import requires_reuseport
from support import Server, run_serve
from test_proxyproto import ipv6_block, v2

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
MODES = [pytest.param("reuseport", marks=requires_reuseport), "shared"]
TIMEOUT = 10.0

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V2 = v2(family=2, block=ipv6_block("2001:db8::7", "2001:db8::1", 40000, 8443))


def _get(path: str = "/", *, close: bool = False) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (
        path.encode(),
        b"Connection: close\r\n" if close else b"",
    )


def _exchange(address: tuple[str, int], *pieces: bytes) -> bytes:
    """Send each piece, then read until the server closes (a reset counts as the end)."""
    chunks: list[bytes] = []
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
    return b"".join(chunks)


def _bodies(raw: bytes) -> list[Any]:
    responses = parse_responses(raw)
    assert responses, "no response"
    assert all(r.status == 200 for r in responses), responses
    return [json.loads(r.body) for r in responses]


def _serve(app: str, *extra: str, env: dict[str, str] | None = None) -> Server:
    return Server(f"apps_proxied:{app}", "--app-dir", TESTS_DIR, *extra, env=env)


@pytest.mark.parametrize("mode", MODES)
def test_asgi_keep_alive_after_v1_and_v2_headers_with_the_access_log(mode: str) -> None:
    with _serve("asgi_app", "--proxy-protocol", "--mode", mode, "-w", "2", "--access-log") as srv:
        srv.wait_ready()
        assert (
            "INFO PROXY protocol: every connection must start with a PROXY header "
            "from 127.0.0.1, ::1 (--forwarded-allow-ips)" in srv.stderr
        )
        first, second = _bodies(_exchange(srv.address, V1 + _get(), _get(close=True)))
        for body in (first, second):
            assert body["client"] == ["192.0.2.1", 56324]
            assert body["server"] == ["198.51.100.2", 443]
        assert first["pid"] == second["pid"]  # one connection
        # The header in pieces, the request right behind its last byte.
        (body,) = _bodies(_exchange(srv.address, V2[:5], V2[5:20], V2[20:] + _get(close=True)))
        assert body["client"] == ["2001:db8::7", 40000]
        assert body["server"] == ["2001:db8::1", 8443]
        srv.wait_for_line(r'192\.0\.2\.1:56324 - "GET / HTTP/1\.1" 200', timeout=TIMEOUT)
        srv.wait_for_line(r'2001:db8::7:40000 - "GET / HTTP/1\.1" 200', timeout=TIMEOUT)
        # Without a header: closed without an answer; the worker's first
        # refusal is a warning that says what to check.
        assert _exchange(srv.address, _get(close=True)) == b""
        srv.wait_for_line(
            r"WARNING closing a connection from .*: not a PROXY header.*"
            r"check that the balancer sends one",
            timeout=TIMEOUT,
        )
        (body,) = _bodies(_exchange(srv.address, V1 + _get(close=True)))
        assert body["client"][0] == "192.0.2.1"
    assert srv.stderr.count("WARNING") == 1, srv.stderr


def test_wsgi_remote_addr_with_the_setting_from_the_environment() -> None:
    with _serve("wsgi_app", "-w", "1", env={"REUSEPORT_PROXY_PROTOCOL": "true"}) as srv:
        srv.wait_ready()
        (body,) = _bodies(_exchange(srv.address, V1 + _get(close=True)))
        assert body["REMOTE_ADDR"] == "192.0.2.1"
        assert body["REMOTE_PORT"] == "56324"
        assert body["SERVER_NAME"] == "198.51.100.2"
        assert body["SERVER_PORT"] == "443"
        assert _exchange(srv.address, _get(close=True)) == b""


def test_an_untrusted_balancer_is_refused() -> None:
    with _serve("asgi_app", "--proxy-protocol", "--forwarded-allow-ips", "192.0.2.9") as srv:
        srv.wait_ready()
        assert _exchange(srv.address, V1 + _get(close=True)) == b""


def test_the_demo_app_takes_the_header_too() -> None:
    with Server("--proxy-protocol", "-w", "1") as srv:
        srv.wait_ready()
        (body,) = _bodies(_exchange(srv.address, V2 + _get(close=True)))
        assert set(body) == {"pid", "slot", "mode"}
        assert _exchange(srv.address, _get(close=True)) == b""


@pytest.mark.parametrize("mode", MODES)
def test_tls_passed_through_after_the_header(mode: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tls_args = (
        "--ssl-certfile",
        str(tmp_path / "cert.pem"),
        "--ssl-keyfile",
        str(tmp_path / "key.pem"),
    )
    with _serve("asgi_app", "--proxy-protocol", "--mode", mode, "-w", "2", *tls_args) as srv:
        srv.wait_ready()
        srv.wait_for_line(
            r"PROXY header from 127\.0\.0\.1, ::1 \(--forwarded-allow-ips\); "
            r"the TLS handshake follows it",
            timeout=TIMEOUT,
        )
        for header, client in ((V1, ["192.0.2.1", 56324]), (V2, ["2001:db8::7", 40000])):
            with socket.create_connection(srv.address, timeout=TIMEOUT) as raw:
                raw.sendall(header)  # as HAProxy's send-proxy-v2 in front of a TLS pass-through
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(_get() + _get(close=True))
                    chunks = []
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
            first, second = _bodies(b"".join(chunks))
            for body in (first, second):
                assert body["scheme"] == "https"
                assert body["client"] == client
        # Plain HTTP after a header, on a TLS port: closed without an HTTP answer.
        assert not _exchange(srv.address, V1 + _get(close=True)).startswith(b"HTTP/")
        # No header: closed, and the warning says what to check.
        assert _exchange(srv.address, _get(close=True)) == b""
        srv.wait_for_line(
            r"WARNING closing a connection from .*: not a PROXY header", timeout=TIMEOUT
        )


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "serve"])
@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ("apps_proxied:stream_handler", "--interface", "stream"),
            2,
            "--proxy-protocol cannot apply to an --interface stream app",
        ),
        (
            ("apps_proxied:stream_handler",),
            5,
            "--proxy-protocol cannot apply to apps_proxied:stream_handler, a stream app",
        ),
    ],
    ids=["interface-stream", "detected-stream"],
)
def test_what_the_flag_cannot_apply_to_is_refused_at_start(
    tmp_path: Path, argv: tuple[str, ...], code: int, message: str, check: bool
) -> None:
    extra = ("--check-config",) if check else ()
    done = run_serve(
        *argv,
        "--proxy-protocol",
        "--app-dir",
        TESTS_DIR,
        "-b",
        "127.0.0.1:0",
        "-w",
        "1",
        *extra,
        cwd=tmp_path,
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "configuration OK" not in done.stdout
