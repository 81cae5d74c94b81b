"""The command line: every ``serve`` flag reaches its Config field; file < env < flag.

``build_config`` is pure apart from reading the TOML file, so most of this runs
in process; only ``--help``, an unknown flag and ``probe --json`` run
``python -m reuseport`` for real.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import child_env

from reuseport.cli import build_config, env_warnings, main, make_parser
from reuseport.config import (
    CertReqs,
    Config,
    FdBind,
    Interface,
    Lifespan,
    LoopKind,
    Mode,
    ProcessManager,
    SteeringKind,
    UnixBind,
    WebSocketKind,
    parse_bind,
)
from reuseport.errors import ConfigError

DYNAMIC = ("--pm", "dynamic", "--max-workers", "8")

# (command line after `serve`, Config field, expected value)
FLAG_CASES: list[tuple[tuple[str, ...], str, object]] = [
    (("web:app",), "app", "web:app"),
    (("-b", "127.0.0.1:9000"), "binds", (parse_bind("127.0.0.1:9000"),)),
    (
        ("--bind", "127.0.0.1:9001", "--bind", "[::1]:9002"),
        "binds",
        (parse_bind("127.0.0.1:9001"), parse_bind("[::1]:9002")),
    ),
    (("-b", "udp://127.0.0.1:9003"), "binds", (parse_bind("udp://127.0.0.1:9003"),)),
    (("--mode", "shared"), "mode", Mode.SHARED),
    (("--mode", "reuseport"), "mode", Mode.REUSEPORT),
    (("--backlog", "16"), "backlog", 16),
    (("--steering", "load"), "steering", SteeringKind.LOAD),
    (("--steering", "p2c"), "steering", SteeringKind.P2C),
    (("--steering", "hash"), "steering", SteeringKind.HASH),
    (("--no-rescue",), "rescue", False),
    (("--rescue",), "rescue", True),
    (("--interface", "socket"), "interface", Interface.SOCKET),
    (("--app-dir", "src"), "app_dir", "src"),
    (
        ("--datagram-app", "echo:Echo", "-b", "udp://127.0.0.1:9004", "-b", "127.0.0.1:9005"),
        "datagram_app",
        "echo:Echo",
    ),
    (("--loop", "asyncio"), "loop", LoopKind.ASYNCIO),
    (("--lifespan", "off"), "lifespan", Lifespan.OFF),
    (("--root-path", "/api"), "root_path", "/api"),
    (("-w", "3"), "workers", 3),
    (("--workers", "5"), "workers", 5),
    (("--pm", "ondemand", "--max-workers", "4"), "pm", ProcessManager.ONDEMAND),
    (("-w", "1", "--max-workers", "6"), "max_workers", 6),
    ((*DYNAMIC, "--start-workers", "3"), "start_workers", 3),
    ((*DYNAMIC, "--min-spare", "2"), "min_spare", 2),
    ((*DYNAMIC, "--max-spare", "4"), "max_spare", 4),
    (("--idle-timeout", "2.5"), "idle_timeout", 2.5),
    (("--max-spawn-rate", "4"), "max_spawn_rate", 4),
    (("--max-requests", "100"), "max_requests", 100),
    (("--max-requests-jitter", "10"), "max_requests_jitter", 10),
    (("--timeout", "0"), "timeout", 0.0),
    (("--graceful-timeout", "7.5"), "graceful_timeout", 7.5),
    (("--limit-concurrency", "50"), "limit_concurrency", 50),
    (("--timeout-keep-alive", "2"), "timeout_keep_alive", 2.0),
    (("--header-read-timeout", "3"), "header_read_timeout", 3.0),
    (("--body-read-timeout", "0"), "body_read_timeout", 0.0),
    (
        ("--forwarded-allow-ips", "10.0.0.1,10.0.0.2"),
        "forwarded_allow_ips",
        ("10.0.0.1", "10.0.0.2"),
    ),
    (("--proxy-protocol",), "proxy_protocol", True),
    (("--no-proxy-protocol",), "proxy_protocol", False),
    (("--no-server-header",), "server_header", False),
    (("--server-header",), "server_header", True),
    (("--no-date-header",), "date_header", False),
    (("--date-header",), "date_header", True),
    (("--limit-request-line", "100"), "limit_request_line", 100),
    (("--limit-request-fields", "10"), "limit_request_fields", 10),
    (("--limit-request-field-size", "200"), "limit_request_field_size", 200),
    (("--pid", "/run/rp.pid"), "pid_file", "/run/rp.pid"),
    (("--control", "/run/rp.sock"), "control", "/run/rp.sock"),
    (("--metrics", "0.0.0.0:9100"), "metrics", parse_bind("0.0.0.0:9100")),
    (("--upgrade-timeout", "90"), "upgrade_timeout", 90.0),
    (("--user", "nobody"), "user", "nobody"),
    (("--group", "nogroup"), "group", "nogroup"),
    (("--access-log",), "access_log", True),
    (("--no-access-log",), "access_log", False),
    (("--log-level", "debug"), "log_level", "debug"),
    (("--name", "shop"), "proc_name", "shop"),
    (("--ws", "none"), "ws", WebSocketKind.NONE),
    (("--ws", "websockets"), "ws", WebSocketKind.WEBSOCKETS),
    (("--ws-max-size", "1024"), "ws_max_size", 1024),
    (("--ws-max-queue", "4"), "ws_max_queue", 4),
    (("--ws-ping-interval", "0"), "ws_ping_interval", 0.0),
    (("--ws-ping-timeout", "2.5"), "ws_ping_timeout", 2.5),
    (("--ws-per-message-deflate", "false"), "ws_per_message_deflate", False),
    (("--ws-per-message-deflate",), "ws_per_message_deflate", True),
    (("--no-ws-per-message-deflate",), "ws_per_message_deflate", False),
    # uvicorn's and gunicorn's spellings
    (("--host", "0.0.0.0"), "binds", (parse_bind("0.0.0.0:8000"),)),
    (("--port", "9003"), "binds", (parse_bind("127.0.0.1:9003"),)),
    (("--host", "::1", "--port", "9004"), "binds", (parse_bind("[::1]:9004"),)),
    (("--uds", "/run/rp.sock"), "binds", (UnixBind(path="/run/rp.sock"),)),
    (
        ("-b", "127.0.0.1:0", "--uds", "/run/rp.sock"),
        "binds",
        (parse_bind("127.0.0.1:0"), UnixBind(path="/run/rp.sock")),
    ),
    (("-b", "unix:/tmp/a.sock"), "binds", (UnixBind(path="/tmp/a.sock"),)),
    (("-b", "fd://3"), "binds", (FdBind(fd=3),)),
    (("--fd", "4"), "binds", (FdBind(fd=4),)),
    (("--uds-mode", "660"), "uds_mode", 0o660),
    (("--keep-alive", "3"), "timeout_keep_alive", 3.0),
    (("--limit-max-requests", "50"), "max_requests", 50),
    (("--timeout-graceful-shutdown", "4"), "graceful_timeout", 4.0),
    (("-t", "12"), "timeout", 12.0),
    (("-p", "/run/x.pid"), "pid_file", "/run/x.pid"),
    (("-u", "nobody", "-g", "nogroup"), "user", "nobody"),
    (("-n", "web"), "proc_name", "web"),
    (("--certfile", "c.pem", "--keyfile", "k.pem"), "ssl_keyfile", "k.pem"),
    (
        ("--certfile", "c.pem", "--ca-certs", "ca.pem", "--cert-reqs", "1", "--ciphers", "HIGH"),
        "ssl_cert_reqs",
        CertReqs.OPTIONAL,
    ),
    # TLS
    (("--ssl-certfile", "c.pem"), "ssl_certfile", "c.pem"),
    (("--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"), "ssl_keyfile", "k.pem"),
    (
        ("--ssl-certfile", "c.pem", "--ssl-keyfile-password", "pw"),
        "ssl_keyfile_password",
        "pw",
    ),
    (("--ssl-certfile", "c.pem", "--ssl-ca-certs", "ca.pem"), "ssl_ca_certs", "ca.pem"),
    (
        ("--ssl-certfile", "c.pem", "--ssl-ca-certs", "ca.pem", "--ssl-cert-reqs", "2"),
        "ssl_cert_reqs",
        CertReqs.REQUIRED,
    ),
    (("--ssl-certfile", "c.pem", "--ssl-ciphers", "ECDHE+AESGCM"), "ssl_ciphers", "ECDHE+AESGCM"),
    # application
    (("--factory",), "factory", True),
    (("--no-factory",), "factory", False),
    (("--env-file", ".env"), "env_file", ".env"),
    (("--threads", "16"), "threads", 16),
    (("--interface", "wsgi"), "interface", Interface.WSGI),
    (
        ("--header", "X-Frame-Options:DENY", "--header", "X-A: b c"),
        "headers",
        (("X-Frame-Options", "DENY"), ("X-A", "b c")),
    ),
    # logging
    (("--access-logfile", "-"), "access_logfile", "-"),
    (("--access-log-format", "%(h)s %(s)s"), "access_log_format", "%(h)s %(s)s"),
    (("--access-logformat", "%(r)s"), "access_log_format", "%(r)s"),
    (("--error-logfile", "/tmp/e.log"), "error_logfile", "/tmp/e.log"),
    (("--log-file", "/tmp/f.log"), "error_logfile", "/tmp/f.log"),
    (("--log-config", "log.json"), "log_config", "log.json"),
    (("--capture-output", "--error-logfile", "/tmp/e.log"), "capture_output", True),
    (("--no-capture-output",), "capture_output", False),
    (("--reload-delay", "0.25"), "reload_delay", 0.25),
    (("-e", "A=1", "--env", "B=x=y"), "env", ("A=1", "B=x=y")),
    (("--chdir", "/srv/app"), "chdir", "/srv/app"),
    (("--pythonpath", "a, b", "--pythonpath", "c"), "pythonpath", ("a", "b", "c")),
    (("--limit-request-field_size", "100"), "limit_request_field_size", 100),
    (("--cpu-affinity",), "cpu_affinity", True),
    (("--no-cpu-affinity",), "cpu_affinity", False),
    (("--log-level", "trace"), "log_level", "trace"),
    # development
    (("--reload",), "reload", True),
    (("--no-reload",), "reload", False),
    (("--reload-dir", "src", "--reload-dir", "lib"), "reload_dirs", ("src", "lib")),
    (("--reload-include", "*.html"), "reload_includes", ("*.html",)),
    (("--reload-exclude", "tests/*"), "reload_excludes", ("tests/*",)),
]

# Fields a case may move besides its own (a flag that needs another, or implies one).
ALSO_SET: dict[str, set[str]] = {
    "ssl_keyfile": {"ssl_certfile"},
    "ssl_keyfile_password": {"ssl_certfile"},
    "ssl_ca_certs": {"ssl_certfile"},
    "ssl_cert_reqs": {"ssl_certfile", "ssl_ca_certs", "ssl_ciphers"},
    "user": {"group"},
    "ssl_ciphers": {"ssl_certfile"},
    "access_logfile": {"access_log"},
    "capture_output": {"error_logfile"},
    "datagram_app": {"binds"},
}


def _serve_parser() -> argparse.ArgumentParser:
    for action in make_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices["serve"]
            return parser
    raise AssertionError("no serve subcommand")


def _config(*argv: str, environ: dict[str, str] | None = None) -> Config:
    args = make_parser().parse_args(["serve", *argv])
    return build_config(args, environ={} if environ is None else environ)


@pytest.mark.parametrize(
    ("argv", "field", "expected"), FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES]
)
def test_flag_sets_its_field(argv: tuple[str, ...], field: str, expected: object) -> None:
    config = _config(*argv)
    assert getattr(config, field) == expected
    # Nothing else the case did not mention moved away from its default.
    default = Config(workers=config.workers, pm=config.pm, max_workers=config.max_workers)
    touched = {field, "workers", "pm", "max_workers", *ALSO_SET.get(field, ())}
    for name in Config.field_names():
        if name not in touched:
            assert getattr(config, name) == getattr(default, name), name


def test_every_serve_flag_has_a_case() -> None:
    covered = {arg for argv, _, _ in FLAG_CASES for arg in argv if arg.startswith("-")}
    missing = []
    for action in _serve_parser()._actions:
        # Actions, not settings: --check-config and --print-config are tested in test_preflight.
        if not action.option_strings or action.dest in {
            "help",
            "config_file",
            "check_config",
            "print_config",
        }:
            continue
        if not covered & set(action.option_strings):
            missing.append("/".join(action.option_strings))
    assert not missing, f"serve flags without a FLAG_CASES entry: {missing}"


def test_no_flags_gives_the_defaults() -> None:
    config = _config()
    default = Config()
    for name in Config.field_names():
        assert getattr(config, name) == getattr(default, name), name


# ------------------------------------------------------------------ file < env < flag
def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_file_then_env_then_flag(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "rp.toml",
        'workers = 2\ngraceful-timeout = 5\nbind = "127.0.0.1:7001"\nmode = "shared"\n'
        "access_log = true\nbody-read-timeout = 4\n",
    )
    env = {"REUSEPORT_WORKERS": "3", "REUSEPORT_BIND": "127.0.0.1:7002, [::1]:7003"}
    file_only = _config("--config", toml)
    assert file_only.workers == 2
    assert file_only.binds == (parse_bind("127.0.0.1:7001"),)
    assert file_only.graceful_timeout == 5
    assert file_only.mode is Mode.SHARED
    assert file_only.access_log is True
    assert file_only.body_read_timeout == 4

    with_env = _config("--config", toml, environ=env)
    assert with_env.workers == 3  # env beats the file
    assert with_env.binds == (parse_bind("127.0.0.1:7002"), parse_bind("[::1]:7003"))
    assert with_env.graceful_timeout == 5  # the file still counts where env is silent

    with_flag = _config("--config", toml, "-w", "4", "--mode", "reuseport", environ=env)
    assert with_flag.workers == 4  # the flag beats env and file
    assert with_flag.mode is Mode.REUSEPORT
    assert with_flag.binds == with_env.binds


def test_config_file_from_env_and_serve_table(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "rp.toml",
        '[serve]\nbind = ["127.0.0.1:7004", "127.0.0.1:7005"]\nname = "shop"\npid = "/tmp/x"\n',
    )
    config = _config(environ={"REUSEPORT_CONFIG": toml})
    assert config.binds == (parse_bind("127.0.0.1:7004"), parse_bind("127.0.0.1:7005"))
    assert config.proc_name == "shop"
    assert config.pid_file == "/tmp/x"


@pytest.mark.parametrize(
    ("name", "text", "field", "expected"),
    [
        ("REUSEPORT_GRACEFUL_TIMEOUT", "2.5", "graceful_timeout", 2.5),
        ("REUSEPORT_ACCESS_LOG", "yes", "access_log", True),
        ("REUSEPORT_SERVER_HEADER", "off", "server_header", False),
        ("REUSEPORT_MODE", "shared", "mode", Mode.SHARED),
        ("REUSEPORT_LOG_LEVEL", "WARNING", "log_level", "warning"),
        ("REUSEPORT_NAME", "shop", "proc_name", "shop"),
        ("REUSEPORT_PID", "/tmp/rp.pid", "pid_file", "/tmp/rp.pid"),
        ("REUSEPORT_LIMIT_CONCURRENCY", "7", "limit_concurrency", 7),
        ("REUSEPORT_WS", "none", "ws", WebSocketKind.NONE),
        ("REUSEPORT_WS_MAX_SIZE", "4096", "ws_max_size", 4096),
        ("REUSEPORT_WS_PING_INTERVAL", "1.5", "ws_ping_interval", 1.5),
        ("REUSEPORT_WS_PER_MESSAGE_DEFLATE", "no", "ws_per_message_deflate", False),
        ("REUSEPORT_BODY_READ_TIMEOUT", "12.5", "body_read_timeout", 12.5),
    ],
)
def test_env_values_are_typed(name: str, text: str, field: str, expected: object) -> None:
    assert getattr(_config(environ={name: text}), field) == expected


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("wokers = 2\n", {}, r"unknown option 'wokers' \(did you mean 'workers'\?\)"),
        ("workers = \n", {}, r"is not valid TOML"),
        ("", {"REUSEPORT_WORKERS": "many"}, r"REUSEPORT_WORKERS: cannot parse 'many'"),
        ("", {"REUSEPORT_ACCESS_LOG": "perhaps"}, r"cannot parse 'perhaps' as a boolean"),
        ("workers = 0\n", {}, r"invalid --workers 0"),
        ('ws = "wsproto"\n', {}, r"invalid ws 'wsproto': choose one of auto, none, websockets"),
        ("ws-max-queue = 0\n", {}, r"invalid --ws-max-queue 0"),
        ("ws-ping-timeout = -1\n", {}, r"invalid --ws-ping-timeout -1"),
    ],
)
def test_bad_file_or_env(tmp_path: Path, toml: str, environ: dict[str, str], message: str) -> None:
    path = _write(tmp_path / "rp.toml", toml)
    with pytest.raises(ConfigError, match=message):
        _config("--config", path, environ=environ)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"REUSEPORT_ACCESS_LOG": "maybe"},
            "REUSEPORT_ACCESS_LOG: cannot parse 'maybe' as a boolean: use true or false",
        ),
        ({"REUSEPORT_WORKERS": "many"}, "REUSEPORT_WORKERS: cannot parse 'many' as an integer"),
        ({"REUSEPORT_GRACEFUL_TIMEOUT": "soon"}, "REUSEPORT_GRACEFUL_TIMEOUT: cannot parse 'soon'"),
        ({"REUSEPORT_WORKERS": "0"}, "REUSEPORT_WORKERS: invalid --workers 0"),
        ({"REUSEPORT_MODE": "fast"}, "REUSEPORT_MODE: invalid mode 'fast'"),
        ({"REUSEPORT_BIND": "nonsense"}, "REUSEPORT_BIND: cannot parse bind 'nonsense'"),
    ],
)
def test_env_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(environ=environ)
    assert str(caught.value).startswith(message), caught.value


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "rp.toml", "max-spawn-rate = 0\n")
    with pytest.raises(ConfigError) as caught:
        _config("--config", path)
    assert str(caught.value).startswith(f"config file {path!r}, max-spawn-rate: invalid")


def test_a_bad_flag_is_not_blamed_on_the_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        _config("-w", "0", environ={"REUSEPORT_WORKERS": "0"})
    assert str(caught.value).startswith("invalid --workers 0"), caught.value


def test_unknown_env_variables_are_warned_with_the_nearest_name() -> None:
    environ = {
        "REUSEPORT_WORKRES": "3",
        "REUSEPORT_ACESS_LOG": "1",
        "REUSEPORT_XYZZY": "1",
        "REUSEPORT_WORKERS": "2",  # valid ones are not warned about
        "REUSEPORT_PORT": "8001",
        "REUSEPORT_LIMIT_MAX_REQUESTS": "5",
        "REUSEPORT_CONFIG": "",  # no file, but not an unknown variable either
        "NOT_OURS": "1",
    }
    assert env_warnings(environ) == [
        "REUSEPORT_ACESS_LOG is not a reuseport setting, ignored "
        "(did you mean REUSEPORT_ACCESS_LOG?)",
        "REUSEPORT_WORKRES is not a reuseport setting, ignored (did you mean REUSEPORT_WORKERS?)",
        "REUSEPORT_XYZZY is not a reuseport setting, ignored (a variable is REUSEPORT_ and a "
        "long flag's name, e.g. REUSEPORT_WORKERS)",
    ]
    # Ignored, not refused: the rest of the environment still counts.
    assert _config(environ=environ).workers == 2


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        _config("--config", str(tmp_path / "nope.toml"))


def test_main_turns_config_errors_into_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "reuseport: error: invalid --workers 0" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ real processes
def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reuseport", *argv],
        capture_output=True,
        env=child_env(),
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("argv", [("--help",), ("serve", "--help"), ("probe", "--help")])
@pytest.mark.e2e
def test_help_exits_0(argv: tuple[str, ...]) -> None:
    result = _run(*argv)
    assert result.returncode == 0, result.stderr
    assert "usage: reuseport" in result.stdout


@pytest.mark.e2e
def test_serve_help_lists_the_contract_flags() -> None:
    out = _run("serve", "--help").stdout
    for flag in ("--bind", "--workers", "--mode", "--interface", "--graceful-timeout", "--config"):
        assert flag in out


@pytest.mark.e2e
def test_unknown_flag_exits_2() -> None:
    result = _run("serve", "--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.e2e
def test_no_command_prints_usage_and_exits_2() -> None:
    result = _run()
    assert result.returncode == 2
    assert "usage: reuseport" in result.stderr


@pytest.mark.e2e
def test_serve_warns_about_a_misspelled_variable_and_goes_on() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "reuseport", "serve", "no_such_module_4242:app"),
            *("-b", "127.0.0.1:0", "--mode", "shared", "-w", "1"),
        ],
        capture_output=True,
        env=child_env({"REUSEPORT_WORKRES": "3"}),
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 4, result.stderr  # it started: the app import failed
    assert (
        "WARNING REUSEPORT_WORKRES is not a reuseport setting, ignored "
        "(did you mean REUSEPORT_WORKERS?)" in result.stderr
    )


@pytest.mark.e2e
def test_probe_json() -> None:
    result = _run("probe", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"kernel", "features", "recommended_mode"} <= set(report)
    assert report["recommended_mode"] in {"reuseport", "shared"}
    assert report["features"], "no features probed"
    assert all({"name", "supported"} <= set(f) for f in report["features"])


def test_websocket_options_from_the_toml_file(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "rp.toml",
        '[serve]\nws = "none"\nws-max-size = 2048\nws-max-queue = 8\nws-ping-interval = 5\n'
        "ws-ping-timeout = 2\nws-per-message-deflate = false\n",
    )
    config = _config("--config", toml)
    assert config.ws is WebSocketKind.NONE
    assert (config.ws_max_size, config.ws_max_queue) == (2048, 8)
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (5, 2)
    assert config.ws_per_message_deflate is False
