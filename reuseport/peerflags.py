"""uvicorn's and gunicorn's flags that ``reuseport serve`` has no equivalent for.

Rules: pure data and one lookup; ``cli.main`` asks ``first_peer_flag`` before
argparse sees a ``serve`` command line, so someone who brings their uvicorn
or gunicorn command gets "--preload is gunicorn's: ... do this instead"
(exit 2) rather than argparse's bare "unrecognized arguments".  A few ask
for what reuseport does anyway (``NO_OPS``: uvicorn's ``--proxy-headers``):
those are accepted and dropped before parsing.  Flags that
have an equivalent under the same or another name are real options or
aliases in ``cli.py``, never here (a test checks that no name is both, and
that every flag of the README's "Coming from uvicorn or gunicorn" table is
one or the other).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "NO_OPS",
    "NO_OPS_WITH_VALUE",
    "PEER_FLAGS",
    "WORKER_CLASSES",
    "first_peer_flag",
    "peer_flag_message",
    "without_no_ops",
]

_SYSLOG = "give --log-config with a logging.handlers.SysLogHandler"
_STATSD = "metrics are Prometheus here: give --metrics HOST:PORT (served by the master)"

# flag -> (whose, what to do instead)
PEER_FLAGS: dict[str, tuple[str, str]] = {
    "--use-colors": ("uvicorn", "the log is plain lines; leave it out"),
    "--no-proxy-headers": (
        "uvicorn",
        "to trust no peer's X-Forwarded-* headers, give --forwarded-allow-ips ''",
    ),
    "--h11-max-incomplete-event-size": (
        "uvicorn",
        "a request head is bounded by --limit-request-line, --limit-request-fields and "
        "--limit-request-field-size",
    ),
    "--http": ("uvicorn", "there is one HTTP/1.1 implementation (httptools); leave it out"),
    "--ssl-version": (
        "uvicorn's and gunicorn's",
        "TLS 1.2 and 1.3 are offered (Python's defaults); leave it out",
    ),
    "-k": (
        "gunicorn",
        "every worker is an asyncio worker and the app's kind is detected (or given with "
        "--interface), so -k is accepted only for uvicorn's UvicornWorker. A WSGI app "
        "runs on --threads per worker (default 8): for -k sync, or -k gthread without "
        "--threads (one request at a time), give --threads 1; for -k gthread --threads N, "
        "--threads N; then leave -k out. A gevent or eventlet worker has no equivalent here",
    ),
    "--worker-connections": (
        "gunicorn",
        "each worker runs one event loop; --limit-concurrency bounds its requests",
    ),
    "--preload": (
        "gunicorn",
        "the master never imports the app (so a HUP reloads everything); leave it out",
    ),
    "-D": ("gunicorn", "run it under systemd, a container or a supervisor"),
    "-c": ("gunicorn", "the settings file is --config FILE.toml (keys are the long flag names)"),
    "--log-config-json": ("gunicorn", "give --log-config FILE.json"),
    "--log-syslog": ("gunicorn", _SYSLOG),
    "--log-syslog-to": ("gunicorn", _SYSLOG),
    "--log-syslog-prefix": ("gunicorn", _SYSLOG),
    "--log-syslog-facility": ("gunicorn", _SYSLOG),
    "--logger-class": ("gunicorn", "give --log-config naming your own handler class"),
    "--statsd-host": ("gunicorn", _STATSD),
    "--statsd-prefix": ("gunicorn", _STATSD),
    "--dogstatsd-tags": ("gunicorn", _STATSD),
    "--paste": ("gunicorn", "PasteDeploy is not read: give the WSGI app as MODULE:ATTRIBUTE"),
    "--proxy-allow-from": (
        "gunicorn",
        "--forwarded-allow-ips is the one trust list, for PROXY headers and X-Forwarded-*",
    ),
    "-m": (
        "gunicorn",
        "a Unix socket file's mode is --uds-mode (octal); for the umask, set it before starting",
    ),
    "--umask": (
        "gunicorn",
        "a Unix socket file's mode is --uds-mode (octal); for the umask, set it before starting",
    ),
    "--reuse-port": (
        "gunicorn",
        "per-worker SO_REUSEPORT sockets are --mode reuseport (the default where the "
        "kernel balances them)",
    ),
    "--reload-extra-file": ("gunicorn", "give --reload-include (a glob) or --reload-dir"),
}
# Long spellings that mean the same as a short one above.
PEER_FLAGS["--worker-class"] = PEER_FLAGS["-k"]
PEER_FLAGS["--daemon"] = PEER_FLAGS["-D"]


# Flags that ask for what reuseport does anyway: accepted, and dropped before
# argparse (FastAPI's and uvicorn's deployment guides put them in commands).
NO_OPS: dict[str, str] = {
    "--proxy-headers": "X-Forwarded-For and -Proto are honoured from --forwarded-allow-ips",
    "--no-use-colors": "the log is plain lines",
}
# The same for flags that take a value (gunicorn's Docker advice puts
# --worker-tmp-dir /dev/shm in commands: our heartbeat is in shared memory).
NO_OPS_WITH_VALUE: dict[str, str] = {
    "--worker-tmp-dir": "the heartbeat is in shared memory, never in a file",
}


# gunicorn worker classes that ask for what every reuseport worker is: an
# asyncio worker hosting an ASGI app.  (sync and gthread are not among them:
# they serve one request at a time unless --threads says otherwise, and a
# WSGI app here runs on 8 threads by default; silently accepting them would
# change an app's concurrency.)
WORKER_CLASSES = frozenset(
    {
        "uvicorn.workers.UvicornWorker",
        "uvicorn.workers.UvicornH11Worker",
        "uvicorn_worker.UvicornWorker",
        "uvicorn_worker.UvicornH11Worker",
    }
)


def _attached_class(arg: str) -> str | None:
    """The worker class of ``--worker-class=X`` or ``-kX``; None for any other argument."""
    if arg.startswith("--worker-class="):
        return arg.partition("=")[2]
    if arg.startswith("-k") and len(arg) > 2:
        return arg[2:]
    return None


def without_no_ops(args: Sequence[str]) -> list[str]:
    """``args`` without the ``NO_OPS`` flags and accepted ``-k`` classes (before ``--``)."""
    kept: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return kept + list(args[index:])
        if arg in NO_OPS:
            index += 1
            continue
        if arg in NO_OPS_WITH_VALUE and index + 1 < len(args):
            index += 2
            continue
        if arg.partition("=")[0] in NO_OPS_WITH_VALUE and "=" in arg:
            index += 1
            continue
        if arg in ("-k", "--worker-class") and index + 1 < len(args):
            if args[index + 1] in WORKER_CLASSES:
                index += 2
                continue
        elif _attached_class(arg) in WORKER_CLASSES:
            index += 1
            continue
        kept.append(arg)
        index += 1
    return kept


def first_peer_flag(args: Sequence[str]) -> str | None:
    """The first argument (before ``--``) that is a flag of ``PEER_FLAGS``, ``=value`` or not."""
    for arg in args:
        if arg == "--":
            return None
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in PEER_FLAGS:
            return name
        if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and arg[:2] in PEER_FLAGS:
            return arg[:2]  # a short flag with its value attached: -kgthread
    return None


def peer_flag_message(flag: str) -> str:
    who, instead = PEER_FLAGS[flag]
    whose = who if who.endswith("'s") else f"{who}'s"
    return (
        f"{flag} is {whose} option, not reuseport's: {instead} "
        "(the README's 'Coming from uvicorn or gunicorn' maps every flag)"
    )
