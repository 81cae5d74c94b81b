"""Worker handles for tests that drive the master's bookkeeping without processes.

    handle = handle_in(WorkerState.READY, channel, pid=11, slot=0)

The state is set directly, not through ``to()``: it is the starting point of
a test, not a move under test.  The channel is the caller's (a socketpair it
closes).
"""

from __future__ import annotations

import socket

from reuseport.lifecycle import SpawnCause, WorkerHandle, WorkerState


def handle_in(
    state: WorkerState,
    channel: socket.socket,
    *,
    pid: int = 4242,
    slot: int = 0,
    started: float = 0.0,
    cause: SpawnCause = SpawnCause.START,
    last_busy: float = 0.0,
) -> WorkerHandle:
    handle = WorkerHandle(
        pid=pid,
        slot=slot,
        generation=1,
        row=slot,
        channel=channel,
        started=started,
        cause=cause,
        last_busy=last_busy,
    )
    handle.state = state
    return handle
