"""The old master's upgrade decisions, driven by hand: a fake clock and a fake ``kill``.

Rules: no process is started and no signal is sent; a ``Succession`` is
built on listeners that bind nothing, and the test sets the upgrade's phase
itself.  What a real new master does is in ``test_upgrade.py``; these tests
pin down when the old master gives up on it (``--upgrade-timeout``, then
SIGKILL), what a stop does to an upgrade in each phase, and which SIGUSR2
are refused.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from reuseport import upgrade
from reuseport.config import Config, Mode
from reuseport.listeners import Holdings, Listeners
from reuseport.metrics import Lifetime, Readiness
from reuseport.operations import Operations
from reuseport.pidfile import PidFile
from reuseport.status import Status
from reuseport.succession import KILL_AGAIN_AFTER, STOP_GRACE, Outcome, Succession

NEW_MASTER = 4242  # never signalled: ``kill`` only records


def _no_status() -> Status:
    raise AssertionError("the status is not asked for")


class Killed(list[tuple[int, int]]):
    def __call__(self, pid: int, sig: int) -> None:
        self.append((pid, sig))


@pytest.fixture
def killed() -> Killed:
    return Killed()


@pytest.fixture
def succession(killed: Killed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Succession]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = Config(workers=2, upgrade_timeout=30.0, graceful_timeout=10.0)
    listeners = Listeners(Mode.SHARED, config.binds, config.backlog)
    operations = Operations(
        config,
        100,
        listeners,
        status=_no_status,
        readiness=lambda: Readiness(ready=True, stopping=False),
        lifetime=Lifetime(),
    )
    yield Succession(config, 100, listeners, operations, PidFile(None, 100), kill=killed)
    listeners.close()


def started(succession: Succession, *, deadline: float) -> upgrade.Attempt:
    """An upgrade whose new master runs (``ready_fd`` -1: no pipe to read)."""
    attempt = upgrade.Attempt(requested=0.0)
    attempt.started(NEW_MASTER, -1, deadline=deadline, control=False)
    succession.attempt = attempt
    return attempt


def test_a_new_master_not_ready_in_time_is_stopped_then_killed(
    succession: Succession, killed: Killed
) -> None:
    attempt = started(succession, deadline=130.0)
    succession.tend(129.9)
    assert killed == []
    succession.tend(130.0)  # --upgrade-timeout ran out
    assert killed == [(NEW_MASTER, signal.SIGTERM)]
    kill_at = 130.0 + 10.0 + STOP_GRACE  # --graceful-timeout and the grace
    assert attempt.kill_at == kill_at
    succession.tend(kill_at - 0.1)
    assert killed == [(NEW_MASTER, signal.SIGTERM)]  # SIGTERM is not sent again
    succession.tend(kill_at)
    assert killed[-1] == (NEW_MASTER, signal.SIGKILL)
    succession.tend(kill_at + KILL_AGAIN_AFTER)
    assert killed[1:] == [(NEW_MASTER, signal.SIGKILL)] * 2
    assert succession.upgrading  # over only once it is reaped


def test_a_ready_new_master_is_not_timed_out(succession: Succession, killed: Killed) -> None:
    attempt = started(succession, deadline=130.0)
    attempt.phase = upgrade.Phase.HANDING_OVER
    succession.tend(1000.0)
    assert killed == []


def test_a_stop_before_the_new_master_runs_just_ends_the_upgrade(
    succession: Succession, killed: Killed
) -> None:
    succession.request(5.0, stopping=False)
    assert succession.upgrading
    succession.cancel("SIGTERM")
    assert not succession.upgrading
    assert killed == []


def test_a_stop_while_the_new_master_boots_stops_it_too(
    succession: Succession, killed: Killed, caplog: pytest.LogCaptureFixture
) -> None:
    attempt = started(succession, deadline=130.0)
    with caplog.at_level(logging.INFO, logger="reuseport.master"):
        succession.cancel("SIGINT")
    assert attempt.cancelled
    assert killed == [(NEW_MASTER, signal.SIGTERM)]
    assert f"SIGINT: stopping the new master (pid {NEW_MASTER}) too" in caplog.text
    # Reaped after that: no failure to report, nothing for the master to do.
    assert succession.exited("exited with code 0") is None
    assert not succession.upgrading
    assert "Upgrade failed" not in caplog.text


def test_a_stop_after_the_hand_over_began_leaves_the_new_master_alone(
    succession: Succession, killed: Killed
) -> None:
    attempt = started(succession, deadline=130.0)
    attempt.phase = upgrade.Phase.HANDING_OVER
    succession.cancel("SIGTERM")
    assert not attempt.cancelled
    assert killed == []


def test_a_new_master_that_dies_after_the_hand_over_began_means_serve_again(
    succession: Succession,
) -> None:
    started(succession, deadline=130.0).phase = upgrade.Phase.HANDING_OVER
    succession.operations.answering = False
    assert succession.exited("was killed by signal 9") is Outcome.RESUME
    assert succession.operations.answering
    assert not succession.upgrading


def test_a_new_master_that_dies_before_it_is_ready_only_ends_the_upgrade(
    succession: Succession, caplog: pytest.LogCaptureFixture
) -> None:
    started(succession, deadline=130.0)
    with caplog.at_level(logging.ERROR, logger="reuseport.master"):
        assert succession.exited("exited with code 3") is None
    assert "Upgrade failed: the new master (pid 4242) exited with code 3" in caplog.text
    assert not succession.upgrading


def test_sigusr2_is_refused_while_stopping_taking_over_or_upgrading(
    succession: Succession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="reuseport.master"):
        succession.request(1.0, stopping=True)
        assert not succession.upgrading
        succession.inheritance = upgrade.Inheritance(
            upgrade.Handover(
                master=99, ready_fd=-1, holdings=Holdings(mode=Mode.SHARED, binds=(), bind_fds=())
            )
        )
        succession.request(2.0, stopping=False)
        assert not succession.upgrading
        succession.inheritance.complete = True  # the old master has gone: ours to upgrade
        succession.request(3.0, stopping=False)
        first = succession.attempt
        succession.request(4.0, stopping=False)
    assert succession.attempt is first
    assert first is not None
    assert first.requested == 3.0
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "SIGUSR2 ignored: the server is stopping",
        "SIGUSR2 ignored: this master is still taking over from pid 99; try again once it "
        "has exited",
        "SIGUSR2 ignored: an upgrade is under way (new master pid None)",
    ]
