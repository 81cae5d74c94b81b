"""Run a request coroutine's first step inline; keep a Task only if it suspends.

Why: most requests of a hello-world-ish app finish without ever waiting (the
body is already buffered, the response fits the socket buffer).  Creating an
``asyncio.Task`` per request, scheduling its first step with ``call_soon`` and
registering it in the task registry costs more than the app itself.

The contract of ``start_eager(loop, awaitable, on_done)``, on every Python:

* It must be called with no task running (from a protocol callback or a
  ``call_soon`` callback), never from inside a coroutine.
* The first step runs at once, with a Task as the loop's current task
  (``asyncio.current_task()`` must not be None: sniffio and anyio, hence
  Starlette and FastAPI, refuse to run otherwise), in a copy of the current
  ``contextvars.Context``, so context variables set by one request never leak
  into the protocol or the next request.  If the coroutine suspends, the same
  Task continues it (anyio cancel scopes remember the task they saw).
* It returns None if the coroutine finished in that step, else the Task; the
  caller must keep a reference to the Task until ``on_done`` ran (asyncio
  keeps only weak ones).
* ``on_done(exc)`` is called exactly once, with None or the exception the
  coroutine raised, synchronously at the end of the coroutine's last step
  (not one loop iteration later, as a done callback would be: the HTTP
  protocol counts running app calls for ``--limit-concurrency`` and the next
  pipelined request may start in the very next callback).  It must not raise.
  ``KeyboardInterrupt``/``SystemExit`` are re-raised after it and
  ``CancelledError`` ends the Task cancelled; any other error is handled by
  ``on_done`` and ends the Task normally, so asyncio does not log it again.

How, on Python 3.12 and later: the standard eager start,
``asyncio.Task(coro, eager_start=True)``, around a small ``_guarded``
coroutine that calls ``on_done``.  Measured with
``scripts/profile_http.py --callgrind`` (instructions per keep-alive request,
hello-world ASGI app on uvloop): 3.12.1 100,856 with it vs 101,130 with the
3.11 way below; 3.13.0 97,948 vs 97,938.  The same cost, so the standard way.
(Hooking every step with a Python-level coroutine wrapper instead of
``_guarded`` cost 7 % more.)

How, on Python 3.11, which has no eager tasks:

* The first step runs with a *placeholder* Task entered as the loop's current
  task through asyncio's private ``_enter_task``/``_leave_task``.
* The placeholder is created with ``Task.__new__`` and left uninitialised.  If
  the coroutine suspends, the *same* object is initialised with
  ``Task.__init__`` around a small ``_Resume`` adapter that first hands the
  already-yielded future back to the Task machinery and then forwards
  ``send``/``throw`` to the app's coroutine.
* The C ``Task.get_coro()`` dereferences the coroutine without a NULL check; a
  subclass overrides it to return the app's coroutine while the placeholder is
  uninitialised (anyio's ``get_current_task()`` needs one).  It overrides
  ``__repr__`` too (anyio formats the current task into cancel reasons).
  Other methods of an uninitialised Task raise ``RuntimeError`` cleanly.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]

OnDone = Callable[[BaseException | None], None]

_RERAISE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


if sys.version_info >= (3, 12):

    async def _guarded(awaitable: Awaitable[Any], on_done: OnDone) -> None:
        try:
            await awaitable
        except BaseException as exc:
            on_done(exc)
            if isinstance(exc, _RERAISE):
                raise
            return
        on_done(None)

    def start_eager(
        loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any], on_done: OnDone
    ) -> asyncio.Task[None] | None:
        """Run ``awaitable`` up to its first suspension; return its Task if it suspended."""
        task = asyncio.Task(_guarded(awaitable, on_done), loop=loop, eager_start=True)
        return None if task.done() else task

else:
    from asyncio.tasks import _enter_task, _leave_task

    class _EagerTask(asyncio.Task[None]):
        """A Task that may be the current task before ``__init__`` ran."""

        __slots__ = ("_first_coro",)
        _first_coro: Any

        def get_coro(self) -> Any:
            # anyio's TaskInfo (``anyio.get_current_task()``) asserts that the
            # current task has a coroutine.  The C ``_coro`` property returns
            # None instead of crashing when unset.
            if self._loop is None:
                return self._first_coro
            return self._coro  # type: ignore[attr-defined]

        def __repr__(self) -> str:
            # anyio puts the current task's repr into cancel reasons; the C repr
            # raises on an uninitialised Future.
            if self._loop is None:
                return f"<Task starting eagerly {id(self):#x}>"
            return super().__repr__()

    _Coroutine = types.CoroutineType  # what an async def app returns: no lookup

    class _Unset:
        pass

    _UNSET: Any = _Unset()

    class _Resume(collections.abc.Coroutine[Any, Any, None]):
        """Continue a coroutine whose first step already ran (see module docstring)."""

        __slots__ = ("_coro", "_first", "_on_done")

        def __init__(
            self,
            coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any],
            first: Any,
            on_done: OnDone,
        ) -> None:
            self._coro = coro
            self._first = first
            self._on_done = on_done

        def send(self, value: Any) -> Any:
            first = self._first
            if first is not _UNSET:
                self._first = _UNSET
                return first
            try:
                return self._coro.send(value)
            except StopIteration:
                self._on_done(None)
                raise
            except BaseException as exc:
                self._finish(exc)

        def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
            # A cancellation may arrive before the first ``send``: then the app
            # is still parked on the future it yielded, so throw straight in.
            self._first = _UNSET
            try:
                if val is None and tb is None:
                    return self._coro.throw(typ)
                return self._coro.throw(typ, val, tb)  # pragma: no cover - old form
            except StopIteration:
                self._on_done(None)
                raise
            except BaseException as exc:
                self._finish(exc)

        def close(self) -> None:
            self._coro.close()

        def __await__(self) -> Generator[Any, None, None]:
            return self

        def __iter__(self) -> _Resume:
            return self

        def __next__(self) -> Any:
            return self.send(None)

        def _finish(self, exc: BaseException) -> Any:
            self._on_done(exc)
            if isinstance(exc, _RERAISE):
                raise exc
            # The error is handled (logged, answered); end the Task normally so
            # asyncio does not log "exception was never retrieved" a second time.
            raise StopIteration from None

    def start_eager(
        loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any], on_done: OnDone
    ) -> asyncio.Task[None] | None:
        """Run ``awaitable`` up to its first suspension; return its Task if it suspended."""
        task = _EagerTask.__new__(_EagerTask)
        context = contextvars.copy_context()
        _enter_task(loop, task)
        try:
            coro: Any = awaitable
            if type(coro) is not _Coroutine and not hasattr(coro, "send"):
                coro = coro.__await__()  # an awaitable object, not a coroutine
            task._first_coro = coro
            first = context.run(coro.send, None)
        except StopIteration:
            on_done(None)
            return None
        except BaseException as exc:
            on_done(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return None
        finally:
            _leave_task(loop, task)
        # Task.__init__ resets the cancel request an app may have made on the
        # placeholder (e.g. ``current_task().cancel()``); carry it over.
        must_cancel: bool = task._must_cancel  # type: ignore[attr-defined]
        asyncio.Task.__init__(task, _Resume(coro, first, on_done), loop=loop, context=context)
        if must_cancel:
            task.cancel()
        return task
