"""``reuseport.errors``: exit codes and the errno names every message uses."""

from __future__ import annotations

import errno

import pytest

from reuseport.errors import (
    AppLoadError,
    BindError,
    BootError,
    ConfigError,
    ExitCode,
    PlatformError,
    PortGuardError,
    errno_name,
)


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), "EADDRINUSE"),
        (PermissionError(errno.EACCES, "Permission denied"), "EACCES"),
        (OSError(99999, "made up"), "errno 99999"),
        (TimeoutError(), "TimeoutError"),
    ],
)
def test_errno_name(exc: OSError, name: str) -> None:
    assert errno_name(exc) == name


def test_errno_name_of_a_real_failure() -> None:
    with pytest.raises(FileNotFoundError) as info:
        open("/nonexistent/folder/file")  # noqa: SIM115 - it must fail, not open
    assert errno_name(info.value) == "ENOENT"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError, ExitCode.USAGE),
        (BindError, ExitCode.BIND_ERROR),
        (PortGuardError, ExitCode.BIND_ERROR),
        (AppLoadError, ExitCode.APP_LOAD_ERROR),
        (BootError, ExitCode.BOOT_ERROR),
        (PlatformError, ExitCode.PLATFORM_ERROR),
    ],
)
def test_each_error_says_whose_fault_through_its_exit_code(
    error: type[Exception], code: ExitCode
) -> None:
    assert error("x").exit_code == code  # type: ignore[attr-defined]
