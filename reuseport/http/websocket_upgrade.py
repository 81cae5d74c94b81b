"""Which upgrade requests become WebSockets, and what is said when one cannot.

Rules: this module does not import the ``websockets`` package, so the HTTP
layer works without it; ``Upgrades`` imports ``websocket.py`` (which does)
once, when the worker's HTTP server is built, as ``--ws`` says:

* ``--ws none``: every upgrade request is a plain HTTP request to the app
  (which then answers it as one: FastAPI and Starlette say 404), as before
  WebSocket support existed.
* ``--ws auto`` (the default): WebSocket if the package is installed; if not,
  upgrade requests are plain HTTP and the first one a worker sees logs a
  warning naming the extra to install (once per worker: a client retrying in
  a loop must not flood the log).
* ``--ws websockets``: the package is required; without it the worker cannot
  boot (``BootError``), and the message says what to install.

An upgrade to anything else (``h2c``, ...) is not ours to speak: the request
is answered as plain HTTP, and the connection ends after it, as before.  The
first such request in a worker is logged at INFO, later ones at DEBUG.

A WebSocket handshake is taken only if it is the one request outstanding on
its connection (``GET``, HTTP/1.1, no body, nothing pipelined before it);
browsers and WebSocket clients never pipeline one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import Config, WebSocketKind
from ..errors import BootError

if TYPE_CHECKING:
    from .cycle import Scope
    from .protocol import HttpProtocol
    from .server import HttpServer
    from .websocket import WebSockets

__all__ = ["Upgrades", "upgrade_tokens"]

logger = logging.getLogger("reuseport.http")

EXTRA_HINT = "pip install 'reuseport[websockets]' (or pip install websockets)"


def upgrade_tokens(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The protocols named by the request's ``Upgrade`` headers, lower case."""
    tokens: list[str] = []
    for name, value in headers:
        if name == b"upgrade":
            tokens += [t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()]
    return tokens


class Upgrades:
    """The upgrade decisions of one worker's HTTP server (see the module docstring)."""

    def __init__(self, server: HttpServer, config: Config) -> None:
        self.kind = config.ws
        self.websockets: WebSockets | None = None
        self.missing = False  # --ws auto without the package
        self._warned_missing = False
        self._told_other = False
        if self.kind is WebSocketKind.NONE:
            return
        try:
            from .websocket import WebSockets
        except ImportError as exc:
            if self.kind is WebSocketKind.WEBSOCKETS:
                raise BootError(
                    f"--ws websockets needs the websockets package ({exc}): {EXTRA_HINT}"
                ) from None
            self.missing = True
            return
        self.websockets = WebSockets(server, config)

    def takes(self, proto: HttpProtocol, scope: Scope) -> bool:
        """True if the upgrade request parsed as ``scope`` becomes a WebSocket here."""
        tokens = upgrade_tokens(scope["headers"])
        if "websocket" not in tokens:
            level = logging.DEBUG if self._told_other else logging.INFO
            self._told_other = True
            logger.log(
                level,
                "upgrade to %s requested by %s for %s: reuseport does not speak it; "
                "answered as plain HTTP",
                ", ".join(tokens) or "(an empty Upgrade header)",
                proto.client,
                scope["path"],
            )
            return False
        if self.websockets is None:
            if self.missing and not self._warned_missing:
                self._warned_missing = True
                logger.warning(
                    "a WebSocket upgrade request for %s was answered as plain HTTP: "
                    "WebSocket support needs the websockets package: %s "
                    "(logged once per worker)",
                    scope["path"],
                    EXTRA_HINT,
                )
            return False
        if scope["method"] != "GET" or scope["http_version"] != "1.1":
            logger.debug(
                "WebSocket upgrade with %s HTTP/%s from %s: answered as plain HTTP",
                scope["method"],
                scope["http_version"],
                proto.client,
            )
            return False
        return True
