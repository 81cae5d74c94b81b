"""Flow control of one connection, with a transport that records calls."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from reuseport.http.flow import HIGH_WATER, FlowControl


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def make(loop: Any = None) -> tuple[FlowControl, Transport]:
    transport = Transport()
    return FlowControl(cast(asyncio.Transport, transport), loop), transport


def test_reading_pauses_for_queued_requests_or_a_full_body_buffer() -> None:
    flow, transport = make()
    flow.update_reading(False, HIGH_WATER)
    assert transport.calls == []
    flow.update_reading(True, 0)
    flow.update_reading(False, HIGH_WATER + 1)  # still a reason to pause: no call
    assert transport.calls == ["pause"]
    assert flow.read_paused
    flow.update_reading(False, 0)
    flow.update_reading(False, 0)
    assert transport.calls == ["pause", "resume"]
    assert not flow.read_paused


def test_forced_pause_and_resume_are_idempotent() -> None:
    flow, transport = make()
    flow.pause_reading()
    flow.pause_reading()
    flow.resume_reading()
    flow.resume_reading()
    assert transport.calls == ["pause", "resume"]


async def waiting_drains(count: int) -> tuple[FlowControl, list[asyncio.Future[None]]]:
    """A flow paused for writing, with ``count`` ``drain()`` calls waiting on it."""
    flow, _ = make(asyncio.get_running_loop())
    flow.pause_writing()
    assert flow.write_paused
    waiters = [asyncio.ensure_future(flow.drain()) for _ in range(count)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    return flow, waiters


def test_drain_waits_for_resume_writing() -> None:
    async def main() -> None:
        flow, waiters = await waiting_drains(2)
        flow.resume_writing()
        await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
        assert not flow.write_paused

    asyncio.run(main())


def test_release_wakes_a_waiting_drain() -> None:
    async def main() -> None:
        flow, (waiter,) = await waiting_drains(1)
        flow.release()  # the connection is lost
        await asyncio.wait_for(waiter, 1.0)
        await asyncio.wait_for(flow.drain(), 1.0)  # a later drain does not wait either

    asyncio.run(main())


def test_cancelled_drain_leaves_the_waiter_for_others() -> None:
    async def main() -> None:
        flow, (first, second) = await waiting_drains(2)
        first.cancel()
        await asyncio.sleep(0)
        assert first.cancelled()
        assert not second.done()
        flow.resume_writing()
        await asyncio.wait_for(second, 1.0)

    asyncio.run(main())
