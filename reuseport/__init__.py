"""reuseport: a prefork server for asyncio applications on Linux.

A master forks workers; in reuseport mode every worker listens on its own
SO_REUSEPORT socket bound to the same address, in shared mode all workers
accept from one socket the master bound.  See README.md.

The names below are imported when first used: importing the package alone
stays cheap, so ``python -m reuseport serve`` installs its signal handlers
before the configuration module is even loaded (see ``signals.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

_ERRORS = frozenset({"ExitCode", "ReuseportError"})


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(".errors" if name in _ERRORS else ".config", __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value
