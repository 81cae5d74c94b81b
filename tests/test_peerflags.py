"""uvicorn's and gunicorn's flags without an equivalent: a message saying what to do.

``reuseport/peerflags.py`` holds them; ``cli.main`` refuses them before
argparse does.  The README's "Coming from uvicorn or gunicorn" table is
checked against the parser and the list, so neither drifts from it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from reuseport.cli import main, make_parser
from reuseport.peerflags import (
    NO_OPS,
    NO_OPS_WITH_VALUE,
    PEER_FLAGS,
    first_peer_flag,
    without_no_ops,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def _serve_options() -> set[str]:
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in sub.choices["serve"]._actions for option in action.option_strings}


@pytest.mark.parametrize("flag", sorted(PEER_FLAGS))
def test_each_peer_flag_stops_the_start_with_what_to_do(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "app:app", flag, "value"]) == 2
    err = capsys.readouterr().err
    who, instead = PEER_FLAGS[flag]
    assert err.startswith(f"reuseport: error: {flag} is {who}")
    assert instead in err
    assert "unrecognized arguments" not in err
    assert "Traceback" not in err


def test_no_peer_flag_is_also_one_of_ours() -> None:
    assert not set(PEER_FLAGS) & _serve_options()
    assert not set(NO_OPS) & _serve_options()
    assert not set(NO_OPS) & set(PEER_FLAGS)
    assert not set(NO_OPS_WITH_VALUE) & (_serve_options() | set(PEER_FLAGS) | set(NO_OPS))


def test_flags_asking_for_what_we_do_anyway_are_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # (--print-config stops before anything starts, and shows the result.)
    plain = main(["serve", "--print-config", "-w", "2"])
    plain_out = capsys.readouterr().out
    accepted = ["--proxy-headers", "--worker-tmp-dir", "/dev/shm", "--worker-tmp-dir=/tmp"]
    assert main(["serve", *accepted, "--print-config", "--no-use-colors", "-w", "2"]) == 0
    assert plain == 0
    assert capsys.readouterr().out == plain_out  # nothing changed
    assert without_no_ops(["--proxy-headers", "a:b", "--", "--proxy-headers"]) == [
        "a:b",
        "--",
        "--proxy-headers",
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        ["-k", "uvicorn.workers.UvicornWorker"],
        ["--worker-class", "uvicorn_worker.UvicornWorker"],
        ["--worker-class=uvicorn.workers.UvicornH11Worker"],
        ["-kuvicorn.workers.UvicornWorker"],
    ],
)
def test_worker_classes_that_mean_an_asyncio_worker_are_accepted(
    spelling: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # gunicorn -k uvicorn.workers.UvicornWorker -w 4 app:app, as deployment guides write it
    assert without_no_ops(["app:app", *spelling, "-w", "4"]) == ["app:app", "-w", "4"]
    assert main(["serve", *spelling, "--print-config", "-w", "2"]) == 0
    assert "workers = 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spelling",
    [["-k", "gevent"], ["--worker-class=eventlet"], ["-kgevent"], ["-k", "sync"], ["-kgthread"]],
)
def test_other_worker_classes_are_refused_with_what_to_do(
    spelling: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # (sync and gthread serve one request at a time unless --threads says
    # otherwise: accepting them silently would change a WSGI app's concurrency.)
    assert main(["serve", "app:app", *spelling]) == 2
    err = capsys.readouterr().err
    assert "is gunicorn's option, not reuseport's" in err
    assert "give --threads 1" in err
    assert "A gevent or eventlet worker has no equivalent here" in err


def test_every_flag_of_the_readme_table_is_ours_or_explained() -> None:
    text = README.read_text()
    table = text.split("## Coming from uvicorn or gunicorn", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    flags: set[str] = set()
    for row in rows[1:]:  # after the header row
        left = row.split(" | ", 1)[0]
        for quoted in re.findall(r"`([^`]+)`", left):
            for word in re.split(r"[ /,]+", quoted):
                word = word.rstrip("*")
                if re.fullmatch(r"--?[A-Za-z][\w-]*", word):
                    flags.add(word)
    assert len(flags) > 60  # the table was found and read
    ours = _serve_options()
    # (--log-syslog* stands for gunicorn's four --log-syslog flags.)
    known = ours | set(PEER_FLAGS) | set(NO_OPS) | set(NO_OPS_WITH_VALUE)
    unexplained = sorted(f for f in flags if f not in known)
    assert not unexplained, (
        f"README flags that are neither options nor in PEER_FLAGS: {unexplained}"
    )


def test_the_lookup_reads_flags_not_values() -> None:
    assert first_peer_flag(["app:app", "--preload"]) == "--preload"
    assert first_peer_flag(["--statsd-host=127.0.0.1:8125"]) == "--statsd-host"
    assert first_peer_flag(["-kgthread"]) == "-k"
    assert first_peer_flag(["-w", "2", "--root-path", "/api", "app:app"]) is None
    assert first_peer_flag(["app:app", "--", "--preload"]) is None  # after --: not flags
    assert first_peer_flag(["-b", "127.0.0.1:0", "--workers=2"]) is None


def test_other_commands_are_left_to_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["probe", "--preload"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --preload" in capsys.readouterr().err
