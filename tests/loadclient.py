"""A bounded load client that records the outcome of every request.

Run as a process (``python tests/loadclient.py --port P --duration S``) so the
test's own process stays free to send signals.  Each request uses a new
connection (``Connection: close``), the worst case for a server that loses
queued connections.  Prints one JSON object: counts of outcomes, by kind, and
requests per worker pid.

``--keep-alive``: each client keeps its connection for request after request
and opens a new one only when the server answers ``Connection: close``.  It
never retries: a reused connection closed or reset before its answer is an
error (``empty``, ``reset``), so a server must only close after an answer
that says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: loadclient\r\nConnection: close\r\n\r\n"
KEEP_ALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: loadclient\r\n\r\n"


async def one(host: str, port: int, timeout: float) -> tuple[str, int | None]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return "refused", None
    except TimeoutError:
        return "connect_timeout", None
    except OSError as exc:
        return f"connect_{type(exc).__name__}", None
    try:
        writer.write(REQUEST)
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return "reset", None
    except TimeoutError:
        return "timeout", None
    except OSError as exc:
        return f"io_{type(exc).__name__}", None
    finally:
        writer.close()
    if not data:
        return "empty", None
    head, _, body = data.partition(b"\r\n\r\n")
    return _answer(head, body)


def _answer(head: bytes, body: bytes) -> tuple[str, int | None]:
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.") else b""
    if status != b"200":
        return f"status_{status.decode(errors='replace') or 'none'}", None
    try:
        return "ok", int(json.loads(body)["pid"])
    except (ValueError, KeyError, TypeError):
        return "bad_body", None


class KeepAlive:
    """One client's connection, reused until the server says ``Connection: close``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.connections = 0

    async def one(self) -> tuple[str, int | None]:
        if self.streams is None:
            try:
                self.streams = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            except TimeoutError:
                return "connect_timeout", None
            except OSError as exc:
                return f"connect_{type(exc).__name__}", None
            self.connections += 1
        reader, writer = self.streams
        try:
            writer.write(KEEP_ALIVE_REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
            body = await asyncio.wait_for(
                reader.readexactly(int(fields.get(b"content-length", b"0"))), self.timeout
            )
        except asyncio.IncompleteReadError as exc:
            self.close()
            return ("empty" if not exc.partial else "partial"), None
        except ConnectionResetError:
            self.close()
            return "reset", None
        except TimeoutError:
            self.close()
            return "timeout", None
        except OSError as exc:
            self.close()
            return f"io_{type(exc).__name__}", None
        if fields.get(b"connection") == b"close":
            self.close()
        return _answer(head, body)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def run(
    host: str, port: int, duration: float, concurrency: int, timeout: float, keep_alive: bool
) -> dict[str, object]:
    outcomes: collections.Counter[str] = collections.Counter()
    pids: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + duration
    opened = 0

    async def client() -> None:
        nonlocal opened
        conn = KeepAlive(host, port, timeout) if keep_alive else None
        while time.monotonic() < deadline:
            if conn is not None:
                kind, pid = await conn.one()
            else:
                kind, pid = await one(host, port, timeout)
            outcomes[kind] += 1
            if pid is not None:
                pids[pid] += 1
        if conn is not None:
            conn.close()
            opened += conn.connections

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "total": sum(outcomes.values()),
        "ok": outcomes["ok"],
        "failed": sum(v for k, v in outcomes.items() if k != "ok"),
        "outcomes": dict(outcomes),
        "pids": {str(k): v for k, v in pids.items()},
        "connections": opened if keep_alive else sum(outcomes.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--keep-alive", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.host, args.port, args.duration, args.concurrency, args.timeout, args.keep_alive)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
