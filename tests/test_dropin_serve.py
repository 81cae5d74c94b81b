"""Drop-in flags end to end: Unix sockets, inherited fds, systemd activation, TLS,
log files and SIGUSR1, access log atoms, --factory, --env-file, --header, --reload.

Real servers, real clients: ``AF_UNIX`` sockets, ``ssl`` against a certificate
made by ``trustme`` in the test (no network), a listening socket passed with
``pass_fds``, a launcher that execs the server as systemd would.  Every wait
is bounded (``wait_until``, ``Server.wait_for_line``, socket timeouts).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from features import requires_reuseport
from support import (
    REPO_ROOT,
    Server,
    child_env,
    listening_inodes,
    run_serve,
    socket_inodes_of,
    wait_until,
)

from reuseport.control.client import query

pytestmark = pytest.mark.e2e

TESTS_DIR = str(Path(__file__).resolve().parent)
APP = ("apps_dropin:scope_app", "--app-dir", TESTS_DIR)


# ------------------------------------------------------------------ clients
def _parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"not an HTTP response: {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = headers.get(name.strip().lower(), "") + value.strip()
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return int(lines[0].split(" ")[1]), headers, parsed


def unix_get(path: str, target: str = "/", timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
    """``GET target`` over a fresh connection to the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return _parse(raw)


def tcp_get(
    address: tuple[str, int], target: str = "/", extra: str = "", timeout: float = 5.0
) -> tuple[int, dict[str, str], Any]:
    with socket.create_connection(address, timeout=timeout) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
        sock.sendall(request.encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return _parse(raw)


def https_get(address: tuple[str, int], ca: str, target: str = "/") -> tuple[int, Any, str | None]:
    """(status, body, the ALPN protocol chosen) of one HTTPS ``GET``."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    conn = http.client.HTTPSConnection(address[0], address[1], context=context, timeout=5.0)
    try:
        conn.connect()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        alpn = sock.selected_alpn_protocol()
        conn.request("GET", target, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), alpn
    finally:
        conn.close()


def peer_serial(address: tuple[str, int], ca: str) -> int:
    """The serial number of the certificate the server presents now."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(address, timeout=5.0) as raw,
        context.wrap_socket(raw, server_hostname=address[0]) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def short_tmp(name: str) -> Iterator[Path]:
    """A folder with a short path (``sun_path`` holds 107 bytes; pytest's tmp_path is long)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"rp-{name}-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sockdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    yield from short_tmp(request.node.name[:12])


def unix_listener_inode(path: str) -> int:
    """The inode of the listening Unix socket bound at ``path`` (from /proc/net/unix)."""
    with open("/proc/net/unix") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; flag 0x10000 = listening
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return int(fields[6])
    raise AssertionError(f"no listening Unix socket at {path}")


# ------------------------------------------------------------------ Unix sockets
def test_unix_bind_serves_asgi_with_the_spec_scope(sockdir: Path) -> None:
    path = str(sockdir / "app.sock")
    control = str(sockdir / "ctl.sock")
    with Server(
        *APP, "-w", "2", "-b", f"unix:{path}", "--uds-mode", "600", "--control", control
    ) as server:
        ready = server.wait_ready()
        assert ready["mode"] == "shared"
        server.wait_for_line(rf"Listening at unix:{re.escape(path)} \(shared mode\)")
        server.wait_for_line(r"chosen by --mode auto: unix:\S+ has one accept queue by nature")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        status, _, body = unix_get(path, "/hello")
        assert status == 200
        assert body["server"] == [path, None]  # ASGI: [path, None] for a Unix socket
        assert body["client"] is None
        assert body["scheme"] == "http"
        assert body["path"] == "/hello"
        assert query(control)["master"]["binds"] == [f"unix:{path}"]
        assert server.stop() == 0
    assert not os.path.exists(path), "the socket file is removed at stop"


def test_uds_flag_default_mode_and_demo_app(sockdir: Path) -> None:
    path = str(sockdir / "demo.sock")
    with Server("-w", "1", "--uds", path) as server:
        server.wait_ready()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # as uvicorn leaves it
        status, _, body = unix_get(path)
        assert status == 200
        assert body["mode"] == "shared"
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(sockdir: Path) -> None:
    path = str(sockdir / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a killed server leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with Server("-w", "1", "--uds", path) as server:
        server.wait_ready()
        server.wait_for_line(rf"Removed the stale socket file {re.escape(path)}")
        assert unix_get(path)[0] == 200


def test_a_socket_file_something_listens_on_is_left_alone(sockdir: Path) -> None:
    path = str(sockdir / "busy.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(8)
        result = run_serve("-w", "1", "--uds", path)
        assert result.returncode == 3, result.stderr
        assert f"cannot listen on unix:{path}: another process listens there" in result.stderr
        assert "Traceback" not in result.stderr
        assert os.path.exists(path), "a live server's socket file must not be removed"


def test_a_path_that_is_not_a_socket_is_refused(sockdir: Path) -> None:
    path = sockdir / "file.txt"
    path.write_text("data")
    result = run_serve("-w", "1", "-b", f"unix:{path}")
    assert result.returncode == 3, result.stderr
    assert "the path exists and is not a socket" in result.stderr
    assert path.read_text() == "data"


def test_reuseport_mode_refuses_binds_without_per_worker_queues(sockdir: Path) -> None:
    result = run_serve("--mode", "reuseport", "--uds", str(sockdir / "x.sock"))
    assert result.returncode == 2
    assert "--mode reuseport needs a TCP bind" in result.stderr
    assert "Traceback" not in result.stderr


@requires_reuseport
def test_mixed_binds_tcp_per_worker_and_one_shared_unix_socket(sockdir: Path) -> None:
    path = str(sockdir / "mixed.sock")
    args = ("-w", "2", "--mode", "reuseport", "-b", "127.0.0.1:0", "-b", f"unix:{path}")
    args += ("--graceful-timeout", "20")
    with Server(*APP, *args) as server:
        ready = server.wait_ready()
        assert ready["mode"] == "reuseport"
        server.wait_for_line(r"Listening at unix:\S+ \(one shared socket for every worker")
        workers = server.wait_workers(2)
        # Each worker has its own TCP listener, and both hold the one Unix listener.
        port = server.port
        assert len(listening_inodes(port)) == 2
        unix_inode = unix_listener_inode(path)
        for pid in workers:
            assert unix_inode in socket_inodes_of(pid), f"worker {pid} lacks the Unix socket"
        tcp_pids = {tcp_get(("127.0.0.1", port))[2]["pid"] for _ in range(30)}
        assert tcp_pids == set(workers)
        assert unix_get(path)[2]["pid"] in workers
        # A rolling reload keeps both kinds serving.
        server.send_signal(signal.SIGHUP)
        server.wait_for_line(r"Reload complete", timeout=30)
        assert unix_get(path)[0] == 200
        assert tcp_get(("127.0.0.1", port))[0] == 200
        # Scale-down drains the slot's own TCP queue; the shared Unix queue
        # never goes quiet for it, and need not (graceful timeout is 20 s).
        server.send_signal(signal.SIGTTOU)
        server.wait_for_line(r"Worker \d drained in", timeout=10)
        server.wait_workers(1)
        assert unix_get(path)[0] == 200
    assert not os.path.exists(path)


# ------------------------------------------------------------------ inherited fds
@pytest.mark.parametrize("spelling", ["--fd", "-b"])
def test_an_inherited_listening_socket(spelling: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()
        port = listener.getsockname()[1]
        value = str(fd) if spelling == "--fd" else f"fd://{fd}"
        with Server(*APP, "-w", "2", spelling, value, pass_fds=[fd]) as server:
            ready = server.wait_ready()
            assert ready["mode"] == "shared"
            server.wait_for_line(
                rf"Listening at fd://{fd} = http://127\.0\.0\.1:{port} \(shared mode\)"
            )
            status, _, body = tcp_get(("127.0.0.1", port))
            assert status == 200
            assert body["server"] == ["127.0.0.1", port]


def test_an_fd_that_is_not_a_listening_socket_is_refused(tmp_path: Path) -> None:
    result = run_serve("--fd", "97")
    assert result.returncode == 3
    assert "fd 97 is not a usable socket (EBADF)" in result.stderr
    with socket.socket() as plain:  # a socket that does not listen
        proc = subprocess.run(
            [sys.executable, "-m", "reuseport", "serve", "--fd", str(plain.fileno())],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            pass_fds=[plain.fileno()],
            check=False,
        )
    assert proc.returncode == 3
    assert "is a socket that does not listen" in proc.stderr


_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)  # systemd passes its sockets from fd 3 on
if fd != 3:
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid: the server's own
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_FDNAMES"] = "web"
os.execv(sys.executable, [sys.executable, "-m", "reuseport", "serve", *sys.argv[2:]])
"""


def test_systemd_socket_activation() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()
        port = listener.getsockname()[1]
        server = Server(*APP, "-w", "1", pass_fds=[fd])
        # No --bind of ours: the activated socket replaces the default.
        server.argv = [sys.executable, "-c", _LAUNCHER, str(fd), *APP, "-w", "1"]
        with server:
            server.wait_ready()
            server.wait_for_line(r"systemd socket activation: fd://3 \[web\]")
            server.wait_for_line(rf"Listening at fd://3 \[web\] = http://127\.0\.0\.1:{port} ")
            assert server.count_lines(r"Listening at") == 1
            status, _, body = tcp_get(("127.0.0.1", port))
            assert status == 200
            assert body["listen_fds"] is None  # the variables were meant for the master only


# ------------------------------------------------------------------ TLS
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(folder / f"{name}.pem") for name in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def test_https_scope_scheme_and_alpn(tls_files: dict[str, str]) -> None:
    tls_args = ("--ssl-certfile", tls_files["cert"], "--ssl-keyfile", tls_files["key"])
    with Server(*APP, "-w", "2", *tls_args) as server:
        server.wait_ready()
        server.wait_for_line(r"Listening at https://127\.0\.0\.1:\d+ ")
        status, body, alpn = https_get(server.address, tls_files["ca"], "/secure")
        assert status == 200
        assert body["scheme"] == "https"
        assert body["path"] == "/secure"
        assert alpn == "http/1.1"  # offered h2 too: we speak HTTP/1.1 only
        # Plain HTTP to a TLS port gets no HTTP answer.
        with socket.create_connection(server.address, timeout=5.0) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = plain.recv(65536)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")


def test_a_reload_picks_up_a_renewed_certificate(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    old_ca_file, new_ca_file = str(tmp_path / "old-ca.pem"), str(tmp_path / "new-ca.pem")
    old_ca.cert_pem.write_to_path(old_ca_file)
    new_ca.cert_pem.write_to_path(new_ca_file)
    issued = old_ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    with Server("-w", "1", "--ssl-certfile", cert, "--ssl-keyfile", key) as server:
        server.wait_ready()
        first = peer_serial(server.address, old_ca_file)
        renewed = new_ca.issue_cert("127.0.0.1")
        renewed.cert_chain_pems[0].write_to_path(cert)
        renewed.private_key_pem.write_to_path(key)
        server.send_signal(signal.SIGHUP)
        server.wait_for_line(r"Reload complete", timeout=30)

        def renewed_certificate() -> bool:
            # The old worker may still answer a handshake while it stops.
            try:
                return peer_serial(server.address, new_ca_file) != first
            except ssl.SSLCertVerificationError:
                return False

        wait_until(renewed_certificate, timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ssl-certfile", "/nonexistent/cert.pem"), "cannot read --ssl-certfile"),
        (("--ssl-keyfile", "k.pem"), "--ssl-keyfile given without --ssl-certfile"),
    ],
)
def test_bad_tls_flags_stop_the_start_with_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_serve("-b", "127.0.0.1:0", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "Listening at" not in result.stderr  # refused before binding anything


def test_a_key_that_does_not_fit_is_exit_2(tls_files: dict[str, str], tmp_path: Path) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other.pem"))
    result = run_serve(
        "-b", "127.0.0.1:0", "--ssl-certfile", tls_files["cert"],
        "--ssl-keyfile", str(tmp_path / "other.pem"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "the private key does not belong to the certificate" in result.stderr


def test_tls_for_a_stream_app_and_refusal_for_a_socket_app(tls_files: dict[str, str]) -> None:
    tls_args = ("--ssl-certfile", tls_files["cert"], "--ssl-keyfile", tls_files["key"])
    app = ("apps_plain:stream_handler", "--app-dir", TESTS_DIR)
    with Server(*app, "-w", "1", *tls_args) as server:
        server.wait_ready()
        context = ssl.create_default_context(cafile=tls_files["ca"])
        with (
            socket.create_connection(server.address, timeout=5.0) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(b"GET /tls HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b'"path": "/tls"' in data
        assert b'"interface": "stream"' in data
    result = run_serve(
        "apps_plain:serve_socket", "--app-dir", TESTS_DIR, "--interface", "socket", *tls_args
    )
    assert result.returncode == 2
    assert "--ssl-certfile cannot apply to --interface socket" in result.stderr


# ------------------------------------------------------------------ logging
def _file_line(path: Path, pattern: str, timeout: float = 15.0) -> re.Match[str]:
    regex = re.compile(pattern)

    def found() -> re.Match[str] | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return regex.search(text)

    match: re.Match[str] = wait_until(
        found,
        timeout,
        message=lambda: f"{path} has no line matching {pattern!r}:\n{_read(path)}",
    )
    return match


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return "(no file)"


def test_access_log_file_with_gunicorn_atoms(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    fmt = (
        '%(h)s %(l)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-trace}i)s %(m)s %(U)s %(q)s %(H)s %(p)s %(D)s'
    )
    with Server(
        *APP, "-w", "1", "--access-logfile", str(access), "--access-log-format", fmt
    ) as server:
        server.wait_ready()
        status, _, body = tcp_get(
            server.address, "/path?x=1", extra="User-Agent: probe/1\r\nX-Trace: t-77\r\n"
        )
        assert status == 200
        line = _file_line(access, r".*/path.*").group(0)
    size = len(json.dumps(body))
    expected = (
        rf'^127\.0\.0\.1 - "GET /path\?x=1 HTTP/1\.1" 200 {size} "probe/1" t-77 GET /path x=1 '
        rf"HTTP/1\.1 <{body['pid']}> \d+$"
    )
    assert re.match(expected, line), line
    assert "/path" not in server.stderr  # the access log went to its file only


@requires_reuseport  # the kernel's hash spreads new connections over both workers
def test_usr1_reopens_the_log_files_of_the_master_and_every_worker(tmp_path: Path) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    args = (
        "-w", "2", "--mode", "reuseport", "--access-logfile", str(access),
        "--access-log-format", "%(p)s %(U)s", "--error-logfile", str(errors),
    )  # fmt: skip
    with Server(*APP, *args) as server:
        _file_line(errors, r"Ready: 2 workers")
        port = int(_file_line(errors, r"Listening at http://127\.0\.0\.1:(\d+) ").group(1))
        assert server.stderr == ""  # the server's log went to its file
        workers = server.wait_workers(2)

        def both_workers_wrote(path: str) -> bool:
            tcp_get(("127.0.0.1", port), path)
            text = _read(access)
            return all(f"<{pid}> {path}" in text for pid in workers)

        wait_until(lambda: both_workers_wrote("/before"), timeout=20)
        os.rename(access, tmp_path / "access.log.1")
        os.rename(errors, tmp_path / "error.log.1")
        server.send_signal(signal.SIGUSR1)
        _file_line(errors, r"SIGUSR1: reopened 2 log file\(s\); asked 2 worker\(s\)")

        # A worker may serve a request or two before its loop runs the relayed
        # signal (as with any server: hence logrotate's delaycompress); once
        # each has written the new file, nothing goes to the old one.
        wait_until(lambda: both_workers_wrote("/after"), timeout=20)
        for _ in range(6):
            tcp_get(("127.0.0.1", port), "/later")
        assert "/later" not in (tmp_path / "access.log.1").read_text()
        assert _read(access).count("/later") == 6
        assert server.stop() == 0
    assert "SIGTERM: graceful stop" in errors.read_text()
    assert "SIGTERM" not in (tmp_path / "error.log.1").read_text()


PRINTING = ("apps_dropin:printing_app", "--app-dir", TESTS_DIR)


@requires_reuseport  # the kernel's hash spreads new connections over both workers
def test_capture_output_sends_print_and_stderr_to_the_error_log(tmp_path: Path) -> None:
    errors = tmp_path / "error.log"
    args = ("-w", "2", "--mode", "reuseport", "--error-logfile", str(errors), "--capture-output")
    with Server(*PRINTING, *args) as server:
        _file_line(errors, r"Ready: 2 workers")
        port = int(_file_line(errors, r"Listening at http://127\.0\.0\.1:(\d+) ").group(1))
        assert re.search(rf"stdout and stderr go to {re.escape(str(errors))}", _read(errors))
        workers = server.wait_workers(2)

        def every_worker_wrote(path: str) -> bool:
            # Each line written three ways: print() to stdout (line-buffered
            # now), print() to stderr, os.write(2) as a C library would.
            pids = {tcp_get(("127.0.0.1", port), path)[2]["pid"] for _ in range(4)}
            text = _read(errors)
            return pids >= set(workers) and all(
                f"{how} {path}\n" in text for how in ("stdout print", "stderr print", "fd2 write")
            )

        wait_until(lambda: every_worker_wrote("/before"), timeout=20)
        assert server.stderr == ""  # nothing reached the terminal
        assert not server.stdout_lines

        os.rename(errors, tmp_path / "error.log.1")
        server.send_signal(signal.SIGUSR1)
        _file_line(errors, r"SIGUSR1: reopened 1 log file\(s\); asked 2 worker\(s\)")
        # As with the log files: a worker may answer a request before its
        # loop runs the relayed signal; once both wrote the new file, they
        # write nothing more to the old one.
        wait_until(lambda: every_worker_wrote("/after"), timeout=20)
        for _ in range(4):
            tcp_get(("127.0.0.1", port), "/later")
        assert "/later" not in (tmp_path / "error.log.1").read_text()
        assert _read(errors).count("stdout print /later\n") == 4
        assert server.stop() == 0
    assert "SIGTERM: graceful stop" in errors.read_text()
    assert server.stderr == ""
    assert not server.stdout_lines


def test_capture_output_needs_a_file_and_start_up_errors_stay_on_the_terminal(
    tmp_path: Path,
) -> None:
    result = run_serve(*PRINTING, "--capture-output")
    assert result.returncode == 2
    assert "--capture-output sends stdout and stderr" in result.stderr
    assert "give --error-logfile PATH too" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_serve(*PRINTING, "--capture-output", "--error-logfile", "-")
    assert result.returncode == 2
    assert "give --error-logfile PATH too" in result.stderr
    result = run_serve(*PRINTING, env={"REUSEPORT_CAPTURE_OUTPUT": "true"})
    assert result.returncode == 2
    assert "REUSEPORT_CAPTURE_OUTPUT: --capture-output sends stdout" in result.stderr

    errors = tmp_path / "error.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(
            *PRINTING, "-b", f"127.0.0.1:{port}", "--mode", "shared",
            "--error-logfile", str(errors), "--capture-output",
        )  # fmt: skip
    assert result.returncode == 3
    # Nothing was captured yet: the refusal is on the terminal, and in the log.
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "stdout and stderr go to" not in _read(errors)


def test_log_config_json_and_trace_level(tmp_path: Path) -> None:
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "CUSTOM %(levelname)s %(name)s %(message)s"}},
                "handlers": {
                    "err": {
                        "class": "logging.StreamHandler",
                        "formatter": "plain",
                        "stream": "ext://sys.stderr",
                    }
                },
                "root": {"level": "INFO", "handlers": ["err"]},
            }
        )
    )
    toml = tmp_path / "logging.toml"
    toml.write_text(
        "version = 1\n"
        "[formatters.plain]\nformat = 'TOML %(levelname)s %(message)s'\n"
        "[handlers.err]\nclass = 'logging.StreamHandler'\nformatter = 'plain'\n"
        "[root]\nlevel = 'INFO'\nhandlers = ['err']\n"
    )
    ini = tmp_path / "logging.ini"
    ini.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=err\n[formatters]\nkeys=plain\n"
        "[logger_root]\nlevel=INFO\nhandlers=err\n"
        "[handler_err]\nclass=StreamHandler\nformatter=plain\nargs=(sys.stderr,)\n"
        "[formatter_plain]\nformat=INI %(levelname)s %(message)s\n"
    )
    for path, prefix in (
        (config, "CUSTOM INFO reuseport\\.master"),
        (toml, "TOML INFO"),
        (ini, "INI INFO"),
    ):
        with Server("-w", "1", "--log-config", str(path)) as server:
            server.wait_ready()
            server.wait_for_line(rf"^{prefix} Listening at")
    with Server("-w", "1", log_level="trace") as server:
        server.wait_ready()
        server.wait_for_line(r"TRACE worker 0 \(pid \d+\) booted in")
    config.write_text("{not json")
    result = run_serve("--log-config", str(config))
    assert result.returncode == 2
    assert "is not a usable logging configuration" in result.stderr


def test_log_file_in_a_missing_folder_is_exit_2(tmp_path: Path) -> None:
    result = run_serve("--access-logfile", str(tmp_path / "no" / "such" / "access.log"))
    assert result.returncode == 2
    assert "cannot open --access-logfile" in result.stderr


# ------------------------------------------------------------------ --factory, --env-file, --header
def test_factory_env_file_and_headers(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("DROPIN_VALUE='from the file'\n")
    args = (
        "apps_dropin:make_app", "--factory", "--app-dir", TESTS_DIR, "-w", "1",
        "--env-file", str(env_file), "--header", "X-Frame-Options: DENY",
        "--header", "Server: edge",
    )  # fmt: skip
    with Server(*args) as server:
        server.wait_ready()
        status, headers, body = tcp_get(server.address)
        assert status == 200
        assert body["made_by"] == "factory"
        assert body["env"] == "from the file"
        assert headers["x-frame-options"] == "DENY"
        assert headers["server"] == "edge"  # replaces ours, once
        # An edited env file reaches the workers of a reload.
        env_file.write_text("DROPIN_VALUE=edited\n")
        server.send_signal(signal.SIGHUP)
        # (The old worker may still answer a connection while it stops.)
        wait_until(lambda: tcp_get(server.address)[2]["env"] == "edited", timeout=30)


def test_a_variable_already_set_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("DROPIN_VALUE=file\n")
    with Server(
        *APP, "-w", "1", "--env-file", str(env_file), env={"DROPIN_VALUE": "outside"}
    ) as server:
        server.wait_ready()
        assert tcp_get(server.address)[2]["env"] == "outside"


def test_env_flag_wins_over_the_environment_and_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("DROPIN_VALUE=file\n")
    args = ("-w", "1", "--env-file", str(env_file), "-e", "DROPIN_VALUE=flag")
    with Server(*APP, *args, env={"DROPIN_VALUE": "outside"}) as server:
        server.wait_ready()
        assert tcp_get(server.address)[2]["env"] == "flag"
    result = run_serve(*APP, "--env", "NO_EQUALS_SIGN")
    assert result.returncode == 2
    assert "invalid --env 'NO_EQUALS_SIGN': expected KEY=VALUE" in result.stderr


HERE_APP = """
import json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    with open("data.txt") as fh:  # relative: found in --chdir's folder
        data = fh.read()
    body = json.dumps({"cwd": os.getcwd(), "data": data}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_chdir_moves_the_server_before_the_app_is_found(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "here_app.py").write_text(HERE_APP)
    (site / "data.txt").write_text("found")
    # Started elsewhere, no --app-dir: the app, its data file and the
    # relative log file are all found in --chdir's folder.
    args = ("here_app:app", "--chdir", "site", "-w", "1", "--error-logfile", "error.log")
    with Server(*args, cwd=str(tmp_path)) as server:
        _file_line(site / "error.log", r"Ready: 1 worker")
        assert server.stderr == ""  # the log went to site/error.log
        port = int(_file_line(site / "error.log", r"Listening at http://127\.0\.0\.1:(\d+) ")[1])
        status, _, body = tcp_get(("127.0.0.1", port))
        assert status == 200
        assert body == {"cwd": str(site), "data": "found"}
    checked = run_serve("here_app:app", "--chdir", str(site), "--check-config", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stdout
    missing = run_serve("here_app:app", "--chdir", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2
    assert "cannot change to --chdir 'nowhere': No such file or directory (ENOENT)" in (
        missing.stderr
    )


def test_pythonpath_puts_folders_first_on_the_import_path(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pp_app.py").write_text(HERE_APP)
    (tmp_path / "data.txt").write_text("beside")
    with Server("pp_app:app", "--pythonpath", "other,src", "-w", "1", cwd=str(tmp_path)) as server:
        server.wait_ready()
        status, _, body = tcp_get(server.address)
        assert status == 200
        assert body == {"cwd": str(tmp_path), "data": "beside"}
    without = run_serve("pp_app:app", "--check-config", cwd=tmp_path)
    assert without.returncode != 0
    assert "pp_app" in without.stderr


def test_missing_env_file_and_failing_factory(tmp_path: Path) -> None:
    result = run_serve(*APP, "--env-file", str(tmp_path / "missing.env"))
    assert result.returncode == 2
    assert "cannot read --env-file" in result.stderr
    result = run_serve("apps_dropin:broken_factory", "--factory", "--app-dir", TESTS_DIR, "-w", "1",
                  "-b", "127.0.0.1:0")  # fmt: skip
    assert result.returncode == 4
    assert "the factory raised" in result.stderr
    assert "test 5151" in result.stderr


# ------------------------------------------------------------------ --reload
_RELOAD_APP = """
import json

VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": json.dumps(VERSION).encode()}})
"""


def _write_app(folder: Path, text: str) -> None:
    (folder / "live.py").write_text(text)


# Edits within one second of the same size would let a stale .pyc stand in.
_NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}


def test_reload_on_edit_and_a_syntax_error_keeps_serving(tmp_path: Path) -> None:
    _write_app(tmp_path, _RELOAD_APP.format(version="one"))
    args = ("live:app", "--app-dir", str(tmp_path), "-w", "1", "--reload", "--lifespan", "off")
    with Server(*args, env=_NO_PYC) as server:
        server.wait_ready()
        server.wait_for_line(rf"--reload: watching {re.escape(str(tmp_path))}")
        assert server.count_lines(r"WARNING") == 0  # one loopback worker: nothing to warn of
        assert tcp_get(server.address)[2] == "one"
        (tmp_path / "notes.txt").write_text("not code: no reload")
        _write_app(tmp_path, _RELOAD_APP.format(version="two"))
        server.wait_for_line(r"--reload: live\.py changed; reloading", timeout=20)
        wait_until(lambda: tcp_get(server.address)[2] == "two", timeout=20)
        assert server.count_lines(r"notes\.txt") == 0
        start = len(server.lines)
        _write_app(tmp_path, "def broken(:\n")
        server.wait_for_line(
            r"Reload of worker 0 failed: cannot load app 'live:app'", timeout=20, start=start
        )
        server.wait_for_line(r"SyntaxError", start=start)
        assert server.returncode is None
        assert tcp_get(server.address)[2] == "two"  # the old worker keeps serving
        _write_app(tmp_path, _RELOAD_APP.format(version="three"))
        wait_until(lambda: tcp_get(server.address)[2] == "three", timeout=20)


def test_reload_warns_about_production_like_setups(tmp_path: Path) -> None:
    _write_app(tmp_path, _RELOAD_APP.format(version="one"))
    args = ("live:app", "--app-dir", str(tmp_path), "-w", "2", "--reload", "--lifespan", "off")
    with Server(*args, env=_NO_PYC) as server:
        server.wait_ready()
        server.wait_for_line(r"WARNING --reload with 2 workers: every change restarts all")


def test_reload_without_the_extra_names_it(tmp_path: Path) -> None:
    # A sitecustomize that hides watchfiles, as an install without the extra would.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['watchfiles'] = None  # import fails, find_spec says absent\n"
    )
    result = run_serve("--reload", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"})
    assert result.returncode == 2
    assert "--reload needs the watchfiles package: pip install 'reuseport[reload]'" in result.stderr
