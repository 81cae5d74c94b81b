"""The master's control socket: the server, the ``reuseport status`` client, the renderer.

Modules: ``paths`` (where control sockets live, and why that place must be
private), ``server`` (``ControlServer``, polled by the master's loop),
``client`` (``query`` and the ``status`` command) and ``render`` (the human
report of a snapshot).  Layering: ``render`` knows only the snapshot's JSON
shape; ``client`` uses ``paths`` and ``render``; ``server`` uses ``paths``.
The master builds the snapshot; nothing here imports the master.
"""

from __future__ import annotations

from ..errors import ControlError
from ..sockets import listen_queue_depth
from .client import add_status_arguments, query, run_status
from .paths import default_control_dir, default_control_path, find_control_sockets
from .render import render_status
from .server import HANDLE_BUDGET, MAX_CLIENTS_PER_HANDLE, ControlServer

__all__ = [
    "HANDLE_BUDGET",
    "MAX_CLIENTS_PER_HANDLE",
    "ControlError",
    "ControlServer",
    "add_status_arguments",
    "default_control_dir",
    "default_control_path",
    "find_control_sockets",
    "listen_queue_depth",
    "query",
    "render_status",
    "run_status",
]
