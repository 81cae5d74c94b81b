"""The access log line: the built-in one, or gunicorn's atoms compiled once.

Rules: an ``AccessLog`` exists only while the access log is on; the server
holds None otherwise, so a request pays one test when it is off.  A format
is parsed once, when the worker starts (and checked by the master at start:
``compile_format`` raises ``ConfigError`` naming the atom it does not know);
a line then computes only the atoms its format names and goes to the
``reuseport.access`` logger as a %-format with one mapping argument, so the
text is only built if a handler emits it.

The atoms (gunicorn's names)::

    h  remote address             l  '-'                      u  user (HTTP Basic auth) or '-'
    t  time, [10/Oct/2000:13:55:36 +0000]                     r  request line
    s  status                     b  body bytes, '-' if none  B  body bytes
    f  Referer                    a  User-Agent               m  method
    U  path without query         q  query string             H  protocol (HTTP/1.1)
    T  seconds (int)              M  milliseconds (int)       D  microseconds (int)
    L  seconds (decimal)          p  <worker pid>             {name}i  request header

Unknown atoms, response headers (``{name}o``) and the environment
(``{name}e``) are refused at start: a line of dashes would hide the mistake.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .cycle import RequestCycle

__all__ = ["ATOMS", "AccessLog", "Entry", "compile_format", "format_client"]

ACCESS_LOGGER = "reuseport.access"

# "%%" first, so a literal "%%(h)s" is not taken for an atom.
_ATOM = re.compile(r"%%|%\((?P<name>[^)]*)\)(?P<conv>.)?")


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """What one access line is made of."""

    client: tuple[str, int] | None
    method: str
    path: str  # decoded, without the query
    raw_path: bytes
    query: bytes
    version: str  # "1.1"
    headers: list[tuple[bytes, bytes]]
    status: int
    size: int
    started: float  # loop.time() when the request's headers were complete; 0: unknown
    now: float


def _header(entry: Entry, name: bytes) -> str:
    for key, value in entry.headers:
        if key == name:
            return value.decode("latin-1")
    return "-"


def _user(entry: Entry) -> str:
    value = _header(entry, b"authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return "-"
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    return decoded.partition(":")[0] or "-"


def _request_line(entry: Entry) -> str:
    if not entry.method:
        return "-"
    target = entry.raw_path.decode("latin-1")
    if entry.query:
        target += "?" + entry.query.decode("latin-1")
    return f"{entry.method} {target} HTTP/{entry.version}"


def _elapsed(entry: Entry) -> float:
    return max(0.0, entry.now - entry.started) if entry.started else 0.0


_Getter = Callable[[Entry], object]
_GETTERS: dict[str, _Getter] = {
    "h": lambda e: e.client[0] if e.client else "-",
    "l": lambda e: "-",
    "u": _user,
    "t": lambda e: time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
    "r": _request_line,
    "s": lambda e: e.status,
    "b": lambda e: e.size or "-",
    "B": lambda e: e.size,
    "f": lambda e: _header(e, b"referer"),
    "a": lambda e: _header(e, b"user-agent"),
    "m": lambda e: e.method or "-",
    "U": lambda e: e.path or "-",
    "q": lambda e: e.query.decode("latin-1"),
    "H": lambda e: f"HTTP/{e.version}" if e.version else "-",
    "T": lambda e: int(_elapsed(e)),
    "M": lambda e: int(_elapsed(e) * 1_000),
    "D": lambda e: int(_elapsed(e) * 1_000_000),
    "L": lambda e: f"{_elapsed(e):.6f}",
    "p": lambda e: f"<{os.getpid()}>",
}


ATOMS = tuple(_GETTERS)  # the names, for messages and docs


def _header_getter(name: bytes) -> _Getter:
    return lambda e: _header(e, name)


def compile_format(fmt: str) -> tuple[str, tuple[tuple[str, _Getter], ...]]:
    """``fmt`` as (a %-format over a mapping, the atoms it needs with their getters).

    Raises ``ConfigError`` for an atom it does not know or a broken format.
    """
    getters: dict[str, _Getter] = {}
    for match in _ATOM.finditer(fmt):
        if match.group() == "%%":
            continue
        name, conv = match["name"], match["conv"]
        if conv != "s":
            raise ConfigError(f"invalid --access-log-format {fmt!r}: write atoms as %({name})s")
        if name in _GETTERS:
            getters[name] = _GETTERS[name]
        elif name.startswith("{") and name.endswith("}i") and len(name) > 3:
            getters[name] = _header_getter(name[1:-2].lower().encode("latin-1"))
        else:
            raise ConfigError(
                f"invalid --access-log-format {fmt!r}: unknown atom %({name})s; "
                f"use {', '.join(ATOMS)} or {{header}}i"
            )
    try:
        fmt % dict.fromkeys(getters, "x")
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"invalid --access-log-format {fmt!r}: {exc} (write a literal % as %%)"
        ) from None
    return fmt, tuple(getters.items())


class AccessLog:
    """Writes access lines to ``reuseport.access`` (see the module docstring)."""

    __slots__ = ("_atoms", "_template", "logger")

    def __init__(self, fmt: str | None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._template: str | None = None
        self._atoms: tuple[tuple[str, _Getter], ...] = ()
        if fmt is not None:
            self._template, self._atoms = compile_format(fmt)

    def request(self, cycle: RequestCycle, now: float) -> None:
        scope = cycle.scope
        response = cycle.response
        if self._template is None:
            query = scope["query_string"]
            path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            self.logger.info(
                '%s - "%s %s HTTP/%s" %d %d',
                format_client(scope["client"]),
                scope["method"],
                path,
                scope["http_version"],
                response.status,
                response.bytes_sent,
            )
            return
        self._emit(
            Entry(
                client=scope["client"],
                method=scope["method"],
                path=scope["path"],
                raw_path=scope["raw_path"],
                query=scope["query_string"],
                version=scope["http_version"],
                headers=scope["headers"],
                status=response.status,
                size=response.bytes_sent,
                started=cycle.started,
                now=now,
            )
        )

    def error(self, client: tuple[str, int] | None, status: int, now: float) -> None:
        """A request answered with an error before it could be parsed."""
        if self._template is None:
            self.logger.info('%s - "-" %d -', format_client(client), status)
            return
        self._emit(
            Entry(
                client=client,
                method="",
                path="",
                raw_path=b"",
                query=b"",
                version="",
                headers=[],
                status=status,
                size=0,
                started=0.0,
                now=now,
            )
        )

    def _emit(self, entry: Entry) -> None:
        template = self._template
        assert template is not None
        values: Mapping[str, object] = {name: get(entry) for name, get in self._atoms}
        if values:
            self.logger.info(template, values)
        else:
            self.logger.info("%s", template % {})


def format_client(client: tuple[str, int] | None) -> str:
    """``host:port`` for the access log, ``-`` when unknown."""
    if client is None:
        return "-"
    return f"{client[0]}:{client[1]}"
