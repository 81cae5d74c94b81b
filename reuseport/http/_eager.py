"""Run a request coroutine's first step inline; make a Task only if it suspends.

Why: most requests of a hello-world-ish app finish without ever waiting (the
body is already buffered, the response fits the socket buffer).  Creating an
``asyncio.Task`` per request, scheduling its first step with ``call_soon`` and
registering it in the task registry costs more than the app itself.  Python
3.12 solves this with eager task factories; on 3.11 we do it here.

How, and the rules that keep it correct:

* The first step runs with a *placeholder* Task entered as the loop's current
  task (``asyncio.current_task()`` must not be None: sniffio and anyio, hence
  Starlette and FastAPI, refuse to run otherwise), and inside a copied
  ``contextvars.Context`` so context variables set by one request never leak
  into the protocol or the next request.
* The placeholder is created with ``Task.__new__`` and left uninitialised.  If
  the coroutine suspends, the *same* object is initialised with
  ``Task.__init__`` around a small ``_Resume`` adapter that first hands the
  already-yielded future back to the Task machinery and then forwards
  ``send``/``throw`` to the app's coroutine.  So the task an app saw during its
  first step (anyio cancel scopes remember it) is the task that continues it.
* The C ``Task.get_coro()`` dereferences the coroutine without a NULL check; a
  subclass overrides it so nothing can crash on the uninitialised placeholder.
  So does ``__repr__`` (anyio formats the current task into cancel
  reasons).  Other methods of an uninitialised Task raise ``RuntimeError``
  cleanly.
* ``start_eager`` must be called with no task running (from a protocol
  callback or a ``call_soon`` callback), never from inside a coroutine.
* ``on_done(exc)`` is called exactly once, with None or the exception the
  coroutine raised; it must not raise.  ``KeyboardInterrupt``/``SystemExit``
  are re-raised after it, and ``CancelledError`` ends the Task cancelled.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]

OnDone = Callable[[BaseException | None], None]
OnSuspend = Callable[[], None]


class _EagerTask(asyncio.Task[None]):
    """A Task that may be the current task before ``__init__`` ran."""

    def get_coro(self) -> Any:
        # The ``_coro`` property returns None instead of crashing when unset.
        return self._coro  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        # anyio puts the current task's repr into cancel reasons; the C repr
        # raises on an uninitialised Future.
        if self._loop is None:
            return f"<Task starting eagerly {id(self):#x}>"
        return super().__repr__()


class _Unset:
    pass


_UNSET: Any = _Unset()


class _Resume(collections.abc.Coroutine[Any, Any, None]):
    """Continue a coroutine whose first step already ran (see module docstring)."""

    __slots__ = ("_coro", "_first", "_on_done", "_on_suspend")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any],
        first: Any,
        on_done: OnDone,
        on_suspend: OnSuspend | None,
    ) -> None:
        self._coro = coro
        self._first = first
        self._on_done = on_done
        self._on_suspend = on_suspend

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not _UNSET:
            self._first = _UNSET
            return first
        try:
            result = self._coro.send(value)
        except StopIteration:
            self._on_done(None)
            raise
        except BaseException as exc:
            self._finish(exc)
        if self._on_suspend is not None:
            self._on_suspend()
        return result

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # A cancellation may arrive before the first ``send``: then the app is
        # still parked on the future it yielded, so throw straight into it.
        self._first = _UNSET
        try:
            if val is None and tb is None:
                result = self._coro.throw(typ)
            else:  # pragma: no cover - the old three-argument form
                result = self._coro.throw(typ, val, tb)
        except StopIteration:
            self._on_done(None)
            raise
        except BaseException as exc:
            self._finish(exc)
        if self._on_suspend is not None:
            self._on_suspend()
        return result

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
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise exc
        # The error is handled (logged, answered); end the Task normally so
        # asyncio does not log "exception was never retrieved" a second time.
        raise StopIteration from None


def start_eager(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any],
    on_done: OnDone,
    on_suspend: OnSuspend | None = None,
) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first suspension; return its Task if it suspended.

    ``on_suspend`` runs after every step that leaves the coroutine suspended
    (the HTTP protocol uses it to flush a response head held back in the
    hope of joining it with the body).  The caller must keep a reference to
    the returned Task until ``on_done`` ran: asyncio keeps only weak ones.
    """
    task = _EagerTask.__new__(_EagerTask)
    context = contextvars.copy_context()
    _enter_task(loop, task)
    try:
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
    asyncio.Task.__init__(
        task, _Resume(coro, first, on_done, on_suspend), loop=loop, context=context
    )
    if must_cancel:
        task.cancel()
    if on_suspend is not None:
        on_suspend()
    return task
