"""An app whose import blocks (``tests/test_start_stop.py``): a worker stuck before its loop runs.

It says on stderr that the import has begun, then sleeps in the import (at
most 60 s), as a module doing blocking work at import time would.  Never
import it from a test (the constant it prints lives in ``apps_lifecycle``).
"""

import os
import sys
import time

from apps_lifecycle import IMPORT_BEGUN

print(f"{IMPORT_BEGUN} in pid {os.getpid()}", file=sys.stderr, flush=True)
time.sleep(60)


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    raise AssertionError("never served: the import does not finish in the test")
