"""Sets of labels (graph labels or delta rows) in ``[0, size)``, as a filter evaluates them
(docs/filtered-search.md §5).

Roaring-like without a dependency: a set with fewer than ``size / DENSE_FRACTION`` members is
*sparse* (a sorted, duplicate-free int32 array), any larger one is *dense* (a numpy bool mask,
one byte a label). Every operation returns a new set in the form its count calls for, and
picks the cheap algorithm for the forms it is given (sparse ∩ dense = ``s[d[s]]``, sparse ∩
sparse by ``searchsorted``, dense ∩ dense by ``&``). Sets are immutable: their arrays are
read-only, so one set can be shared by threads and by the results built from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

DENSE_FRACTION = 32
"""A set with at least ``size / DENSE_FRACTION`` members is held dense, a smaller one sparse."""

Labels = npt.NDArray[np.int32]
Mask = npt.NDArray[np.bool_]

_MAX_SIZE = 2**31 - 1  # labels are int32


_Array = TypeVar("_Array", bound="np.ndarray[Any, Any]")


def _frozen(array: _Array) -> _Array:
    array.setflags(write=False)
    return array


def _wants_dense(count: int, size: int) -> bool:
    return size > 0 and count * DENSE_FRACTION >= size


def _members(small: Labels, big: Labels) -> Mask:
    """Which labels of sorted ``small`` are in sorted ``big``."""
    if not len(big):
        return np.zeros(len(small), dtype=np.bool_)
    at = np.searchsorted(big, small)
    np.minimum(at, len(big) - 1, out=at)
    return big[at] == small


class LabelSet:
    """An immutable set of labels in ``[0, size)``; build one with the class methods."""

    __slots__ = ("_count", "_dense", "_sparse", "size")

    size: int
    _count: int
    _sparse: Labels | None
    _dense: Mask | None

    def __init__(self, size: int, *, sparse: Labels | None = None, dense: Mask | None = None) -> None:
        """Internal: exactly one of ``sparse`` (sorted, unique, in range: trusted) or ``dense``
        (a bool mask of ``size``); the set takes ownership of the array and picks its form."""
        if not 0 <= size <= _MAX_SIZE:
            raise ValueError(f"label set size {size} outside [0, 2**31)")
        self.size = size
        if dense is not None:
            if dense.shape != (size,):
                raise ValueError(f"a mask of {dense.shape} for a label set of size {size}")
            count = int(np.count_nonzero(dense))
            if _wants_dense(count, size):
                self._dense, self._sparse = _frozen(dense), None
            else:
                self._dense, self._sparse = None, _frozen(np.flatnonzero(dense).astype(np.int32))
        else:
            assert sparse is not None
            count = len(sparse)
            if _wants_dense(count, size):
                mask = np.zeros(size, dtype=np.bool_)
                mask[sparse] = True
                self._dense, self._sparse = _frozen(mask), None
            else:
                self._dense = None
                self._sparse = _frozen(sparse if sparse.dtype == np.int32 else sparse.astype(np.int32))
        self._count = count

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def empty(cls, size: int) -> LabelSet:
        return cls(size, sparse=np.zeros(0, dtype=np.int32))

    @classmethod
    def full(cls, size: int) -> LabelSet:
        return cls(size, dense=np.ones(size, dtype=np.bool_))

    @classmethod
    def from_mask(cls, mask: npt.ArrayLike) -> LabelSet:
        """The labels whose entry of ``mask`` is true (the mask is copied)."""
        array = np.array(mask, dtype=np.bool_, copy=True).reshape(-1)
        return cls(len(array), dense=array)

    @classmethod
    def from_labels(cls, labels: npt.NDArray[np.integer[Any]] | Iterable[int], size: int) -> LabelSet:
        """The set of ``labels`` (any order, duplicates allowed); ValueError for one outside
        ``[0, size)``."""
        array = np.asarray(labels if isinstance(labels, np.ndarray) else list(labels), dtype=np.int64).reshape(-1)
        if len(array) and (int(array.min()) < 0 or int(array.max()) >= size):
            raise ValueError(f"a label outside [0, {size})")
        if _wants_dense(len(array), size):  # scatter: O(size), no sort
            mask = np.zeros(size, dtype=np.bool_)
            mask[array] = True
            return cls(size, dense=mask)
        return cls(size, sparse=np.unique(array).astype(np.int32))

    @classmethod
    def from_sorted(cls, labels: npt.NDArray[np.integer[Any]], size: int) -> LabelSet:
        """The set of ``labels``, already sorted, unique and in range (not checked)."""
        return cls(size, sparse=np.asarray(labels, dtype=np.int32))

    # ------------------------------------------------------------------------------- inspection
    @property
    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def is_dense(self) -> bool:
        return self._dense is not None

    def labels(self) -> Labels:
        """The members, sorted (read-only)."""
        if self._sparse is not None:
            return self._sparse
        assert self._dense is not None
        return _frozen(np.flatnonzero(self._dense).astype(np.int32))

    def mask(self) -> Mask:
        """A bool mask of ``size`` (read-only)."""
        if self._dense is not None:
            return self._dense
        mask = np.zeros(self.size, dtype=np.bool_)
        assert self._sparse is not None
        mask[self._sparse] = True
        return _frozen(mask)

    def __contains__(self, label: object) -> bool:
        if not isinstance(label, int | np.integer) or not 0 <= int(label) < self.size:
            return False
        if self._dense is not None:
            return bool(self._dense[int(label)])
        assert self._sparse is not None
        at = int(np.searchsorted(self._sparse, int(label)))
        return at < len(self._sparse) and int(self._sparse[at]) == int(label)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (
            self.size == other.size
            and self._count == other._count
            and bool(np.array_equal(self.labels(), other.labels()))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        form = "dense" if self.is_dense else "sparse"
        head = self.labels()[:8].tolist()
        more = ", ..." if self._count > 8 else ""
        return f"LabelSet({form}, size={self.size}, count={self._count}, {head}{more})"

    # -------------------------------------------------------------------------------- algebra
    def _check(self, other: LabelSet) -> None:
        if other.size != self.size:
            raise ValueError(f"label sets of sizes {self.size} and {other.size}")

    def __and__(self, other: LabelSet) -> LabelSet:
        self._check(other)
        a, b = self, other
        if a._sparse is not None and b._sparse is not None:
            if len(a._sparse) > len(b._sparse):
                a, b = b, a
            assert a._sparse is not None and b._sparse is not None
            return LabelSet(self.size, sparse=a._sparse[_members(a._sparse, b._sparse)])
        if a._sparse is not None:
            assert b._dense is not None
            return LabelSet(self.size, sparse=a._sparse[b._dense[a._sparse]])
        if b._sparse is not None:
            assert a._dense is not None
            return LabelSet(self.size, sparse=b._sparse[a._dense[b._sparse]])
        assert a._dense is not None and b._dense is not None
        return LabelSet(self.size, dense=a._dense & b._dense)

    def __or__(self, other: LabelSet) -> LabelSet:
        self._check(other)
        a, b = self, other
        if a._sparse is not None and b._sparse is not None:
            return LabelSet(self.size, sparse=np.union1d(a._sparse, b._sparse).astype(np.int32))
        if a._dense is None:
            a, b = b, a
        assert a._dense is not None
        if b._sparse is not None:
            mask = a._dense.copy()
            mask[b._sparse] = True
            return LabelSet(self.size, dense=mask)
        assert b._dense is not None
        return LabelSet(self.size, dense=a._dense | b._dense)

    def __sub__(self, other: LabelSet) -> LabelSet:
        """The members of this set that are not in ``other``."""
        self._check(other)
        a, b = self, other
        if a._sparse is not None:
            if b._sparse is not None:
                return LabelSet(self.size, sparse=a._sparse[~_members(a._sparse, b._sparse)])
            assert b._dense is not None
            return LabelSet(self.size, sparse=a._sparse[~b._dense[a._sparse]])
        assert a._dense is not None
        if b._sparse is not None:
            mask = a._dense.copy()
            mask[b._sparse] = False
            return LabelSet(self.size, dense=mask)
        assert b._dense is not None
        return LabelSet(self.size, dense=a._dense & ~b._dense)

    def __invert__(self) -> LabelSet:
        """Every label of ``[0, size)`` not in this set."""
        if self._dense is not None:
            return LabelSet(self.size, dense=~self._dense)
        mask = np.ones(self.size, dtype=np.bool_)
        assert self._sparse is not None
        mask[self._sparse] = False
        return LabelSet(self.size, dense=mask)
