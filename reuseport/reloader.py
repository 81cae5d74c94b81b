"""``--reload``: watch the app's files in a child process, tell the master over a pipe.

Rules: the master has no thread and no event loop, and watching files
(``watchfiles``, the optional ``reload`` extra) runs a thread.  So the
arbiter forks a *watcher* child at start, before it binds anything (it
inherits no socket), and keeps the read end of a pipe in its ``poll()`` set.
The watcher writes ``watching`` once its watches are in place, then one
``changed PATHS`` line per batch of changes; the master logs the first and,
for each of the others, does what SIGHUP does: a rolling reload.  That path
already keeps the old workers serving when a new one cannot import the app
(a syntax error) and logs why, so a broken edit never takes the server down,
and the next good edit reloads again.  Only ``arbiter.py`` forks: this module
has the watcher's body (``run_watcher``) and the master's end (``Watcher``).

The watcher leaves when the master does: it checks its parent every second
(``watchfiles`` wakes it that often) and a write to a closed pipe ends it.

What counts as a change, as with uvicorn: a file whose name or relative path
matches an include glob (``*.py``, plus ``--reload-include``) and no exclude
glob (``.*``, ``.py[cod]``, ``.sw.*``, ``~*``, plus ``--reload-exclude``),
outside hidden folders, ``__pycache__`` and virtualenvs (a folder holding
``pyvenv.cfg``).  ``ReloadFilter`` is pure apart from that last check, and
is tested without processes.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import ipaddress
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

from .config import BindAddress, Config, ProcessManager
from .errors import ConfigError

__all__ = [
    "CHANGED",
    "WATCHING",
    "ReloadFilter",
    "Watcher",
    "check",
    "run_watcher",
    "warnings",
    "watch_dirs",
    "watch_options",
]

log = logging.getLogger("reuseport.master")

_CHECK_PARENT_MS = 1000  # the watcher wakes this often to see whether the master lives
_MAX_LINE = 4000  # one write below PIPE_BUF is atomic
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})
# What the watcher writes on its pipe, one line each.
WATCHING = "watching"
CHANGED = "changed "


def watch_dirs(config: Config) -> list[str]:
    """The folders to watch, absolute: ``--reload-dir``, else ``--app-dir``."""
    dirs = config.reload_dirs or (config.app_dir,)
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def check(config: Config) -> None:
    """Refuse ``--reload`` that cannot work: no extra installed, a folder missing."""
    if not config.reload:
        return
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError("--reload needs the watchfiles package: pip install 'reuseport[reload]'")
    for folder in watch_dirs(config):
        if not os.path.isdir(folder):
            raise ConfigError(f"--reload-dir {folder!r} is not a folder")


def warnings(config: Config) -> list[str]:
    """What to warn about when ``--reload`` runs in a setup that looks like production."""
    if not config.reload:
        return []
    found = []
    if config.workers > 1 and config.pm is ProcessManager.STATIC:
        found.append(
            f"--reload with {config.workers} workers: every change restarts all of them; "
            "one is enough for development (-w 1)"
        )
    public = [str(b) for b in config.binds if isinstance(b, BindAddress) and not _loopback(b)]
    if public or config.user is not None or config.pm is not ProcessManager.STATIC:
        why = f"listening on {', '.join(public)}" if public else "a production-like setup"
        found.append(
            f"--reload is for development ({why}): it watches files and restarts the "
            "workers on every change; do not use it in production"
        )
    return found


def _loopback(bind: BindAddress) -> bool:
    return ipaddress.ip_address(bind.host).is_loopback


class ReloadFilter:
    """``(change, path) -> bool``: does a change of ``path`` call for a reload."""

    def __init__(
        self, roots: Sequence[str], includes: Iterable[str], excludes: Iterable[str]
    ) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)
        self._venvs: dict[str, bool] = {}

    def __call__(self, change: object, path: str) -> bool:
        path = os.path.abspath(path)
        root = self._root_of(path)
        relative = PurePath(os.path.relpath(path, root) if root else os.path.basename(path))
        for part in relative.parts[:-1]:
            if part.startswith(".") or part in _SKIPPED_DIRS:
                return False
        if not any(relative.match(pattern) for pattern in self.includes):
            return False
        if any(relative.match(pattern) for pattern in self.excludes):
            return False
        return not (root and self._in_venv(os.path.dirname(path), root))

    def _root_of(self, path: str) -> str | None:
        best = None
        for root in self.roots:
            if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and (
                best is None or len(root) > len(best)
            ):
                best = root
        return best

    def _in_venv(self, folder: str, root: str) -> bool:
        """Some folder from ``folder`` up to ``root`` holds a ``pyvenv.cfg``."""
        while True:
            known = self._venvs.get(folder)
            if known is None:
                known = os.path.exists(os.path.join(folder, "pyvenv.cfg"))
                self._venvs[folder] = known
            if known:
                return True
            if folder == root or len(folder) <= len(root):
                return False
            folder = os.path.dirname(folder)


def watch_options(config: Config) -> dict[str, Any]:
    """How the watcher calls ``watchfiles.watch`` besides the folders and the filter."""
    return {
        # Changes within --reload-delay make one batch, hence one reload.
        "debounce": max(50, round(config.reload_delay * 1000)),
        "rust_timeout": _CHECK_PARENT_MS,
        "yield_on_timeout": True,
        "raise_interrupt": False,
    }


def run_watcher(config: Config, master_pid: int, write_fd: int) -> int:
    """The watcher child's body: watch, write a line per batch of changes, exit with the master."""
    # Ctrl-C in a terminal reaches the whole process group: the master stops
    # gracefully and then ends us, so the interrupt itself is not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import setproctitle
    import watchfiles

    name = config.proc_name or config.app_label
    setproctitle.setproctitle(f"reuseport: reload watcher [{name}]")
    dirs = watch_dirs(config)
    accept = ReloadFilter(dirs, config.effective_reload_includes, config.effective_reload_excludes)
    announced = False
    # The watches exist once the generator first yields (after at most
    # _CHECK_PARENT_MS): only then is "watching" true.
    for changes in watchfiles.watch(*dirs, watch_filter=accept, **watch_options(config)):
        if os.getppid() != master_pid:
            return 0
        lines = []
        if not announced:
            announced = True
            lines.append(WATCHING)
        if changes:
            paths = sorted({_shown(path, dirs) for _change, path in changes})
            lines.append(CHANGED + ", ".join(paths))
        for line in lines:
            try:
                os.write(write_fd, line.encode("utf-8", "replace")[:_MAX_LINE] + b"\n")
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    return 0  # the master is gone
                raise
    return 0


def _shown(path: str, roots: Sequence[str]) -> str:
    for root in roots:
        if path.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, root)
    return path


class Watcher:
    """The master's end of the watcher: its pid and the pipe it writes to."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self.fd = read_fd
        self.alive = True  # False once the arbiter has reaped it
        self._partial = b""

    def changes(self) -> tuple[bool, list[str], bool]:
        """What the watcher wrote since the last call, never blocking.

        (whether it has just begun watching, the batches of changed paths
        (one string each), whether it is gone: the pipe reached EOF).
        """
        lines, eof = self.read()
        changed = [line.removeprefix(CHANGED) for line in lines if line != WATCHING]
        return WATCHING in lines, changed, eof

    def read(self) -> tuple[list[str], bool]:
        """(complete lines waiting, whether the pipe reached EOF).  Never blocks."""
        lines: list[str] = []
        eof = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                eof = True
                break
            self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        lines.extend(line.decode("utf-8", "replace") for line in complete if line)
        return lines, eof

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
