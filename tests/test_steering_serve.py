"""--steering load end to end: a stalled worker stops receiving new connections.

With the kernel's hash alone, a worker that stops accepting keeps receiving
about 1/n of the new connections, which wait in its queue (head-of-line
blocking).  With ``--steering load`` the master sees that worker's accept
queue back up and attaches a cBPF program that sends new connections to the
other workers until the queue is empty again.
"""

from __future__ import annotations

import os
import signal

import pytest
from features import requires_cbpf
from support import Server, read_responses, send_requests, wait_until

from reuseport.control import query

pytestmark = [pytest.mark.e2e, requires_cbpf]


def _slot_pids(control: str) -> dict[int, int]:
    snapshot = query(control)
    return {w["slot"]: w["pid"] for w in snapshot["workers"] if w["state"] == "ready"}


def _queue_of(control: str, slot: int) -> int:
    for worker in query(control)["workers"]:
        if worker["slot"] == slot:
            return int(worker["queue"] or 0)
    return 0


@pytest.mark.parametrize(("steering", "expect_stuck"), [("load", False), ("hash", True)])
def test_stalled_worker_is_skipped_only_with_load_steering(
    tmp_path: os.PathLike[str], steering: str, expect_stuck: bool
) -> None:
    control = os.path.join(str(tmp_path), "ctl.sock")
    with Server(
        "-w",
        "2",
        "--mode",
        "reuseport",
        "--steering",
        steering,
        "--no-rescue",
        "--control",
        control,
    ) as server:
        server.wait_ready()
        pids = _slot_pids(control)
        assert set(pids) == {0, 1}
        stalled = pids[0]
        os.kill(stalled, signal.SIGSTOP)
        try:
            # Fill the stalled worker's queue past the steering limit.
            first = send_requests(server.address, 40)
            wait_until(lambda: _queue_of(control, 0) >= 5, timeout=10)
            if not expect_stuck:
                # Held back by its queue, then recognised as stalled (its queue
                # stopped going down), so a burst elsewhere cannot bring it back.
                wait_until(
                    lambda: (
                        query(control)["steering"]["stalled"] == [0]
                        and query(control)["steering"]["steered_away"] == [0]
                    ),
                    timeout=5,
                )
            else:
                assert query(control)["steering"]["steered_away"] == []
            later = send_requests(server.address, 60)
            if expect_stuck:
                # The hash keeps sending about half of them to the stalled worker.
                with pytest.raises(AssertionError, match="got no complete answer"):
                    read_responses(later, timeout=2.0)
            else:
                answers = read_responses(later, timeout=10.0)
                assert all(status == 200 for status, _ in answers)
                assert {body["slot"] for _, body in answers} == {1}
        finally:
            os.kill(stalled, signal.SIGCONT)
        # Everything queued behind the stalled worker is answered once it runs.
        answers = read_responses(first, timeout=10.0)
        assert all(status == 200 for status, _ in answers)
        for sock in first + later:
            sock.close()
