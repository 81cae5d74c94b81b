"""A bounded load client that records the outcome of every request.

Run as a process (``python tests/loadclient.py --port P --duration S``) so the
test's own process stays free to send signals.  Each request uses a new
connection (``Connection: close``), the worst case for a server that loses
queued connections.  Prints one JSON object: counts of outcomes, by kind, and
requests per worker pid.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: loadclient\r\nConnection: close\r\n\r\n"


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
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.") else b""
    if status != b"200":
        return f"status_{status.decode(errors='replace') or 'none'}", None
    try:
        pid = int(json.loads(body)["pid"])
    except (ValueError, KeyError, TypeError):
        return "bad_body", None
    return "ok", pid


async def run(
    host: str, port: int, duration: float, concurrency: int, timeout: float
) -> dict[str, object]:
    outcomes: collections.Counter[str] = collections.Counter()
    pids: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + duration

    async def client() -> None:
        while time.monotonic() < deadline:
            kind, pid = await one(host, port, timeout)
            outcomes[kind] += 1
            if pid is not None:
                pids[pid] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "total": sum(outcomes.values()),
        "ok": outcomes["ok"],
        "failed": sum(v for k, v in outcomes.items() if k != "ok"),
        "outcomes": dict(outcomes),
        "pids": {str(k): v for k, v in pids.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.host, args.port, args.duration, args.concurrency, args.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
