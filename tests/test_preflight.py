"""``--check-config``, ``--print-config`` and the default worker count under a CPU limit.

Rules: ``--print-config`` and the worker default are checked in this
process (``main`` returns before logging is set up or anything is bound);
``--check-config`` runs as a real ``python -m reuseport`` process, because it
imports the app, and must bind nothing: it is run on an address this test
already listens on, where any bind would fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest
from support import REPO_ROOT, run_serve

from reuseport.cli import apply_cpu_limit, build_config_with_sources, main, make_parser
from reuseport.config import Config

TESTS_DIR = str(Path(__file__).resolve().parent)


# ------------------------------------------------------------------ the worker default
def _sources(*argv: str) -> tuple[Config, dict[str, str]]:
    return build_config_with_sources(make_parser().parse_args(["serve", *argv]), environ={})


def test_the_default_worker_count_follows_the_cpu_limit() -> None:
    config, sources = _sources()
    config, line = apply_cpu_limit(config, sources, limit=2.0, usable=8)
    assert config.workers == 2
    assert line == "2 workers: cgroup CPU limit 2 of 8 CPUs"
    assert sources["workers"] == "default: cgroup CPU limit 2 of 8 CPUs"
    config, sources = _sources()
    config, line = apply_cpu_limit(config, sources, limit=None, usable=3)
    assert (config.workers, line) == (3, "3 workers: 3 usable CPUs")


def test_a_worker_count_that_was_given_stays() -> None:
    config, sources = _sources("-w", "5")
    config, line = apply_cpu_limit(config, sources, limit=1.0, usable=8)
    assert (config.workers, line) == (5, None)
    assert sources["workers"] == "flag"


# ------------------------------------------------------------------ --print-config
def test_print_config_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "rp.toml"
    conf.write_text('[serve]\ntimeout = 12\nbacklog = 32\nheader = ["X-A: 1"]\n')
    for key in [k for k in os.environ if k.startswith("REUSEPORT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("REUSEPORT_BACKLOG", "64")
    monkeypatch.setenv("REUSEPORT_PORT", "9000")
    argv = ["serve", "web:app", "-w", "3", "--config", str(conf), "--ssl-certfile", "c.pem"]
    argv += ["--ssl-keyfile-password", "secret", "--uds-mode", "660"]
    code = main([*argv, "--print-config"])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.split(" ", 1)[0]: line for line in out.splitlines() if "=" in line}
    assert lines["workers"] == "workers = 3  # flag"
    assert lines["app"] == 'app = "web:app"  # flag'
    assert lines["backlog"] == "backlog = 64  # environment (REUSEPORT_BACKLOG)"
    assert lines["binds"] == 'binds = ["127.0.0.1:9000"]  # environment (REUSEPORT_PORT)'
    assert lines["timeout"] == f"timeout = 12  # file ({conf})"
    assert lines["graceful_timeout"] == "graceful_timeout = 30.0  # default"
    assert lines["uds_mode"] == 'uds_mode = "660"  # flag'
    assert "secret" not in out
    assert "# ssl_keyfile_password = (hidden)  # flag" in out
    assert "# pid_file is not set  # default" in out
    # It is a config file: read back, it gives the same settings.
    table = tomllib.loads(out)["serve"]
    again = tmp_path / "again.toml"
    again.write_text(out)
    config, _ = build_config_with_sources(
        make_parser().parse_args(["serve", "--config", str(again)]), environ={}
    )
    original, _ = build_config_with_sources(
        make_parser().parse_args(argv),
        environ={"REUSEPORT_BACKLOG": "64", "REUSEPORT_PORT": "9000"},
    )
    differ = [
        name for name in Config.field_names() if getattr(config, name) != getattr(original, name)
    ]
    assert differ == ["ssl_keyfile_password"], differ  # hidden, so not carried over
    assert table["headers"] == ["X-A: 1"]


def test_print_config_with_a_bad_setting_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "0", "--print-config"]) == 2
    assert "--workers" in capsys.readouterr().err


# ------------------------------------------------------------------ --check-config
def _check(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_serve(*argv, "--check-config", cwd=tmp_path)


@pytest.mark.e2e
def test_check_config_imports_the_app_and_binds_nothing(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("async def app(scope, receive, send):\n    pass\n")
    with socket.socket() as taken:  # any bind on this address would fail
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for mode in ("reuseport", "shared"):
            done = _check(
                "good:app",
                "--app-dir",
                str(tmp_path),
                "-b",
                f"127.0.0.1:{port}",
                "--mode",
                mode,
                tmp_path=tmp_path,
            )
            assert done.returncode == 0, done.stderr
            assert "configuration OK: good:app is asgi" in done.stdout
            assert "nothing was bound" in done.stdout
    assert not any(tmp_path.glob("*.sock"))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("source", "argv", "code", "message"),
    [
        ("raise RuntimeError('broken at import')\n", ("bad:app",), 4, "broken at import"),
        ("app = 42\n", ("bad:app",), 4, "is not callable"),
        ("", ("bad:nothing",), 4, "has no attribute"),
        ("", ("missing:app",), 4, "no module named 'missing'"),
        ("", ("--ssl-keyfile", "k.pem"), 2, "without --ssl-certfile"),
        ("", ("--workers", "zero"), 2, "invalid int value"),
        ("", ("--no-such-flag",), 2, "unrecognized arguments"),
        ("", ("--metrics", "unix:/x"), 2, "expected HOST:PORT"),
        ("", ("--env-file", "nowhere.env"), 2, "nowhere.env"),
        (
            "raise RuntimeError('broken at import')\n",
            ("-b", "udp://127.0.0.1:0", "-b", "127.0.0.1:0", "--datagram-app", "bad:app"),
            4,
            "broken at import",
        ),
        (
            "async def app(scope, receive, send):\n    pass\n",
            ("bad:app", "-b", "udp://127.0.0.1:0"),
            5,
            "cannot serve udp:// binds",
        ),
    ],
)
def test_check_config_exit_codes(
    tmp_path: Path, source: str, argv: tuple[str, ...], code: int, message: str
) -> None:
    (tmp_path / "bad.py").write_text(source)
    done = _check(*argv, "--app-dir", str(tmp_path), tmp_path=tmp_path)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "configuration OK" not in done.stdout


@pytest.mark.e2e
def test_check_config_builds_the_datagram_app_too(tmp_path: Path) -> None:
    (tmp_path / "dgram.py").write_text(
        "import asyncio\n\n\nclass Echo(asyncio.DatagramProtocol):\n    pass\n"
    )
    binds = ("-b", "127.0.0.1:0", "-b", "udp://127.0.0.1:0")
    done = _check(
        *binds, "--datagram-app", "dgram:Echo", "--app-dir", str(tmp_path), tmp_path=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "demo with --datagram-app dgram:Echo is protocol+datagram" in done.stdout


@pytest.mark.e2e
def test_check_config_of_the_demo_app() -> None:
    done = run_serve("--check-config", "-w", "2", cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "configuration OK: demo is protocol" in done.stdout
    assert "2 workers (static pool)" in done.stdout
