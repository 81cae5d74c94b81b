"""``pidfile.py``: written at start, removed at exit only while it still names us."""

from __future__ import annotations

from pathlib import Path

import pytest

from reuseport.errors import BootError, ExitCode
from reuseport.pidfile import PidFile


def test_write_then_remove(tmp_path: Path) -> None:
    path = tmp_path / "rp.pid"
    pidfile = PidFile(str(path), 4321)
    pidfile.write()
    assert path.read_text() == "4321\n"
    assert pidfile.names_us()
    pidfile.remove()
    assert not path.exists()


def test_a_file_another_master_took_over_is_left_alone(tmp_path: Path) -> None:
    """What a binary upgrade needs: the new master's pid file survives the old master."""
    path = tmp_path / "rp.pid"
    old = PidFile(str(path), 100)
    old.write()
    PidFile(str(path), 200).write()
    old.remove()
    assert path.read_text() == "200\n"


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_means_no_file(path: str | None, tmp_path: Path) -> None:
    pidfile = PidFile(path, 1)
    pidfile.write()
    pidfile.remove()
    assert not pidfile.names_us()
    assert list(tmp_path.iterdir()) == []


def test_removing_a_missing_file_is_quiet(tmp_path: Path) -> None:
    PidFile(str(tmp_path / "gone.pid"), 1).remove()


def test_an_unwritable_path_is_a_boot_error_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "rp.pid"
    with pytest.raises(BootError) as info:
        PidFile(str(path), 1).write()
    message = str(info.value)
    assert str(path) in message
    assert "ENOENT" in message
    assert "--pid" in message
    assert info.value.exit_code is ExitCode.BOOT_ERROR
