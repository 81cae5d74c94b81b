"""Pure tests of the drop-in pieces: bind kinds, TLS/header/mode parsing, systemd
variables, env files, access log formats, the reload filter, mode resolution.

No processes and no servers; the TLS context test loads real files made by
``trustme`` in the test, the reload filter looks at real folders in tmp_path.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from reuseport import envfile, reloader, tls
from reuseport.activation import systemd_binds
from reuseport.cli import resolve_mode
from reuseport.config import (
    DEFAULT_BIND,
    BindAddress,
    BindKind,
    CertReqs,
    Config,
    FdBind,
    Mode,
    UnixBind,
    parse_bind,
    parse_header,
    parse_octal_mode,
)
from reuseport.errors import ConfigError
from reuseport.http.access import AccessLog, Entry, compile_format


# ------------------------------------------------------------------ bind kinds
@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("unix:/run/app.sock", UnixBind(path="/run/app.sock"), "unix:/run/app.sock"),
        ("unix:relative.sock", UnixBind(path="relative.sock"), "unix:relative.sock"),
        ("fd://3", FdBind(fd=3), "fd://3"),
        (" fd://12 ", FdBind(fd=12), "fd://12"),
    ],
)
def test_parse_bind_kinds(text: str, expected: object, shown: str) -> None:
    bind = parse_bind(text)
    assert bind == expected
    assert str(bind) == shown
    assert bind.shared_only


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("unix:", "expected unix:/path"),
        ("unix:/" + "x" * 200, "at most 107 bytes"),
        ("fd://", "expected fd://N"),
        ("fd://three", "expected fd://N"),
        ("fd://-1", "expected fd://N"),
        ("tcp://1.2.3.4:80", "put IPv6 addresses in brackets"),
    ],
)
def test_parse_bind_kind_errors(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_bind(text)


def test_tcp_bind_is_the_only_kind_that_can_have_groups() -> None:
    tcp = parse_bind("127.0.0.1:0")
    assert isinstance(tcp, BindAddress)
    assert tcp.kind is BindKind.TCP
    assert not tcp.shared_only
    config = Config(binds=("unix:/tmp/a.sock", "127.0.0.1:0", "fd://5"))
    assert config.tcp_binds == (tcp,)
    assert config.shared_only_binds == (UnixBind(path="/tmp/a.sock"), FdBind(fd=5))


@pytest.mark.parametrize(
    "binds",
    [
        ("unix:/tmp/a.sock", "unix:/tmp/a.sock"),
        ("fd://3", "fd://3"),
        ("127.0.0.1:80", "127.0.0.1:80"),
    ],
)
def test_the_same_bind_twice_is_refused(binds: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        Config(binds=binds)


@pytest.mark.parametrize(
    ("value", "mode"), [("660", 0o660), ("0o600", 0o600), ("0777", 0o777), (0o640, 0o640)]
)
def test_octal_modes(value: object, mode: int) -> None:
    assert parse_octal_mode(value) == mode
    assert Config(uds_mode=value).uds_mode == mode  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "8", "rw", "1000", -1])
def test_bad_octal_modes(value: object) -> None:
    with pytest.raises(ConfigError, match="--uds-mode"):
        parse_octal_mode(value)


# ------------------------------------------------------------------ headers, TLS fields
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X-Frame-Options:DENY", ("X-Frame-Options", "DENY")),
        ("X-A: b c ", ("X-A", "b c")),
        ("X-Empty:", ("X-Empty", "")),
        ("X-Url: http://x/y", ("X-Url", "http://x/y")),
    ],
)
def test_parse_header(text: str, expected: tuple[str, str]) -> None:
    assert parse_header(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("NoColon", "expected NAME:VALUE"),
        ("Bad Name:x", "is not a header name"),
        (":x", "is not a header name"),
        ("X-A:a\r\nX-B: b", "without CR, LF or NUL"),
        ("X-A:caf\u00e9", "must be ASCII"),
    ],
)
def test_bad_headers(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Config(headers=(text,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, CertReqs.NONE), ("1", CertReqs.OPTIONAL), ("required", CertReqs.REQUIRED)],
)
def test_cert_reqs(value: object, expected: CertReqs) -> None:
    config = Config(ssl_certfile="c.pem", ssl_ca_certs="ca.pem", ssl_cert_reqs=value)  # type: ignore[arg-type]
    assert config.ssl_cert_reqs is expected
    assert config.tls


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"ssl_keyfile": "k.pem"}, "--ssl-keyfile given without --ssl-certfile"),
        ({"ssl_ciphers": "HIGH"}, "--ssl-ciphers given without --ssl-certfile"),
        ({"ssl_certfile": "c.pem", "ssl_cert_reqs": 2}, "give --ssl-ca-certs"),
        ({"ssl_certfile": "c.pem", "ssl_cert_reqs": 7}, "invalid --ssl-cert-reqs"),
        ({"log_level": "verbose"}, "invalid --log-level 'verbose'"),
        ({"access_log_format": "  "}, "--access-log-format is empty"),
    ],
)
def test_bad_combinations(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Config(**fields)


def test_access_logfile_turns_the_access_log_on() -> None:
    assert Config(access_logfile="-").access_log is True
    assert Config().access_log is False


def test_reload_patterns_follow_uvicorn() -> None:
    config = Config(reload_includes=("*.html", ".env"), reload_excludes=("tests/*",))
    assert config.effective_reload_includes == ("*.html", ".env", "*.py")
    # A pattern the user includes is not excluded by a default, the others stay.
    assert config.effective_reload_excludes == ("tests/*", ".*", ".py[cod]", ".sw.*", "~*")
    assert Config(reload_excludes="*.txt").reload_excludes == ("*.txt",)  # type: ignore[arg-type]


# ------------------------------------------------------------------ mode resolution
def test_auto_mode_picks_shared_for_unix_and_fd_binds_and_says_why() -> None:
    mode, reason = resolve_mode(Config(binds=("unix:/tmp/a.sock",)))
    assert mode is Mode.SHARED
    assert "unix:/tmp/a.sock has one accept queue by nature" in reason
    mode, reason = resolve_mode(Config(binds=("127.0.0.1:0", "fd://3")))
    assert mode is Mode.SHARED
    assert "fd://3" in reason


def test_reuseport_mode_needs_a_tcp_bind() -> None:
    with pytest.raises(ConfigError, match="--mode reuseport needs a TCP bind") as info:
        resolve_mode(Config(binds=("unix:/tmp/a.sock",), mode=Mode.REUSEPORT))
    assert info.value.exit_code == 2
    mode, reason = resolve_mode(Config(binds=("127.0.0.1:0", "unix:/tmp/a.sock"), mode="reuseport"))  # type: ignore[arg-type]
    assert mode is Mode.REUSEPORT
    assert "unix:/tmp/a.sock is a shared socket every worker accepts from" in reason


# ------------------------------------------------------------------ systemd activation
def test_systemd_binds_for_our_pid() -> None:
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin", "PATH": "/bin"}
    assert systemd_binds(env, 4242) == (FdBind(fd=3, name="web"), FdBind(fd=4, name="admin"))
    assert env == {"PATH": "/bin"}  # removed, as sd_listen_fds(1) does


def test_systemd_binds_for_another_pid_are_left_alone() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd_binds(env, 4242) == ()
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd_binds({}, 4242) == ()


def test_systemd_binds_without_names_or_with_a_wrong_count() -> None:
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "only-one"}
    assert systemd_binds(env, 7) == (FdBind(fd=3), FdBind(fd=4))
    with pytest.raises(ConfigError, match="LISTEN_FDS='x' is not a number"):
        systemd_binds({"LISTEN_PID": "7", "LISTEN_FDS": "x"}, 7)


# ------------------------------------------------------------------ env files
def test_envfile_syntax() -> None:
    text = (
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED = spaced  \n"
        "SINGLE='a # not a comment \\n'\n"
        'DOUBLE="line\\nnext \\"q\\""\n'
        "TRAILING=word # comment\n"
        "EMPTY=\n"
        "PLAIN=again\n"
    )
    assert envfile.parse(text) == {
        "PLAIN": "again",
        "EXPORTED": "spaced",
        "SINGLE": "a # not a comment \\n",
        "DOUBLE": 'line\nnext "q"',
        "TRAILING": "word",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("NOEQUALS\n", "line 1: expected KEY=VALUE"),
        ("OK=1\n1BAD=2\n", "line 2: expected KEY=VALUE"),
        ("Q='open\n", "single quote is not closed"),
        ('Q="open\n', "double quote is not closed"),
    ],
)
def test_envfile_errors_name_the_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        envfile.parse(text, "app.env")


def test_envfile_apply_keeps_variables_already_set(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("NEW=1\nKEPT=file\n")
    env = {"KEPT": "outside"}
    assert envfile.apply(str(path), env) == 1
    assert env == {"KEPT": "outside", "NEW": "1"}
    assert envfile.apply(None, env) == 0
    with pytest.raises(ConfigError, match=r"cannot read --env-file .*missing\.env.*ENOENT"):
        envfile.apply(str(tmp_path / "missing.env"), env)


# ------------------------------------------------------------------ access log formats
def _entry(**fields: Any) -> Entry:
    values: dict[str, Any] = {
        "client": ("10.0.0.7", 5555),
        "method": "GET",
        "path": "/caf\u00e9",
        "raw_path": b"/caf%C3%A9",
        "query": b"a=1",
        "version": "1.1",
        "headers": [
            (b"referer", b"http://ref/"),
            (b"user-agent", b"curl/8"),
            (b"authorization", b"Basic dXNlcjpwYXNz"),  # user:pass
            (b"x-request-id", b"abc"),
        ],
        "status": 201,
        "size": 42,
        "started": 100.0,
        "now": 100.25,
    }
    values.update(fields)
    return Entry(**values)


def _line(fmt: str, entry: Entry) -> str:
    template, atoms = compile_format(fmt)
    return template % {name: get(entry) for name, get in atoms}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("%(h)s %(l)s %(u)s", "10.0.0.7 - user"),
        ('"%(r)s" %(s)s %(b)s', '"GET /caf%C3%A9?a=1 HTTP/1.1" 201 42'),
        ('"%(f)s" "%(a)s"', '"http://ref/" "curl/8"'),
        ("%(m)s %(U)s %(q)s %(H)s", "GET /caf\u00e9 a=1 HTTP/1.1"),
        ("%(T)s %(M)s %(D)s %(L)s", "0 250 250000 0.250000"),
        ("%({x-request-id}i)s %({X-Missing}i)s", "abc -"),
        ("%(B)s 100%%", "42 100%"),
        ("literal %%(h)s", "literal %(h)s"),
    ],
)
def test_access_atoms(fmt: str, expected: str) -> None:
    assert _line(fmt, _entry()) == expected


def test_access_atoms_without_a_body_client_or_auth() -> None:
    entry = _entry(client=None, size=0, headers=[], started=0.0)
    assert _line("%(h)s %(b)s %(B)s %(u)s %(f)s %(D)s", entry) == "- - 0 - - 0"
    assert _line("%(p)s", entry) == f"<{os.getpid()}>"
    assert _line("%(t)s", entry).startswith("[")
    assert _line("%(t)s", entry).endswith("]")


@pytest.mark.parametrize(
    ("fmt", "why"),
    [
        ("%(x)s", "unknown atom %\\(x\\)s"),
        ("%({content-type}o)s", "unknown atom"),
        ("%(h)d", "write atoms as %\\(h\\)s"),
        ("%(h)s 100%", "write a literal % as %%"),
    ],
)
def test_bad_access_formats(fmt: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        compile_format(fmt)


def test_access_log_hands_the_logger_lazy_arguments(caplog: pytest.LogCaptureFixture) -> None:
    access = AccessLog("%(h)s %(s)s")
    with caplog.at_level(logging.INFO, logger="reuseport.access"):
        access.error(("127.0.0.1", 1), 400, 0.0)
        AccessLog("no atoms %%").error(None, 400, 0.0)
    first, second = caplog.records
    assert first.msg == "%(h)s %(s)s"
    assert first.args == {"h": "127.0.0.1", "s": 400}
    assert first.getMessage() == "127.0.0.1 400"
    assert second.getMessage() == "no atoms %"


# ------------------------------------------------------------------ reload filter
def test_reload_filter_follows_uvicorn(tmp_path: Path) -> None:
    root = tmp_path / "app"
    (root / "pkg").mkdir(parents=True)
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("")
    (root / "venv" / "lib").mkdir()
    config = Config(reload_includes=("*.html",), reload_excludes=("skip_*",))
    accept = reloader.ReloadFilter(
        [str(root)], config.effective_reload_includes, config.effective_reload_excludes
    )
    yes = ["main.py", "pkg/models.py", "pkg/page.html"]
    no = [
        "notes.txt",
        ".hidden.py",
        "pkg/main.pyc",
        "pkg/.main.py.swp",
        "~backup.py",
        "skip_this.py",
        ".git/hooks.py",
        "pkg/__pycache__/m.py",
        "venv/lib/site.py",
    ]
    for name in yes:
        assert accept(None, str(root / name)), name
    for name in no:
        assert not accept(None, str(root / name)), name


def test_reload_warnings_and_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert reloader.warnings(Config(workers=1)) == []
    quiet = Config(reload=True, workers=1)
    assert reloader.warnings(quiet) == []
    many = reloader.warnings(Config(reload=True, workers=4))
    assert len(many) == 1
    assert "4 workers" in many[0]
    public = reloader.warnings(Config(reload=True, workers=1, binds=("0.0.0.0:8000",)))
    assert len(public) == 1
    assert "listening on 0.0.0.0:8000" in public[0]
    assert "do not use it in production" in public[0]
    with pytest.raises(ConfigError, match="is not a folder"):
        reloader.check(Config(reload=True, reload_dirs=(str(tmp_path / "nope"),)))
    monkeypatch.setattr(reloader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'reuseport\[reload\]'"):
        reloader.check(Config(reload=True))
    reloader.check(Config())  # off: nothing is checked


def test_env_flags_are_key_value_pairs_the_last_winning() -> None:
    config = Config(env=("A=1", "B=", "A=2", "C=x=y"))
    assert config.environment == {"A": "2", "B": "", "C": "x=y"}
    assert Config(env="ONE=1").env == ("ONE=1",)  # from REUSEPORT_ENV or a file: one string
    for bad in ("A", "=1", "1A=1", "A B=1", "A-B=1"):
        with pytest.raises(ConfigError, match="invalid --env"):
            Config(env=(bad,))


def test_reload_delay_is_the_watchers_debounce() -> None:
    assert reloader.watch_options(Config())["debounce"] == 400
    assert reloader.watch_options(Config(reload_delay=0.25))["debounce"] == 250  # uvicorn's
    assert reloader.watch_options(Config(reload_delay=0.05))["debounce"] == 50
    for bad in (0.01, 0, -1, 61, True, "1"):
        with pytest.raises(ConfigError, match="invalid --reload-delay"):
            Config(reload_delay=bad)  # type: ignore[arg-type]


def test_watcher_reads_whole_lines_only() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    watcher = reloader.Watcher(0, read_fd)
    try:
        os.write(write_fd, b"a.py, b.py\nc.p")
        assert watcher.read() == (["a.py, b.py"], False)
        os.write(write_fd, b"y\n")
        os.close(write_fd)
        assert watcher.read() == (["c.py"], True)
    finally:
        watcher.close()


def test_watcher_changes_are_the_batches_after_the_first_watching_line() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    watcher = reloader.Watcher(0, read_fd)
    try:
        assert watcher.changes() == (False, [], False)  # nothing written yet
        line = f"{reloader.WATCHING}\n{reloader.CHANGED}app.py\n{reloader.CHANGED}a.py, b.py\n"
        os.write(write_fd, line.encode())
        assert watcher.changes() == (True, ["app.py", "a.py, b.py"], False)
        os.close(write_fd)
        assert watcher.changes() == (False, [], True)  # the watcher is gone
    finally:
        watcher.close()


# ------------------------------------------------------------------ TLS contexts
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("127.0.0.1")
    paths = {
        name: str(folder / f"{name}.pem") for name in ("cert", "key", "both", "other", "ca", "enc")
    }
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    cert.private_key_and_cert_chain_pem.write_to_path(paths["both"])
    other.private_key_pem.write_to_path(paths["other"])
    ca.cert_pem.write_to_path(paths["ca"])
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    Path(paths["enc"]).write_bytes(encrypted)
    return paths


def test_tls_context(certs: dict[str, str]) -> None:
    context = tls.server_context(
        Config(
            ssl_certfile=certs["cert"],
            ssl_keyfile=certs["enc"],
            ssl_keyfile_password="secret",
            ssl_ca_certs=certs["ca"],
            ssl_cert_reqs=1,  # type: ignore[arg-type]
            ssl_ciphers="ECDHE+AESGCM",
        )
    )
    assert context.verify_mode is ssl.CERT_OPTIONAL
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all("GCM" in name and name.startswith("ECDHE") for name in tls12)
    tls.server_context(Config(ssl_certfile=certs["both"]))  # key inside the cert file


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"ssl_certfile": "{missing}"}, r"cannot read --ssl-certfile .*ENOENT"),
        ({"ssl_certfile": "{cert}", "ssl_keyfile": "{missing}"}, r"cannot read --ssl-keyfile"),
        ({"ssl_certfile": "{cert}"}, "no PEM private key found"),
        (
            {"ssl_certfile": "{cert}", "ssl_keyfile": "{other}"},
            "does not belong to the certificate",
        ),
        (
            {"ssl_certfile": "{cert}", "ssl_keyfile": "{enc}"},
            "is encrypted: give --ssl-keyfile-password",
        ),
        (
            {"ssl_certfile": "{cert}", "ssl_keyfile": "{enc}", "ssl_keyfile_password": "nope"},
            "wrong --ssl-keyfile-password",
        ),
        (
            {"ssl_certfile": "{both}", "ssl_ciphers": "NO-SUCH-CIPHER"},
            "invalid --ssl-ciphers 'NO-SUCH-CIPHER'",
        ),
        (
            {"ssl_certfile": "{both}", "ssl_ca_certs": "{key}", "ssl_cert_reqs": 2},
            "cannot load --ssl-ca-certs",
        ),
    ],
)
def test_tls_errors_are_config_errors(
    certs: dict[str, str], tmp_path: Path, fields: dict[str, Any], why: str
) -> None:
    paths = {**certs, "missing": str(tmp_path / "missing.pem")}
    config = Config(
        **{k: v.format(**paths) if isinstance(v, str) else v for k, v in fields.items()}
    )
    with pytest.raises(ConfigError, match=why) as info:
        tls.check(config)
    assert info.value.exit_code == 2


def test_default_bind_is_untouched_by_the_new_kinds() -> None:
    assert Config().binds == (parse_bind(DEFAULT_BIND),)
