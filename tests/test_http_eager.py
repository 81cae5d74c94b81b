"""``start_eager`` on the asyncio and uvloop loops, whichever Python runs the tests.

3.11 takes the placeholder-Task path, 3.12 and later the standard eager Task;
both must keep the same contract (see ``reuseport/http/_eager.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import uvloop

from reuseport.http._eager import start_eager

LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
BOUND = 5.0
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@dataclass
class Outcome:
    done: list[BaseException | None] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    inline: bool = False  # on_done ran before start_eager returned
    raised: BaseException | None = None  # what start_eager itself raised
    order: list[str] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)


def drive(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    make: Callable[[Outcome], Awaitable[Any]],
    after_start: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Start ``make(outcome)`` eagerly from a loop callback and run until it ended."""
    outcome = Outcome()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: outcome.loop_errors.append(context))
        finished = loop.create_future()

        def on_done(exc: BaseException | None) -> None:
            outcome.done.append(exc)
            outcome.order.append("on_done")
            if not finished.done():
                finished.set_result(None)

        def start() -> None:
            outcome.seen["task before"] = asyncio.current_task()
            try:
                outcome.task = start_eager(loop, make(outcome), on_done)
            except BaseException as exc:
                outcome.raised = exc
            outcome.inline = bool(outcome.done)
            outcome.seen["task after"] = asyncio.current_task()
            outcome.seen["var after"] = VAR.get()
            if after_start is not None:
                after_start(outcome)

        loop.call_soon(start)
        await asyncio.wait_for(finished, BOUND)
        if outcome.task is not None:
            await asyncio.wait_for(asyncio.wait({outcome.task}), BOUND)
        gc.collect()  # a Task with an unretrieved exception would complain now
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return outcome


@LOOPS
def test_finishing_inline_makes_no_task_but_has_a_current_one(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        o.seen["current"] = asyncio.current_task()
        o.seen["anyio"] = anyio.get_current_task()  # anyio refuses to run without a task

    o = drive(loop_factory, app)
    assert o.task is None
    assert o.done == [None]
    assert o.inline
    assert isinstance(o.seen["current"], asyncio.Task)
    assert o.seen["anyio"].id == id(o.seen["current"])
    assert o.seen["task before"] is None
    assert o.seen["task after"] is None  # the current task is reset after the step
    assert o.loop_errors == []


@LOOPS
def test_suspending_keeps_the_same_task(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        o.seen["first"] = asyncio.current_task()
        await asyncio.sleep(0)
        o.seen["second"] = asyncio.current_task()

    o = drive(loop_factory, app)
    assert o.task is not None
    assert o.seen["first"] is o.task
    assert o.seen["second"] is o.task
    assert o.done == [None]
    assert not o.inline
    assert o.task.done()
    assert not o.task.cancelled()
    assert o.task.exception() is None


@LOOPS
def test_on_done_runs_at_the_end_of_the_last_step(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        await asyncio.sleep(0)
        # Anything scheduled from the last step runs after on_done.
        asyncio.get_running_loop().call_soon(o.order.append, "next callback")

    def add_callback(o: Outcome) -> None:
        assert o.task is not None
        o.task.add_done_callback(lambda _task: o.order.append("done callback"))

    o = drive(loop_factory, app, add_callback)
    assert o.order[0] == "on_done"
    assert sorted(o.order[1:]) == ["done callback", "next callback"]


@LOOPS
@pytest.mark.parametrize("suspend", [False, True], ids=["inline", "suspended"])
def test_app_error_goes_to_on_done_only(loop_factory: Any, suspend: bool) -> None:
    async def app(o: Outcome) -> None:
        if suspend:
            await asyncio.sleep(0)
        raise ValueError("boom")

    o = drive(loop_factory, app)
    assert len(o.done) == 1
    assert isinstance(o.done[0], ValueError)
    assert o.raised is None
    assert o.inline is not suspend
    if suspend:
        assert o.task is not None
        assert o.task.exception() is None  # handled: the Task ends normally
    assert o.loop_errors == []  # nothing logged as "never retrieved"


@LOOPS
def test_app_cancelling_itself_in_the_first_step(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        o.seen["not reached"] = True

    o = drive(loop_factory, app)
    assert len(o.done) == 1
    assert isinstance(o.done[0], asyncio.CancelledError)
    assert o.task is not None
    assert o.task.cancelled()
    assert "not reached" not in o.seen


@LOOPS
def test_cancelling_a_suspended_request(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        await asyncio.get_running_loop().create_future()  # never done

    def cancel(o: Outcome) -> None:
        assert o.task is not None
        o.task.cancel()

    o = drive(loop_factory, app, cancel)
    assert len(o.done) == 1
    assert isinstance(o.done[0], asyncio.CancelledError)
    assert o.task is not None
    assert o.task.cancelled()


@LOOPS
def test_context_is_private_to_the_request(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        VAR.set("request")
        await asyncio.sleep(0)
        o.seen["var later"] = VAR.get()

    o = drive(loop_factory, app)
    assert o.seen["var after"] == "unset"  # nothing leaked to the caller
    assert o.seen["var later"] == "request"  # the request's own steps share it


@LOOPS
def test_awaitable_object_that_is_not_a_coroutine(loop_factory: Any) -> None:
    class Answer:
        def __init__(self, o: Outcome) -> None:
            self.o = o

        def __await__(self) -> Generator[Any, None, None]:
            yield from asyncio.sleep(0).__await__()
            self.o.seen["awaited"] = True

    o = drive(loop_factory, Answer)
    assert o.seen["awaited"]
    assert o.done == [None]


@LOOPS
def test_non_awaitable_result_is_an_app_error(loop_factory: Any) -> None:
    o = drive(loop_factory, lambda _o: None)  # type: ignore[arg-type, return-value]
    assert len(o.done) == 1
    assert isinstance(o.done[0], AttributeError | TypeError)
    assert o.raised is None


@LOOPS
def test_anyio_cancel_scopes_span_the_suspension(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        with anyio.CancelScope():
            await asyncio.sleep(0)
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(BOUND)
        o.seen["moved on"] = scope.cancelled_caught

    o = drive(loop_factory, app)
    assert o.done == [None]
    assert o.seen["moved on"]


@LOOPS
def test_system_exit_reaches_on_done_and_the_caller(loop_factory: Any) -> None:
    async def app(o: Outcome) -> None:
        raise SystemExit(3)

    o = drive(loop_factory, app)
    assert len(o.done) == 1
    assert isinstance(o.done[0], SystemExit)
    assert isinstance(o.raised, SystemExit)


def test_the_path_matches_the_python() -> None:
    import reuseport.http._eager as eager

    assert hasattr(eager, "_guarded") is (sys.version_info >= (3, 12))
