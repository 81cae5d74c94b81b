"""Numbers for the benchmark: a mergeable latency histogram and fairness figures.

Rules: nothing here does I/O or looks at a clock; everything is plain data
that survives a JSON round trip, so client processes can ship their
histograms to the runner and the runner can merge them.  Jain's index comes
from ``probe``, which judges the kernel's spread with the same formula.

The histogram is log-linear in the style of HdrHistogram: values are integer
nanoseconds; below ``2 ** (SUB_BITS + 1)`` ns every value has its own bucket,
above that each power of two is split into ``2 ** SUB_BITS`` equal buckets.
With ``SUB_BITS = 7`` a bucket spans at most 1/128 of its lower bound, so a
reported percentile (the bucket's midpoint) is within 0.4 % of the true value.
Values above ``MAX_VALUE_NS`` (60 s) land in the top bucket; the exact
maximum is tracked separately.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..probe import jain_fairness

__all__ = [
    "MAX_VALUE_NS",
    "PERCENTILES",
    "SUB_BITS",
    "Histogram",
    "Shares",
    "median",
    "shares",
]

SUB_BITS = 7
MAX_VALUE_NS = 60 * 1_000_000_000
# The percentiles every report shows, in this order.
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)

_SUB_COUNT = 1 << SUB_BITS
_EXACT_LIMIT = 1 << (SUB_BITS + 1)


def _index(value: int) -> int:
    if value < _EXACT_LIMIT:
        return value
    shift = value.bit_length() - (SUB_BITS + 1)
    # (value >> shift) is in [128, 256): the top SUB_BITS+1 bits of the value.
    return (shift << SUB_BITS) + (value >> shift)


def _bounds(index: int) -> tuple[int, int]:
    """The half-open range ``[low, high)`` of values that map to ``index``."""
    if index < _EXACT_LIMIT:
        return index, index + 1
    shift = (index >> SUB_BITS) - 1
    mantissa = index - (shift << SUB_BITS)
    return mantissa << shift, (mantissa + 1) << shift


_MAX_INDEX = _index(MAX_VALUE_NS)


class Histogram:
    """Latency histogram in integer nanoseconds; see the module docstring."""

    __slots__ = ("_counts", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._counts = [0] * (_MAX_INDEX + 1)
        self.count = 0
        self.total = 0  # sum of recorded values, for the mean
        self.min = 0
        self.max = 0

    def record(self, value_ns: int) -> None:
        value = max(0, value_ns)
        self._counts[min(_index(value), _MAX_INDEX)] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples into this histogram."""
        if other.count == 0:
            return
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int:
        """The value at or below which ``q`` percent of samples fall (0 if empty).

        Returns the midpoint of the bucket holding the sample of rank
        ``ceil(q/100 * count)``, clamped to the exact min and max (which are
        returned as they are for the first and last rank).
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile {q!r} is outside 0-100")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        # The extremes are known exactly; no need to approximate them.
        if rank == 1:
            return self.min
        if rank >= self.count:
            return self.max
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                low, high = _bounds(index)
                mid = (low + high - 1) // 2
                return min(max(mid, self.min), self.max)
        return self.max  # pragma: no cover - rank <= count always stops the loop

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; only non-empty buckets are kept."""
        return {
            "unit": "ns",
            "sub_bits": SUB_BITS,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "total": self.total,
            "buckets": {str(i): n for i, n in enumerate(self._counts) if n},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        if data.get("sub_bits") != SUB_BITS or data.get("unit") != "ns":
            raise ValueError(
                f"histogram layout {data.get('unit')!r}/{data.get('sub_bits')!r} "
                f"is not ns/{SUB_BITS}: produced by another version of reuseport"
            )
        hist = cls()
        for key, n in data["buckets"].items():
            hist._counts[int(key)] += int(n)
        hist.count = int(data["count"])
        hist.min = int(data["min"])
        hist.max = int(data["max"])
        hist.total = int(data["total"])
        return hist


@dataclass(frozen=True, kw_only=True, slots=True)
class Shares:
    """How requests spread over workers."""

    busiest: float  # fraction of all requests served by the busiest worker
    idlest: float  # fraction served by the idlest worker (0 if one got none)
    fairness: float | None  # Jain's index


def shares(values: Sequence[float]) -> Shares | None:
    """Busiest/idlest shares and Jain's index; ``None`` if no requests at all."""
    total = sum(values)
    fairness = jain_fairness(values)
    if not values or total <= 0 or fairness is None:
        return None
    return Shares(busiest=max(values) / total, idlest=min(values) / total, fairness=fairness)


def median(values: Iterable[float]) -> float:
    """The median (mean of the middle two for an even count); 0.0 if empty."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0
