"""The pure half of WSGI (PEP 3333): the environ, status and headers, the streams.

Rules: nothing here touches a socket, a loop or a thread pool; ``wsgi.py``
drives it.  So every conversion between the HTTP request as the connection
parsed it and what a WSGI app sees can be tested by feeding values.

* ``build_environ`` makes one request's environ from the parsed parts: a
  per-worker ``base`` (``wsgi.*`` constants, ``SCRIPT_NAME`` from
  ``--root-path``, ``wsgi.errors``, ``wsgi.file_wrapper``) copied and
  completed per request.  ``PATH_INFO`` is the request path with its
  %-escapes decoded, as latin-1 text (PEP 3333's "bytes as str"), without
  the root path: a proxy mounting the app under ``--root-path`` strips it,
  as for ASGI, where ``path`` is ``root_path`` + the path received.
  ``wsgi.url_scheme`` and ``REMOTE_ADDR`` come in already decided by the
  connection (TLS, and ``X-Forwarded-Proto``/``-For`` from trusted proxies
  only: ``proxy.py``), the same values an ASGI scope gets.
* Headers become CGI variables: ``Content-Type`` and ``Content-Length`` as
  ``CONTENT_TYPE``/``CONTENT_LENGTH``, every other one as ``HTTP_`` + its
  name upper-cased with ``-`` as ``_``; repeated headers are joined with
  ``,`` (``Cookie`` with ``; ``, RFC 6265 5.4).  A header whose *name*
  holds ``_`` is dropped: it would arrive under the same variable as its
  dashed twin (``X_Forwarded_For`` as ``HTTP_X_FORWARDED_FOR``), a way
  past a proxy that sets one and not the other (gunicorn, nginx and Apache
  drop them too).
* ``parse_status`` and ``encode_headers`` check what ``start_response``
  receives (PEP 3333: native strings, a three-digit status with a reason)
  and raise ``TypeError``/``ValueError`` naming the fault; the app sees
  them from ``start_response`` itself.  The reason phrase goes no further:
  the status line carries the standard one.
* ``ErrorStream`` is ``wsgi.errors``: whole lines to the ``reuseport.wsgi``
  logger at ERROR (the server's error log), each thread's unfinished line
  kept apart until it ends (or ``flush()``).
* ``FileWrapper`` is ``wsgi.file_wrapper``: iterating it reads blocks;
  ``wsgi.py`` recognises it and, for a regular file, sends the file itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any
from urllib.parse import unquote_to_bytes

__all__ = [
    "ErrorStream",
    "FileWrapper",
    "base_environ",
    "build_environ",
    "encode_headers",
    "environ_key",
    "parse_status",
]

errors_logger = logging.getLogger("reuseport.wsgi")

_PERCENT = ord("%")
_UNDERSCORE = ord("_")
# CGI names of header names seen, so a request converts each known name once.
_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
}
_KEYS_MAX = 2048  # a client inventing names cannot grow the cache past this


def environ_key(name: bytes) -> str | None:
    """The environ variable of a (lower-case) header name; None: the header is dropped."""
    key = _KEYS.get(name)
    if key is None and name not in _KEYS:
        if _UNDERSCORE in name:
            key = None
        else:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def base_environ(
    *,
    script_name: str,
    errors: ErrorStream,
    server_software: str,
    multiprocess: bool = True,
) -> dict[str, Any]:
    """What every environ of one worker starts from."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.errors": errors,
        "wsgi.file_wrapper": FileWrapper,
        # Every body ends with an EOF from read(), chunked ones too.
        "wsgi.input_terminated": True,
        "SCRIPT_NAME": script_name,
        "SERVER_SOFTWARE": server_software,
    }


def build_environ(
    base: dict[str, Any],
    *,
    method: str,
    raw_path: bytes,
    query: bytes,
    http_version: str,
    headers: Iterable[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    scheme: str,
    wsgi_input: object,
) -> dict[str, Any]:
    """One request's environ (see the module docstring).

    ``raw_path`` is the path as received (still %-escaped), without the root
    path; ``headers`` are (lower-case name, value) pairs in arrival order.
    """
    environ = base.copy()
    if _PERCENT in raw_path:
        path = unquote_to_bytes(raw_path).decode("latin-1")
    else:
        path = raw_path.decode("latin-1")
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path
    query_text = query.decode("latin-1")
    environ["QUERY_STRING"] = query_text
    target = raw_path.decode("latin-1")
    environ["RAW_URI"] = target + "?" + query_text if query else target
    environ["SERVER_PROTOCOL"] = "HTTP/" + http_version
    if server is not None and server[1] is not None:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
    else:  # a Unix socket: no address of ours to give
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "443" if scheme == "https" else "80"
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    else:
        environ["REMOTE_ADDR"] = ""
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = wsgi_input
    for name, value in headers:
        key = _KEYS.get(name) or environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    return environ


def parse_status(status: object) -> int:
    """The status code of a PEP 3333 status string (``"200 OK"``)."""
    if type(status) is not str:
        raise TypeError(f"the WSGI status must be a str such as '200 OK', not {status!r}")
    code = status[:3]
    if len(status) < 4 or status[3] != " " or not (code.isascii() and code.isdigit()):
        raise ValueError(
            f"the WSGI status {status!r} is not a three-digit code, a space and a reason"
        )
    number = int(code)
    if not 100 <= number <= 599:
        raise ValueError(f"the WSGI status {status!r} is outside 100-599")
    return number


def encode_headers(headers: object) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """``start_response``'s header list as bytes pairs, and its Content-Length if any.

    Raises ``TypeError`` for anything that is not a list of (str, str)
    tuples and ``ValueError`` for text that is not latin-1, a name that is
    not a token, a value with CR/LF or a Content-Length that is not a number.
    """
    if type(headers) is not list:
        raise TypeError(f"the WSGI response headers must be a list, not {type(headers).__name__}")
    out: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"a WSGI response header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"WSGI header names and values must be str: {item!r}")
        try:
            name_b = name.encode("latin-1")
            value_b = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"the WSGI response header {item!r} is not latin-1 text") from None
        if not name_b or name_b.strip(_TOKEN) or b"\r" in value_b or b"\n" in value_b:
            raise ValueError(f"the WSGI response header {item!r} is not a valid HTTP field")
        if name_b.lower() == b"content-length":
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"the WSGI app's Content-Length {value!r} is not a number")
            length = int(text)
        out.append((name_b, value_b))
    return out, length


_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class ErrorStream:
    """``wsgi.errors``: lines to the error log (see the module docstring)."""

    def __init__(self, logger: logging.Logger = errors_logger) -> None:
        self._logger = logger
        self._local = threading.local()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        pending: str = getattr(self._local, "pending", "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            self._logger.error("%s", line)
        self._local.pending = rest
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        rest: str = getattr(self._local, "pending", "")
        if rest:
            self._local.pending = ""
            self._logger.error("%s", rest)


class FileWrapper:
    """``wsgi.file_wrapper``: a file-like object as an iterable of blocks."""

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
