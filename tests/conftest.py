"""Session-wide test rules.

Rules: the tests exercise the working tree (``support`` puts the folder above
this one first on ``sys.path``, whatever the installed copy says).  A test must not
leave a child process behind.  After each test the
autouse fixture below waits (bounded) for the test process's children to go
away and fails the test naming any that remain, then kills them so the next
test starts clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest
from support import children_of, proc_info, wait_until

_LEFTOVER_TIMEOUT = 5.0


def _describe(pids: list[int]) -> str:
    parts = []
    for pid in pids:
        info = proc_info(pid)
        parts.append(f"{pid} ({info.comm if info else 'gone'})")
    return ", ".join(parts)


@pytest.fixture(autouse=True)
def no_child_left_behind() -> Iterator[None]:
    """Fail a test after which the test process still has child processes (zombies too)."""
    before = set(children_of(os.getpid(), include_zombies=True))
    yield
    me = os.getpid()

    def new_children() -> list[int]:
        return [pid for pid in children_of(me, include_zombies=True) if pid not in before]

    try:
        wait_until(lambda: not new_children(), timeout=_LEFTOVER_TIMEOUT)
    except AssertionError:
        left = new_children()
        if not left:  # they went away between the check and now
            return
        names = _describe(left)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # SIGKILLed (or a zombie already): reaping is immediate
        pytest.fail(f"child processes left behind after the test: {names}", pytrace=False)
