"""``--env-file``: dotenv-style ``KEY=VALUE`` lines for each worker's environment.

Rules: ``parse`` is pure and raises ``ConfigError`` naming the file and the
line.  ``load`` reads the file (a missing file is a ``ConfigError`` with the
path); the master loads it once at start only to refuse a bad file early,
and each worker loads it again and ``apply``-s it before importing the app,
so a reload (SIGHUP) picks up an edited file.  Variables already set in the
environment win over the file, as with uvicorn (python-dotenv's default).

The syntax, the common subset of dotenv files: blank lines and ``#``
comments; an optional ``export`` in front; ``KEY=VALUE`` with spaces around
``=`` allowed; a value in single quotes is taken literally, one in double
quotes understands ``\\n``, ``\\t``, ``\\"`` and ``\\\\``; an unquoted value ends at
`` #`` (a comment) and is stripped.  No ``${VAR}`` expansion.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from .errors import ConfigError, errno_name

__all__ = ["apply", "load", "parse"]

_LINE = re.compile(r"^(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _unquote(value: str, where: str) -> str:
    if value[:1] == "'":
        end = value.find("'", 1)
        if end < 0:
            raise ConfigError(f"{where}: the single quote is not closed")
        return value[1:end]
    if value[:1] == '"':
        out: list[str] = []
        i = 1
        while i < len(value):
            char = value[i]
            if char == "\\" and i + 1 < len(value):
                out.append(_ESCAPES.get(value[i + 1], "\\" + value[i + 1]))
                i += 2
                continue
            if char == '"':
                return "".join(out)
            out.append(char)
            i += 1
        raise ConfigError(f"{where}: the double quote is not closed")
    comment = value.find(" #")
    if comment >= 0:
        value = value[:comment]
    return value.strip()


def parse(text: str, path: str = "--env-file") -> dict[str, str]:
    """The variables of a dotenv file's ``text``; later lines win."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        where = f"--env-file {path!r} line {number}"
        if match is None:
            raise ConfigError(f"{where}: expected KEY=VALUE, got {raw.strip()!r}")
        values[match["key"]] = _unquote(match["value"], where)
    return values


def load(path: str) -> dict[str, str]:
    """Read and parse the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read --env-file {path!r}: {exc.strerror} ({errno_name(exc)})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--env-file {path!r} is not UTF-8 text") from None
    return parse(text, path)


def apply(path: str | None, environ: MutableMapping[str, str] | None = None) -> int:
    """Put the file's variables into ``environ`` (default ``os.environ``), unset ones only.

    Returns how many were set.  Nothing happens when ``path`` is None.
    """
    if path is None:
        return 0
    env = os.environ if environ is None else environ
    count = 0
    for key, value in load(path).items():
        if key not in env:
            env[key] = value
            count += 1
    return count
