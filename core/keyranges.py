"""Arcs of the 64-bit id-hash ring (``core.keyhash``) and fast membership tests over many of them.

A rebalance moves the arcs between two rings (thousands of them, one per virtual node that
changes owner); shards test each written or scanned id against them, so membership is one
binary search per id, not a loop over arcs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.keyhash import key_hashes

TOP = 1 << 64
_MAX = TOP - 1


@dataclass(frozen=True)
class KeyRange:
    """An arc of the 64-bit id-hash ring: the hashes clockwise after ``start`` up to and
    including ``end``, wrapping past 2**64 - 1 when ``end <= start``; ``start == end`` is the
    whole ring. A virtual node at position p owns (previous p, p]."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < TOP and 0 <= self.end < TOP):
            raise ValueError(f"key range bounds must be in [0, 2**64), got ({self.start}, {self.end}]")

    def contains(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        start, end = np.uint64(self.start), np.uint64(self.end)
        if self.start == self.end:
            return np.ones(len(hashes), dtype=bool)
        if self.start < self.end:
            return (hashes > start) & (hashes <= end)
        return (hashes > start) | (hashes <= end)

    def closed_intervals(self) -> list[tuple[int, int]]:
        """The arc as inclusive, non-wrapping ``[lo, hi]`` intervals (one or two)."""
        if self.start == self.end:
            return [(0, _MAX)]
        if self.start < self.end:
            return [(self.start + 1, self.end)]
        parts = [(0, self.end)]
        if self.start < _MAX:
            parts.append((self.start + 1, _MAX))
        return parts


class RangeSet:
    """An immutable union of ``KeyRange`` arcs with vectorised membership (binary search).

    Empty when built from no arcs (contains nothing). Thread-safe (never mutated)."""

    __slots__ = ("_his", "_los", "ranges")

    def __init__(self, ranges: Iterable[KeyRange] = ()) -> None:
        self.ranges: tuple[KeyRange, ...] = tuple(ranges)
        intervals = sorted(iv for r in self.ranges for iv in r.closed_intervals())
        merged: list[list[int]] = []
        for lo, hi in intervals:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._los = np.array([m[0] for m in merged], dtype=np.uint64)
        self._his = np.array([m[1] for m in merged], dtype=np.uint64)

    def __bool__(self) -> bool:
        return bool(len(self._los))

    def __len__(self) -> int:
        """The number of disjoint intervals after merging adjacent arcs."""
        return len(self._los)

    def contains_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """A mask: ``hashes[i]`` lies in one of the arcs."""
        if not len(self._los) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        slot = np.searchsorted(self._los, hashes, side="right").astype(np.int64) - 1
        inside = slot >= 0
        clipped = np.maximum(slot, 0)
        return inside & (hashes <= self._his[clipped])

    def contains_ids(self, ids: Sequence[str]) -> npt.NDArray[np.bool_]:
        """A mask: the hash of ``ids[i]`` lies in one of the arcs (no hashing when empty)."""
        if not len(self._los):
            return np.zeros(len(ids), dtype=bool)
        return self.contains_hashes(key_hashes(ids))

    def to_pairs(self) -> list[list[int]]:
        """The arcs as ``[[start, end], ...]`` (JSON-able; ``from_pairs`` reverses it)."""
        return [[r.start, r.end] for r in self.ranges]

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[int]]) -> RangeSet:
        return cls(KeyRange(int(p[0]), int(p[1])) for p in pairs)
