"""The client side: ``query()`` a master's snapshot, and the ``reuseport status`` command.

Rules: every call has a deadline and closes its socket on every path; every
failure a user can cause is a ``ControlError`` whose message says what to do
(start a server, pass --control, run as the server's user).  ``run_status``
prints errors as one line and returns an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from typing import Any

from ..config import SECONDS
from ..errors import ControlError, ReuseportError, errno_name
from .paths import SOCKET_SUFFIX, default_control_dir, find_control_sockets
from .render import render_status

__all__ = ["add_status_arguments", "query", "run_status"]

_MAX_REPLY = 64 * 1024 * 1024  # bytes; a snapshot of thousands of workers is far less


def query(path: str, timeout: float = 2.0 * SECONDS) -> dict[str, Any]:
    """Ask the master at ``path`` for its snapshot.  Raises ControlError with the fix."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is the server running? "
                "(`reuseport status` without --control lists the running ones)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"nothing listens on {path}: the server that made it has exited "
                "(the file is stale and the next server will replace it)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: run `reuseport status` as the user that runs "
                "the server"
            ) from None
        # Something that answers and hangs up before reading our request is no
        # reuseport master, but what it sent is still ours to read and judge.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"status\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                # A Unix socket closed with unread data in it resets its peer
                # after the data: what arrived is the whole reply.
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_REPLY:
                raise ControlError(f"the reply from {path} is larger than {_MAX_REPLY} bytes")
    except TimeoutError:
        raise ControlError(
            f"the server at {path} did not answer within {timeout:g}s; it may be overloaded"
        ) from None
    except OSError as exc:
        raise ControlError(
            f"cannot talk to the control socket {path}: {errno_name(exc)} ({exc.strerror})"
        ) from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(
            f"{path} did not answer with a reuseport status (got {raw[:80]!r}); "
            "is it a reuseport control socket?"
        )
    if set(reply) == {"error"}:
        raise ControlError(f"the server at {path} answered: {reply['error']}")
    return reply


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    parser.add_argument(
        "--control",
        default=None,
        metavar="PATH",
        help="the server's control socket (default: the only one running for this user)",
    )


def run_status(args: argparse.Namespace) -> int:
    """``reuseport status``: print the live workers of a running master."""
    path: str | None = getattr(args, "control", None)
    if not path:
        try:
            directory = default_control_dir()
            found = find_control_sockets()
        except ReuseportError as exc:
            print(f"reuseport: {exc}", file=sys.stderr)
            return 1
        if not found:
            print(
                f"reuseport: no running reuseport server found in {directory} "
                "(start one with `reuseport serve`, or pass --control PATH)",
                file=sys.stderr,
            )
            return 1
        if len(found) > 1:
            lines = [
                f"reuseport: {len(found)} reuseport servers are running; pick one with "
                "--control PATH:"
            ]
            for candidate in found:
                stem = os.path.basename(candidate)[: -len(SOCKET_SUFFIX)]
                who = f"master {stem}" if stem.isdigit() else "server"
                lines.append(f"  {who}: --control {candidate}")
            print("\n".join(lines), file=sys.stderr)
            return 2
        path = found[0]
    try:
        snapshot = query(path)
    except ControlError as exc:
        print(f"reuseport: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(snapshot, indent=2) + "\n")
    else:
        sys.stdout.write(render_status(snapshot))
    return 0
