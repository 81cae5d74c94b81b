"""An ASGI app that cannot be imported once a file exists (``tests/test_max_requests.py``).

``$LIFECYCLE_FAIL_MARKER`` names the file: workers started before it exists
serve ``{"pid": <worker pid>}``; a worker started after it fails its import,
as a deploy of broken code would make a recycle's new worker fail.
"""

import json
import os
from typing import Any

if os.path.exists(os.environ["LIFECYCLE_FAIL_MARKER"]):
    raise RuntimeError("apps_fail_later: the marker file exists, refusing to start")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid()}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
