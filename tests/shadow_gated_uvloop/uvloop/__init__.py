"""Stands in for uvloop in ``test_start_stop.py``: holds a worker before its event loop runs.

A worker imports uvloop after the fork and before its loop exists (it picks
the loop), the window where a stop signal used to kill it.  This module
writes the importing pid to the file ``$LIFECYCLE_GATE_MARKER``, then blocks
opening the FIFO ``$LIFECYCLE_GATE`` until the test opens it for writing,
then fails as in an install without uvloop (the worker falls back to the
asyncio loop).
"""

import os

with open(os.environ["LIFECYCLE_GATE_MARKER"], "w") as marker:
    marker.write(str(os.getpid()))
with open(os.environ["LIFECYCLE_GATE"]) as gate:  # blocks until the test opens it
    gate.read()
raise ImportError("uvloop is hidden by the test (held at the gate, then refused)")
