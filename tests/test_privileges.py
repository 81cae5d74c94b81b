"""--user / --group: resolved in the master, dropped in each worker after bind."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest
from support import REPO_ROOT, Server, proc_info, run_serve

from reuseport.errors import ExitCode

pytestmark = pytest.mark.e2e  # every test runs `reuseport serve`


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return run_serve("-b", "127.0.0.1:0", "-w", "1", *args, cwd=REPO_ROOT, timeout=30)


def test_unknown_user_is_a_usage_error() -> None:
    result = _serve("--user", "no-such-user-here")
    assert result.returncode == ExitCode.USAGE
    assert "--user 'no-such-user-here': no such user" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_group_is_a_usage_error() -> None:
    result = _serve("--group", "no-such-group-here")
    assert result.returncode == ExitCode.USAGE
    assert "no such group" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may switch users")
def test_switching_user_needs_root() -> None:
    result = _serve("--user", "root")
    assert result.returncode == ExitCode.USAGE
    assert "need the server to be started as root" in result.stderr


def _world_readable_python() -> bool:
    """Can an unprivileged user import this Python's stdlib and this checkout?"""
    for top in (os.path.dirname(os.__file__), REPO_ROOT):
        path = os.path.abspath(top)
        while True:
            if not os.stat(path).st_mode & 0o005:
                return False
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.skipif(
    not _world_readable_python(),
    reason="this Python or checkout lives under a folder `nobody` cannot read",
)
def test_workers_drop_to_the_named_user() -> None:
    nobody = pwd.getpwnam("nobody")
    with Server("-w", "2", "--user", "nobody", "--mode", "reuseport") as server:
        server.wait_ready()
        status, _body = server.request("/")
        assert status == 200
        assert proc_info(server.pid) is not None
        for pid in server.worker_pids():
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                uids = next(line for line in fh if line.startswith("Uid:")).split()[1:]
            assert uids == [str(nobody.pw_uid)] * 4
