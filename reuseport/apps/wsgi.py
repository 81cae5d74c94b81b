"""Host a WSGI application (PEP 3333): HTTP/1.1 on the loop, the app on threads.

Rules: the worker's event loop serves the connections with the same HTTP/1.1
protocol as ASGI apps (``reuseport.http``), and each request runs on one of
``--threads`` app threads (``http/wsgi.py`` says how the two meet).  There is
no lifespan for WSGI: the app object is ready once imported.

The process manager sees WSGI requests as it sees ASGI ones: the connection
counts requests in flight and completed in ``WorkerStats`` (busy/idle,
``--max-requests``, ``status``), and the heartbeat runs on the loop, so an app
thread that blocks does not look like a stuck worker, while a stuck loop still
misses its beats and is caught by ``--timeout``.

Graceful stop (``shutdown(timeout, reason)``): set the drain signal, stop
accepting, let connections finish (keep-alive ones close once idle, as for
ASGI) up to ``timeout`` less a small margin (``_THREADS_MARGIN``); connections
still open then are aborted, which frees app threads blocked reading the body
or writing the response.  App calls still running get the rest of the timeout
after the connections have closed.  A thread cannot be stopped: one still
running at the end is named in a warning and the worker exits without it (app
threads are daemon threads; the master kills the worker at the graceful
timeout anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..errors import BootError
from ..http.wsgi import WSGIApp, WsgiServer
from .base import StopReason, WorkerContext
from .served import HttpHostedApp

__all__ = ["WsgiApp"]

logger = logging.getLogger("reuseport.wsgi")

# The end of the graceful timeout kept for the app threads: the master kills
# a stopping worker at --graceful-timeout, so connections still busy are
# aborted this long before it; threads blocked reading or writing for them
# then end (calling close() on their iterables) and the worker can still name
# the ones that do not.
_THREADS_MARGIN = 0.25
# Time the loop's own helpers get after the threads (a drain wait, a sendfile).
_AFTER_ABORT = 0.1


class WsgiApp(HttpHostedApp[WsgiServer]):
    """A WSGI application served over HTTP/1.1 (see the module docstring)."""

    def __init__(self, app: object, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        if not callable(app):
            raise BootError(f"the WSGI app {app!r} is not callable")
        self.app: WSGIApp = app

    def make_server(self) -> WsgiServer:
        return WsgiServer(
            self.app, self.ctx.config, self.ctx.stats, secure=self.ctx.tls is not None
        )

    async def shutdown(self, timeout: float, reason: StopReason = StopReason.STOP) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        http = self.http
        if http is not None:
            http.draining.set()
        await self.stop_accepting()
        if http is not None:
            margin = min(_THREADS_MARGIN, timeout / 4)
            left = max(0.0, deadline - margin - loop.time())
            grace = self.ctx.config.timeout_keep_alive
            if not await http.connections.drain(left, reason, grace):
                logger.warning(
                    "graceful timeout (%.1f s) expired: closed the connections still busy",
                    timeout,
                )
            pool = http.pool
            if not await pool.wait_idle(max(deadline - margin / 2 - loop.time(), 0.0)):
                for cycle in pool.running():
                    scope = cycle.scope
                    logger.warning(
                        "a WSGI app thread still runs %s %s after the graceful timeout "
                        "(%.1f s); the worker exits without it (a thread cannot be stopped)",
                        scope["method"],
                        scope["path"],
                        timeout,
                    )
            pool.close()
            # The loop's own helpers (a drain wait, a sendfile) end with their
            # connections; give them a moment, then cancel what is left.
            tasks = set(http.tasks)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=_AFTER_ABORT)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            http.stop()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), max(deadline - loop.time(), 0.1))
