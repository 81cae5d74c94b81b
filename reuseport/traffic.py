"""Who gets new connections, and whose queue the siblings serve: the master's traffic tick.

Rules: lives in the master, so no event loop, no thread, no fork; it reads
the queues (``TCP_INFO`` through ``Listeners``), the heartbeats the arbiter
hands it and the load board, asks the pure deciders in ``steering.py``, and
carries their answers out on the listeners and the board.  Telling workers
to start or stop a rescue is the arbiter's (it owns the channels): ``tick``
returns what changed.

Three mechanisms share one sample of the queues per tick (every 20 ms):

- steering: which slots may receive new connections (``Steering``): ready,
  not draining, and with ``load`` not falling behind; applied as a cBPF
  program, or as the load board's active slots for the p2c program;
- the load board (p2c only): each slot's queue count re-anchored on the real
  queue (``LoadBoard.rebase``) and a penalty on a slot whose queue stands
  still or whose loop misses heartbeats;
- sibling rescue: a slot whose queue holds connections while its accept
  count stands still is served by the other workers until it accepts again
  (``Rescue``).

``setup`` decides which steering runs: ``auto`` takes p2c where the kernel
loads the eBPF program (CAP_BPF or CAP_SYS_ADMIN) and ``load`` otherwise.

All of it is for TCP groups: a UDP group's datagrams follow the kernel's hash
(steering them by load would split flows), and only a draining slot is steered
out of it (``listeners.py``).  A server with UDP binds only has nothing here.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .config import Config, Mode, SteeringKind
from .errors import errno_name
from .listeners import Listeners
from .loadboard import PENALTY_STALE, KernelSteering, LoadBoard
from .status import SlotLoadStatus, SteeringStatus
from .steering import Rescue, SiblingSample, Steering

__all__ = ["RescueChanges", "Traffic"]

log = logging.getLogger("reuseport.master")

TICK = 0.02  # seconds between samples of the queues, when anything samples them
RESCUE_STALL = 0.01  # a queue standing still this long (at least) is rescued

SHOWN = {
    SteeringKind.P2C: "p2c (eBPF: each new connection goes to the less loaded of two workers)",
    SteeringKind.LOAD: "load (cBPF: workers whose queue backs up are skipped)",
    SteeringKind.HASH: "hash (the kernel's choice)",
}


@dataclass(frozen=True, slots=True)
class RescueChanges:
    """Slots whose rescue starts, and slots whose rescue ends, at this tick."""

    started: tuple[int, ...] = ()
    ended: tuple[int, ...] = ()


class Traffic:
    """The master's steering and rescue state for one set of listeners."""

    def __init__(self, config: Config, mode: Mode, listeners: Listeners) -> None:
        self.listeners = listeners
        self.configured = config.steering
        # AUTO and P2C become P2C or LOAD once the kernel has said whether it
        # loads eBPF (``setup``); shared mode, and UDP groups, have nothing to steer.
        groups = mode is Mode.REUSEPORT and bool(config.tcp_binds)
        self.kind = config.steering if groups else SteeringKind.HASH
        self.steering = Steering(load_aware=self.kind is SteeringKind.LOAD)
        self.rescue = config.rescue and groups
        self.udp = mode is Mode.REUSEPORT and bool(config.udp_binds)
        self.decision = Rescue()
        self._warned = False
        self._lag = 0.0  # how late the master's timed waits end, smoothed (seconds)

    @property
    def ticking(self) -> bool:
        """Whether anything needs the short tick (the master otherwise wakes twice a second)."""
        return self.rescue or self.kind in (SteeringKind.LOAD, SteeringKind.P2C)

    @property
    def rescuing(self) -> set[int]:
        return set(self.decision.rescuing)

    # ------------------------------------------------------------------ start
    def setup(self, capacity: int) -> None:
        """Reuseport mode: load the p2c program where asked and allowed; make the load board.

        An explicit ``p2c`` that cannot load is a warning, ``auto`` says why
        in an info line; either way the fallback is ``load`` (cBPF, sampled).
        """
        if self.udp:
            log.info(
                "UDP binds: datagrams follow the kernel's hash (a flow stays with its worker); "
                "only a draining worker is steered out, by source address and port"
            )
        if self.kind is SteeringKind.HASH and not self.rescue:
            return
        listeners = self.listeners
        if self.kind in (SteeringKind.AUTO, SteeringKind.P2C):
            board: LoadBoard | None = None
            try:
                board = LoadBoard(capacity, ebpf=True)
                listeners.use_kernel_steering(KernelSteering(board, listeners.kernel_binds))
            except OSError as exc:
                if board is not None:
                    board.close()
                why = f"the kernel refused the eBPF program ({errno_name(exc)}"
                privilege = exc.errno in (errno.EPERM, errno.EACCES)
                why += ": it needs CAP_BPF or CAP_SYS_ADMIN)" if privilege else ")"
                if self.kind is SteeringKind.P2C:
                    log.warning("--steering p2c: %s; steering with load (cBPF) instead", why)
                else:
                    log.info("Steering: %s; using load (cBPF, sampled every 20 ms)", why)
                self._fall_back_to_load()
            else:
                self.kind = SteeringKind.P2C
        if self.rescue and listeners.board is None:
            listeners.use_board(LoadBoard(capacity, ebpf=False))
        log.info(
            "Steering: %s; sibling rescue %s", SHOWN[self.kind], "on" if self.rescue else "off"
        )

    def _fall_back_to_load(self) -> None:
        self.kind = SteeringKind.LOAD
        self.steering = Steering(load_aware=True)

    # ------------------------------------------------------------------ each tick
    def sample(self) -> dict[int, int]:
        """Each slot's accept-queue length now."""
        queues: dict[int, int] = {}
        for slot in self.listeners.order:
            depth = self.listeners.queue_depth(slot)
            queues[slot] = depth[0] if depth else 0
        return queues

    def allowed(
        self,
        serving: Collection[int],
        now: float,
        queues: Mapping[int, int] | None = None,
        beats: Mapping[int, float] | None = None,
    ) -> set[int]:
        """The slots that may get new connections (``serving``: slots a ready worker serves)."""
        if self.steering.load_aware and queues is None:
            queues = self.sample()
        return self.steering.decide(
            self.listeners.order,
            serving=serving,
            draining=self.listeners.draining,
            queues=queues or {},
            beat_ages=beats or {},
            now=now,
        )

    def tick(
        self, serving: Collection[int], beats: Mapping[int, float], now: float
    ) -> RescueChanges:
        """Sample once; steer, tend the board, decide the rescues.

        ``beats``: seconds since each serving slot's last heartbeat.
        """
        queues = self.sample()
        try:
            self.listeners.apply_steering(self.allowed(serving, now, queues, beats))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "--steering load: attaching the steering program failed (%s); new "
                    "connections follow the kernel's hash",
                    errno_name(exc),
                )
        if self.listeners.kernel is not None:
            self._tend_board(queues, beats, now)
        elif self.kind is SteeringKind.P2C:
            self._fall_back_to_load()  # the kernel refused the program after start
        return self._tend_rescue(queues, now) if self.rescue else RescueChanges()

    def woke_late(self, late: float) -> None:
        """The master's timed wait ended ``late`` seconds after it was due.

        A worker that does not accept for ``stall_after`` while connections
        wait is stalled, unless the whole machine is that slow to schedule
        anyone: then every worker looks stalled now and then, and rescuing
        would only add wake-ups and races.  So the rescue threshold is at
        least three times the master's recent scheduling delay (the worst
        one, fading by an eighth per tick).
        """
        self._lag = late if late > self._lag else (self._lag * 7 + late) / 8
        self.decision.stall_after = max(RESCUE_STALL, 3 * self._lag)

    def _tend_board(
        self, queues: Mapping[int, int], beats: Mapping[int, float], now: float
    ) -> None:
        """p2c: re-anchor each slot's queue count on the real queue; penalise stalled slots.

        The program compares loads, so a worker that stopped accepting keeps
        winning comparisons whenever a burst makes the others' queues as long
        as its own.  A slot whose queue stands still (or whose loop misses
        heartbeats) is therefore penalised until it moves again, the same
        judgement ``--steering load`` makes (``Steering.behind``).
        """
        board = self.listeners.board
        if board is None:
            return
        stalled = []
        for slot, queue in queues.items():
            if slot >= board.capacity:
                continue
            board.rebase(slot, queue)
            behind = self.steering.behind(slot, queue, beats.get(slot), now)
            board.set_penalty(slot, PENALTY_STALE if behind else 0)
            if behind:
                stalled.append(slot)
        self.steering.stalled = stalled

    def _tend_rescue(self, queues: Mapping[int, int], now: float) -> RescueChanges:
        """Which stalled slots' queues the siblings start or stop serving."""
        board = self.listeners.board
        if board is None:
            return RescueChanges()
        samples = [
            SiblingSample(slot=slot, queue=queue, accepted=board.accepted(slot))
            for slot, queue in queues.items()
            if slot < board.capacity and slot != self.listeners.draining
        ]
        before = set(self.decision.rescuing)
        wanted = self.decision.decide(samples, now)
        started = tuple(sorted(wanted - before))
        for slot in started:
            log.debug("Slot %d stopped accepting with connections queued: rescuing it", slot)
        return RescueChanges(started=started, ended=tuple(sorted(before - wanted)))

    # ------------------------------------------------------------------ status
    def status(self) -> SteeringStatus:
        return SteeringStatus(
            kind=self.configured,
            steered_away=tuple(self.listeners.steered_away()),
            stalled=tuple(self.steering.stalled),
            active=self.kind,
            rescue=self.rescue,
            rescuing=tuple(sorted(self.decision.rescuing)),
            loads=self._loads(),
        )

    def _loads(self) -> tuple[SlotLoadStatus, ...]:
        board = self.listeners.board
        if self.listeners.kernel is None or board is None:
            return ()
        now_ns = time.monotonic_ns()
        return tuple(
            SlotLoadStatus(
                slot=slot,
                load=board.load(slot, now_ns),
                queued=board.queued(slot),
                open=board.open(slot),
                cost=board.cost(slot),
                stalled=board.stalled(slot, now_ns),
            )
            for slot in sorted(self.listeners.order)
            if slot < board.capacity
        )
