"""reuseport: a prefork server for asyncio applications on Linux.

A master forks workers; in reuseport mode every worker listens on its own
SO_REUSEPORT socket bound to the same address, in shared mode all workers
accept from one socket the master bound.  See README.md.
"""

from __future__ import annotations

from .config import (
    Bind,
    BindAddress,
    Config,
    FdBind,
    Interface,
    Mode,
    ProcessManager,
    UnixBind,
    parse_bind,
)
from .errors import ExitCode, ReuseportError

__version__ = "0.1.0"

__all__ = [
    "Bind",
    "BindAddress",
    "Config",
    "ExitCode",
    "FdBind",
    "Interface",
    "Mode",
    "ProcessManager",
    "ReuseportError",
    "UnixBind",
    "__version__",
    "parse_bind",
]
