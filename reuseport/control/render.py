"""``render_status``: the human report of a status snapshot.

Rules: rendering only, from the JSON dict a master sends (so it also renders
a snapshot from an older or newer master): a missing key shows as '-', an
unknown key is ignored, a value of the wrong type never raises.  Sections
appear in a fixed order: the master line, the pool line, the events line
(when the master counts events), the worker table with its total row, then
the UDP sockets (when the server has ``udp://`` binds): each one's receive
queue in bytes and the datagrams it dropped, from ``/proc/net/udp``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["render_status"]


def _duration(value: object) -> str:
    """12.3s, 5m03s, 1h02m, 3d04h; '-' when unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    seconds = max(0.0, float(value))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _seconds(value: object) -> str:
    """A configured duration: 30s, 2.5s."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:g}s"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pool_line(pool: Mapping[str, Any], generation: object) -> str:
    pm = _cell(pool.get("pm", "?"))
    details = [f"target {_cell(pool.get('target'))}"]
    if pm in {"dynamic", "ondemand"}:
        details.append(f"max {_cell(pool.get('max_workers'))}")
    if pm == "dynamic":
        details.append(f"spare {_cell(pool.get('min_spare'))}..{_cell(pool.get('max_spare'))}")
    if pm == "ondemand":
        details.append(f"idle-timeout {_seconds(pool.get('idle_timeout'))}")
    max_requests = pool.get("max_requests")
    recycle = f"max-requests {max_requests}" if max_requests else "max-requests off"
    timeout = pool.get("timeout")
    beat = f"heartbeat timeout {_seconds(timeout)}" if timeout else "heartbeat off"
    parts = [
        f"pool: {pm}, {_cell(pool.get('running'))} running ({', '.join(details)})",
        recycle,
        beat,
    ]
    if generation is not None:
        parts.append(f"generation {_cell(generation)}")
    return ", ".join(parts) + "\n"


# The causes in the order the master's snapshot schema lists them; a cause
# this renderer does not know (a newer master) follows, sorted.
_SPAWN_CAUSES = ("start", "respawn", "reload", "recycle", "scale")
_EXIT_CAUSES = ("crash", "heartbeat", "recycle", "reload", "scale", "stop", "boot")


def _count(value: object) -> str:
    """A counter: a whole number, '-' when missing, '?' for anything else."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return "?"


def _by_cause(label: str, raw: object, order: tuple[str, ...]) -> str:
    """``spawns 12 (start 2, scale 10)``: the total, then every cause that is not 0."""
    if not isinstance(raw, Mapping):
        return f"{label} -"
    causes = [name for name in order if name in raw]
    causes += sorted((name for name in raw if name not in order), key=str)
    total = sum(v for v in raw.values() if isinstance(v, int) and not isinstance(v, bool))
    details = [f"{name} {_count(raw[name])}" for name in causes if raw[name] != 0]
    return f"{label} {total}" + (f" ({', '.join(details)})" if details else "")


def _counted(value: object, noun: str) -> str:
    """``1 reload``, ``3 reloads``, ``- reloads``."""
    return f"{_count(value)} {noun}{'' if value == 1 and value is not True else 's'}"


def _events_line(events: Mapping[str, Any]) -> str:
    """The master's event counters in one line (the snapshot's ``events``)."""
    reloads = _counted(events.get("reloads"), "reload")
    failed = events.get("reloads_failed")
    if failed is not None and failed != 0:
        reloads += f" ({_count(failed)} failed)"
    parts = [
        reloads,
        _counted(events.get("recycles"), "recycle"),
        _counted(events.get("drains"), "drain"),
        *([_counted(events.get("rescues"), "rescue")] if "rescues" in events else []),
        _by_cause("spawns", events.get("spawns"), _SPAWN_CAUSES),
        _by_cause("exits", events.get("exits"), _EXIT_CAUSES),
    ]
    return "events: " + ", ".join(parts) + "\n"


_STEERING_SHOWN = {
    "p2c": "p2c (eBPF, per connection)",
    "load": "load (cBPF, sampled)",
    "hash": "hash (the kernel's)",
}


def _steering_line(steering: Mapping[str, Any]) -> str:
    """Which steering runs, whether siblings rescue, and who is kept from new connections."""
    active = str(steering.get("active"))
    parts = [
        f"steering: {_STEERING_SHOWN.get(active, active)}",
        f"sibling rescue {'on' if steering.get('rescue') else 'off'}",
    ]
    for key, words in (
        ("steered_away", "kept from new connections"),
        ("stalled", "stalled"),
        ("rescuing", "queue served by siblings"),
    ):
        slots = steering.get(key)
        if isinstance(slots, list) and slots:
            parts.append(f"{words}: slot {', '.join(map(str, slots))}")
    return ", ".join(parts) + "\n"


# (header, snapshot key, formatter, right-aligned)
_COLUMNS: tuple[tuple[str, str, Callable[[object], str], bool], ...] = (
    ("SLOT", "slot", _cell, True),
    ("PID", "pid", _cell, True),
    ("GEN", "generation", _cell, True),
    ("STATE", "state", _cell, False),
    ("UPTIME", "uptime", _duration, True),
    ("REQUESTS", "requests", _cell, True),
    ("IN-FLIGHT", "in_flight", _cell, True),
    ("CONNS", "connections", _cell, True),
    ("RESCUED", "rescued", _cell, True),
    ("QUEUE", "queue", _cell, True),
    ("BEAT", "heartbeat_age", _duration, True),
)
_TOTAL_KEYS = {"requests", "in_flight", "connections", "rescued", "queue"}


def _table(rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = []
        for (_h, _k, _f, right), width, text in zip(_COLUMNS, widths, row, strict=True):
            cells.append(text.rjust(width) if right else text.ljust(width))
        yield "  ".join(cells).rstrip()


_UDP_COLUMNS = (("UDP SOCKET", "bind"), ("SLOT", "slot"), ("QUEUE", "queue"), ("DROPS", "drops"))


def _udp_lines(sockets: list[Mapping[str, Any]]) -> list[str]:
    """The UDP sockets table: QUEUE is bytes waiting to be read, DROPS datagrams dropped."""
    rows = [[name for name, _ in _UDP_COLUMNS]]
    for sock in sockets:
        slot = sock.get("slot")
        rows.append(
            [
                _cell(sock.get("bind")),
                "shared" if "slot" in sock and slot is None else _cell(slot),
                _cell(sock.get("queue")),
                _cell(sock.get("drops")),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_UDP_COLUMNS))]
    return [
        "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def render_status(snapshot: Mapping[str, Any]) -> str:
    """The human report of a snapshot.  Missing keys show as '-'; unknown keys are ignored."""
    master = _mapping(snapshot.get("master"))
    pool = _mapping(snapshot.get("pool"))
    totals = _mapping(snapshot.get("totals"))
    workers_raw = snapshot.get("workers")
    workers = [_mapping(w) for w in workers_raw] if isinstance(workers_raw, list) else []

    binds = master.get("binds")
    bind_text = ", ".join(map(str, binds)) if isinstance(binds, list) and binds else "-"
    header = [
        f"reuseport master {_cell(master.get('pid'))}",
        str(master.get("app") or "-"),
        f"{master.get('mode') or '?'} mode",
        bind_text,
        f"up {_duration(master.get('uptime'))}",
    ]
    out = [" — ".join(header) + "\n", _pool_line(pool, master.get("generation"))]
    events = snapshot.get("events")
    if isinstance(events, Mapping):  # masters before the event counters send none
        out.append(_events_line(events))
    steering = snapshot.get("steering")
    if isinstance(steering, Mapping) and "active" in steering and master.get("mode") != "shared":
        out.append(_steering_line(steering))

    rows = [[name for name, _k, _f, _r in _COLUMNS]]
    rows += [[fmt(worker.get(key)) for _n, key, fmt, _r in _COLUMNS] for worker in workers]
    total_row = [
        _cell(totals.get(key)) if key in _TOTAL_KEYS else "" for _n, key, _f, _r in _COLUMNS
    ]
    rows.append(total_row)
    lines = list(_table(rows))
    # "total" overwrites the blank SLOT..UPTIME cells of the last row, which
    # are wider than the label ("SLOT  PID" alone is 9 characters).
    lines[-1] = "total" + lines[-1][len("total") :]
    if not workers:
        lines.insert(1, "(no workers)")
    out.extend(line + "\n" for line in lines)
    udp = snapshot.get("udp")
    if isinstance(udp, list) and udp:
        out.extend(line + "\n" for line in _udp_lines([_mapping(u) for u in udp]))
    return "".join(out)
