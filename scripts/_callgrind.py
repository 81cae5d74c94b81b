"""Run a script under ``valgrind --tool=callgrind`` and read its instruction total.

Shared by ``profile_http.py`` and ``profile_ws.py`` (each runs itself twice,
N and 2N iterations, and divides the difference).  ``PYTHONHASHSEED=0`` keeps
the count the same from run to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

_SUMMARY = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def instructions(script: str, args: list[str], out: Path, timeout: float) -> int:
    """Instructions ``python script args`` executed; raises RuntimeError if it failed."""
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, str(Path(script).resolve()), *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    match = _SUMMARY.search(out.read_text())
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))
