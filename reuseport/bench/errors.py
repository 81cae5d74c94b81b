"""The one error the benchmark raises on purpose."""

from __future__ import annotations

from ..errors import ExitCode, ReuseportError

__all__ = ["BenchError", "MissingToolError"]


class BenchError(ReuseportError):
    """The benchmark could not run: the server under test or a client failed."""

    exit_code = ExitCode.ERROR


class MissingToolError(BenchError):
    """An optional tool (wrk, matplotlib) was asked for and is not installed."""

    exit_code = ExitCode.USAGE
