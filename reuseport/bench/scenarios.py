"""The load shapes ``reuseport bench`` compares the listen modes under.

Rules: a scenario is data (what the clients send, whether they reconnect per
request, whether the runner disturbs the pool); the load generators and the
runner read it and never special-case a scenario by name.

Why each one exists:

* ``keepalive`` - long-lived connections, one request at a time each.  The
  listen mode only decides which worker *accepts* each connection, once, so
  this mostly measures the HTTP path; it shows how connections spread.
* ``connect`` - a new connection per request (``Connection: close``).  Every
  request goes through accept, so the kernel's choice of worker (reuseport:
  a hash of the 4-tuple; shared: whichever worker's epoll wakes first) shows
  up directly in per-worker counts and in tail latency.
* ``skewed`` - ``connect`` against ``/work?slot=0&ms=2``: the worker in slot 0
  burns 2 ms of CPU per request, the others answer at once.  Connection per
  request is chosen on purpose: with keep-alive, both modes pin a connection
  to one worker for its whole life, so they would look alike; with a connect
  per request, reuseport keeps hashing about 1/n of *new* connections into
  the busy worker's private queue (head-of-line blocking) while in shared
  mode the idle worker simply accepts more.
* ``stall`` - ``connect`` against ``/stall?slot=0&ms=200&every=1000``: the
  worker in slot 0 blocks its event loop for 200 ms once a second (a
  blocking call an app makes by mistake), and is fine in between.  With
  plain hashing, every connection hashed to it in those 200 ms waits; with
  sibling rescue or p2c steering they are served elsewhere.  p99 shows it,
  and the report counts the connections siblings rescued.
* ``churn`` - ``connect`` while the pool keeps changing the graceful ways:
  the runner sends HUP (rolling reload), TTIN (one worker more) and TTOU (one
  worker less: in reuseport mode its queue is steered away and drained
  first) in turn, one a second, and the server runs with ``--max-requests``
  so workers are also recycled during the run.  None of these may lose a
  request, so churn's errors should be 0 in both modes.
* ``udp`` (opt-in, ``--scenario udp``) - a UDP echo: the server gets a
  ``udp://`` bind beside its TCP one, and each client (a socket of its own,
  so its own 4-tuple) sends a datagram and waits for the answer before the
  next.  The demo answers with the worker that read it, so the spread is
  exact; a datagram unanswered within a second counts as lost.  In reuseport
  mode every worker reads its own socket and the kernel hashes each client to
  one; in shared mode every worker reads the one socket (and every datagram
  wakes them all).
* ``udp-churn`` (opt-in) - ``udp`` while the pool changes as in ``churn``
  (HUP, TTIN, TTOU, ``--max-requests``, which counts datagrams): a slot's
  socket outlives its workers and a retiring slot is steered out and drained
  first, so no datagram should be lost.
* ``churn-kill`` (opt-in, ``--churn-kill``) - ``connect`` while the runner
  SIGKILLs a worker that is serving, every ~1.5 s, and does nothing else.
  The requests a killed worker had already accepted are lost by definition;
  the report calls its errors "lost with killed workers", apart from churn's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ALL_SCENARIOS",
    "CHURN_KILL",
    "SCENARIOS",
    "UDP",
    "UDP_CHURN",
    "ChurnAction",
    "Scenario",
    "scenario_by_name",
]


class ChurnAction(enum.Enum):
    """What the runner does to the server during the churn scenario."""

    KILL = "kill"  # SIGKILL one worker pid seen in a response
    HUP = "hup"  # rolling reload
    TTIN = "ttin"  # one worker more
    TTOU = "ttou"  # one worker less


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    name: str
    summary: str
    path: str = "/"
    keepalive: bool = True  # False: a new connection per request
    churn: tuple[ChurnAction, ...] = ()  # cycled through while the load runs
    churn_interval: float = 1.5  # seconds between churn actions
    server_args: tuple[str, ...] = ()  # added to the server's `reuseport serve` command
    datagram: bool = False  # UDP datagrams to the server's udp:// bind, not HTTP requests

    @property
    def kills(self) -> bool:
        """SIGKILLs workers: its errors are requests lost with a killed worker."""
        return ChurnAction.KILL in self.churn

    @property
    def counts_accepts(self) -> bool:
        """Each request is its own connection, so requests per worker = accepts."""
        return not self.keepalive and not self.datagram


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="keepalive",
        summary="long-lived connections, one request at a time each",
    ),
    Scenario(
        name="connect",
        summary="a new connection per request (Connection: close)",
        keepalive=False,
    ),
    Scenario(
        name="skewed",
        summary="connection per request; slot 0 burns 2 ms of CPU per request",
        path="/work?slot=0&ms=2",
        keepalive=False,
    ),
    Scenario(
        name="stall",
        summary="connection per request; slot 0 blocks its loop for 200 ms once a second",
        path="/stall?slot=0&ms=200&every=1000",
        keepalive=False,
    ),
    Scenario(
        name="churn",
        summary="connection per request while workers are reloaded, added, removed and "
        "recycled (HUP, TTIN, TTOU, --max-requests)",
        keepalive=False,
        churn=(ChurnAction.HUP, ChurnAction.TTIN, ChurnAction.TTOU),
        churn_interval=1.0,
        # A few thousand connections per worker: recycles several times a run.
        server_args=("--max-requests", "3000", "--max-requests-jitter", "300"),
    ),
)

CHURN_KILL = Scenario(
    name="churn-kill",
    summary="connection per request while a serving worker is SIGKILLed every ~1.5 s",
    keepalive=False,
    churn=(ChurnAction.KILL,),
)

_UDP_BIND = ("--bind", "udp://127.0.0.1:0")

UDP = Scenario(
    name="udp",
    summary="UDP echo: each client sends a datagram and waits for its answer",
    datagram=True,
    server_args=_UDP_BIND,
)

UDP_CHURN = Scenario(
    name="udp-churn",
    summary="UDP echo while workers are reloaded, added, removed and recycled",
    datagram=True,
    churn=(ChurnAction.HUP, ChurnAction.TTIN, ChurnAction.TTOU),
    churn_interval=1.0,
    server_args=(*_UDP_BIND, "--max-requests", "30000", "--max-requests-jitter", "3000"),
)

# What --scenario accepts; SCENARIOS is the default set.
ALL_SCENARIOS: tuple[Scenario, ...] = (*SCENARIOS, UDP, UDP_CHURN, CHURN_KILL)


def scenario_by_name(name: str) -> Scenario:
    for scenario in ALL_SCENARIOS:
        if scenario.name == name:
            return scenario
    choices = ", ".join(s.name for s in ALL_SCENARIOS)
    raise ValueError(f"unknown scenario {name!r}: choose one of {choices}")
