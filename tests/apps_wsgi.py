"""WSGI apps for ``reuseport serve`` end-to-end tests (``tests/test_wsgi_serve.py``).

Load them with ``reuseport serve apps_wsgi:NAME --app-dir tests``.

- ``flask_app``: a Flask app: ``/json``, ``/upload`` (the body read in
  pieces: its size and SHA-256), ``/stream`` (a streamed text response),
  ``/sleep?s=`` (blocks its thread; answers with the most requests seen
  running at once), ``/pid``.
- ``raw_app``: plain WSGI for what Flask would hide: app errors before and
  after ``start_response``, an endless stream whose ``close()`` is counted,
  a 1 MiB-per-piece stream whose pieces are counted (``/state`` reports
  both), an upload that waits for ``/open-gate`` before reading, requests
  that block for a while or (nearly) forever.
- ``validated_app``: ``wsgiref.validate.validator`` around an app that uses
  every part of PEP 3333 a server provides; its warnings are errors, so a
  conformance fault shows up in the server's log as a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import warnings
import wsgiref.validate
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

STREAM_PARTS = 20
MIB = 1024 * 1024

# --- Flask -----------------------------------------------------------------------

flask_app = Flask(__name__)
_lock = threading.Lock()
_running = 0
_peak = 0


@flask_app.get("/pid")
def _pid() -> Any:
    return jsonify(pid=os.getpid())


@flask_app.get("/json")
def _json() -> Any:
    return jsonify(
        pid=os.getpid(),
        framework="flask",
        remote=request.remote_addr,
        scheme=request.scheme,
        thread=threading.current_thread().name,
    )


@flask_app.post("/upload")
def _upload() -> Any:
    digest = hashlib.sha256()
    size = 0
    while data := request.stream.read(65536):
        digest.update(data)
        size += len(data)
    return jsonify(size=size, sha256=digest.hexdigest())


@flask_app.get("/stream")
def _stream() -> Response:
    def parts() -> Iterator[str]:
        for i in range(STREAM_PARTS):
            yield f"part {i}\n"

    return Response(parts(), mimetype="text/plain")


@flask_app.get("/sleep")
def _sleep() -> Any:
    global _running, _peak
    with _lock:
        _running += 1
        _peak = max(_peak, _running)
    try:
        time.sleep(float(request.args.get("s", "0.5")))
    finally:
        with _lock:
            _running -= 1
    return jsonify(pid=os.getpid(), peak=_peak)


# --- raw WSGI --------------------------------------------------------------------

STATE = {"produced": 0, "closed": 0}
GATE = threading.Event()
NEVER = threading.Event()


def _json_response(
    start_response: StartResponse, doc: object, status: str = "200 OK"
) -> list[bytes]:
    body = json.dumps(doc).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


class _Endless:
    """A streamed body that goes on until the client leaves; counts its close()."""

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(100_000):
            yield b"x" * 65536

    def close(self) -> None:
        STATE["closed"] += 1


def _big(pieces: int) -> Iterator[bytes]:
    piece = b"y" * MIB
    for _ in range(pieces):
        STATE["produced"] += 1
        yield piece


def raw_app(environ: Environ, start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    if path == "/pid":
        return _json_response(start_response, {"pid": os.getpid()})
    if path == "/state":
        return _json_response(start_response, STATE)
    if path == "/before":
        raise RuntimeError("app error before start_response (test 4711)")
    if path == "/between":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("app error before the first body (test 4712)")
    if path == "/after":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def failing() -> Iterator[bytes]:
            yield b"first part\n"
            raise RuntimeError("app error after the first body (test 4713)")

        return failing()
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Endless()
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _big(int(query))
    if path == "/open-gate":
        GATE.set()
        return _json_response(start_response, {"open": True})
    if path == "/gate":
        if not GATE.wait(30):
            return _json_response(start_response, {"error": "gate"}, "504 Gateway Timeout")
        stream = environ["wsgi.input"]
        digest = hashlib.sha256()
        size = 0
        while data := stream.read(65536):
            digest.update(data)
            size += len(data)
        return _json_response(start_response, {"size": size, "sha256": digest.hexdigest()})
    if path == "/block":
        time.sleep(float(query))
        return _json_response(start_response, {"pid": os.getpid()})
    if path == "/forever":
        NEVER.wait(120)
        return _json_response(start_response, {"pid": os.getpid()})
    return _json_response(start_response, {"error": path}, "404 Not Found")


# --- conformance ----------------------------------------------------------------


def _conformance(environ: Environ, start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    stream = environ["wsgi.input"]
    environ["wsgi.errors"].write(f"conformance request {path}\n")
    environ["wsgi.errors"].flush()
    if path == "/read":
        parts = []
        while data := stream.read(1000):
            parts.append(data)
        body = b"".join(parts)
    elif path == "/readline":
        first = stream.readline()
        rest = stream.readlines()
        body = first + b"".join(rest)
    elif path == "/iter":
        body = b"".join(line for line in stream)
    elif path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        write(b"then returned")
        return []
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"line {i}\n".encode() for i in range(5))
    elif path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)
    else:
        keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL"]
        body = json.dumps({k: environ[k] for k in keys}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]
    )
    return [body]


validated_app = wsgiref.validate.validator(_conformance)

if __name__ == "__main__":  # pragma: no cover
    sys.exit("load with reuseport serve apps_wsgi:flask_app --app-dir tests")
