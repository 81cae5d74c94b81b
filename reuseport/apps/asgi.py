"""Host an ASGI application: lifespan, HTTP/1.1 and WebSocket serving, graceful drain.

Rules: the app is always called as ASGI 3 (``app(scope, receive, send)``);
ASGI 2 double-callables get a shim.  Lifespan runs in its own Task for the
whole life of the worker; its ``state`` dict is shared (shallow-copied per
request) into every HTTP scope.  A lifespan startup failure is the app's fault
and becomes ``BootError`` with the app's own message (and its traceback, if
it raised), so the master halts instead of respawning forever; the worker
logs nothing of it itself: the master shows it once, however many workers
fail the same way.  A worker stopped while its startup runs cancels it.

Graceful stop (``shutdown(timeout, reason)``): first the drain signal
(``scope["extensions"]["reuseport.drain"]["event"]``, set now, so streaming
responses and WebSocket handlers can wind down at once), then stop accepting,
then let connections finish; open WebSockets are closed with 1001 or 1012
(from ``reason``) just before ``timeout`` runs out, anything still open at
``timeout`` is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import traceback
from typing import Any

from ..config import Lifespan
from ..errors import BootError
from ..http import ASGIApp, HttpServer, Message, Receive, Scope, Send
from .base import StopReason, WorkerContext
from .served import HttpHostedApp

__all__ = ["AsgiApp", "as_asgi3"]

logger = logging.getLogger("reuseport.asgi")


def _is_asgi2(app: object) -> bool:
    if inspect.isclass(app):
        # A class is ASGI 2 (``__init__(scope)`` then ``__call__(receive, send)``)
        # unless instances are awaitable (an ASGI 3 class).
        return not hasattr(app, "__await__")
    if inspect.iscoroutinefunction(app):
        return False
    call = getattr(app, "__call__", None)  # noqa: B004 - we want the bound method
    if call is not None and inspect.iscoroutinefunction(call):
        return False
    try:
        params = inspect.signature(app).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required) == 1


def as_asgi3(app: object) -> ASGIApp:
    """``app`` as an ASGI 3 callable, wrapping an ASGI 2 double-callable."""
    if not callable(app):
        raise TypeError(f"the ASGI app {app!r} is not callable")
    if not _is_asgi2(app):
        asgi3: ASGIApp = app
        return asgi3

    async def asgi2_shim(scope: Scope, receive: Receive, send: Send) -> None:
        instance = app(scope)
        await instance(receive, send)

    return asgi2_shim


class _LifespanRunner:
    """Drive the app's lifespan scope in a Task that lives as long as the worker."""

    def __init__(self, app: ASGIApp, state: dict[str, Any], mode: Lifespan) -> None:
        self.app = app
        self.state = state
        self.mode = mode
        loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.startup_done: asyncio.Future[str | None] = loop.create_future()
        self.shutdown_done: asyncio.Future[str | None] = loop.create_future()
        self.sent_anything = False
        self.supported = True
        self.error: BaseException | None = None
        self.started = False  # the app sent lifespan.startup.complete
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.inbox.put_nowait({"type": "lifespan.startup"})
        self.task = asyncio.get_running_loop().create_task(self._run(), name="asgi-lifespan")
        try:
            failure = await self.startup_done
        except asyncio.CancelledError:  # the worker is stopped while it boots
            self.task.cancel()
            raise
        if failure is not None:
            failure = failure.rstrip()
            error = self.error
            if error is not None and str(error) not in failure:
                failure = f"{failure}\n{_format(error)}"  # it said one thing and raised another
            sep = "\n" if "\n" in failure else " "
            raise BootError(f"the ASGI app's lifespan startup failed:{sep}{failure}")
        if not self.supported:
            return
        if self.task.done() and not self.sent_anything:
            # Returned without a word: nothing to start and nothing to shut down.
            if self.mode is Lifespan.ON:
                raise BootError(
                    "the ASGI app returned from the lifespan scope without sending "
                    "'lifespan.startup.complete' (use --lifespan auto or off for apps "
                    "without lifespan support)"
                )
            self.supported = False

    async def shutdown(self, timeout: float) -> None:
        task = self.task
        if task is None or not self.supported or task.done():
            return
        self.inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            failure = await asyncio.wait_for(asyncio.shield(self.shutdown_done), timeout)
        except TimeoutError:
            logger.warning(
                "the ASGI app's lifespan shutdown did not finish within %.1f s; cancelling it",
                timeout,
            )
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            return
        if failure is not None:
            logger.error("the ASGI app's lifespan shutdown failed: %s", failure)

    async def _run(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            if not self.sent_anything and self.mode is Lifespan.AUTO:
                # Many apps raise on an unknown scope type: that means "no lifespan".
                self.supported = False
                logger.info(
                    "the ASGI app does not support lifespan (it raised %r on the lifespan "
                    "scope); continuing without it",
                    exc,
                )
                logger.debug("lifespan error details", exc_info=exc)
            elif not self.started:
                # A boot error: ``startup`` reports it, traceback included,
                # to the master (see the module docstring); not logged here.
                self._resolve(self.startup_done, _format(exc))
            else:
                logger.error("Exception in the ASGI app's lifespan", exc_info=exc)
                self._resolve(self.shutdown_done, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        finally:
            self._resolve(self.startup_done, None)
            self._resolve(self.shutdown_done, None)

    async def _receive(self) -> Message:
        return await self.inbox.get()

    async def _send(self, message: Message) -> None:
        self.sent_anything = True
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self.started = True
            self._resolve(self.startup_done, None)
        elif kind == "lifespan.startup.failed":
            self._resolve(self.startup_done, str(message.get("message", "")) or "(no message)")
        elif kind == "lifespan.shutdown.complete":
            self._resolve(self.shutdown_done, None)
        elif kind == "lifespan.shutdown.failed":
            self._resolve(self.shutdown_done, str(message.get("message", "")) or "(no message)")
        else:
            raise RuntimeError(f"the ASGI app sent an unexpected lifespan message {kind!r}")

    @staticmethod
    def _resolve(fut: asyncio.Future[str | None], value: str | None) -> None:
        if not fut.done():
            fut.set_result(value)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


class AsgiApp(HttpHostedApp[HttpServer]):
    """An ASGI 2/3 application served over HTTP/1.1 (see the module docstring)."""

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.app: ASGIApp = as_asgi3(app)
        self.state: dict[str, Any] = {}
        self._lifespan: _LifespanRunner | None = None

    async def startup(self) -> None:
        mode = self.ctx.config.lifespan
        if mode is Lifespan.OFF:
            return
        self._lifespan = _LifespanRunner(self.app, self.state, mode)
        await self._lifespan.startup()

    def make_server(self) -> HttpServer:
        return HttpServer(
            self.app, self.ctx.config, self.ctx.stats, self.state, secure=self.ctx.tls is not None
        )

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        http = self.http
        if http is not None:
            http.draining.set()
        await self.stop_accepting()
        if http is not None:
            left = max(0.0, deadline - loop.time())
            grace = self.ctx.config.timeout_keep_alive
            if not await http.connections.drain(left, reason, grace):
                logger.warning(
                    "graceful timeout (%.1f s) expired: closed the connections still busy",
                    timeout,
                )
            # Work the app does after its response (background tasks) gets the
            # rest of the graceful timeout, then is cancelled.
            tasks = set(http.tasks)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            http.stop()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), max(deadline - loop.time(), 0.1))
        if self._lifespan is not None:
            await self._lifespan.shutdown(max(deadline - loop.time(), min(timeout, 1.0)))
