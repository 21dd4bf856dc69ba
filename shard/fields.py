"""The filterable fields of a layer's items (docs/filtered-search.md §3), and the two indexes a
filter is evaluated over (``shard/filtering.py``).

- ``Fields``: the indexable view of one payload: uri, distinct tags and ``{(name, type): value}``
  with type one of ``core.items`` INT, DOUBLE, BOOL, STRING (keyed by type because a value only
  equals values of its own type). ``decode_fields`` builds it straight from a payload.
- ``FieldColumns``: append-only columns, one entry per delta row or graph label: per
  (attribute, type) a value column (int64, float64, bool, or uint64 string hash) with a presence
  mask, the uri hash column, and tag pairs (row int32, hash uint64).
- ``ColumnIndex``: a filter's leaves over the columns as vectorised compares (a delta layer).
- ``LayerIndex``: derived from the columns once (a graph layer): per numeric or bool
  (attribute, type) the values sorted with their labels (``searchsorted`` slices), per string
  field (tags, uri, each string attribute) a CSR by hash (sorted distinct hashes, offsets,
  labels sorted within each hash). Every leaf is exact.

Strings are ``blake2b(salt ‖ utf8)`` cut to 8 bytes, the salt per field (``"tags"``, ``"uri"``,
``"attributes.<name>"``) and generation. Exactness: each field keeps a ``hash -> string`` map
that is injective; a new string whose hash is taken by another one re-salts the field (next
generation) and rehashes its columns. A query string resolves to a hash only if the map holds
exactly that string under its hash, so a foreign string that hashes like a stored one matches
nothing. (This step keeps the map for graph layers too; the design's later form verifies
against a representative label's payload instead, so the graph keeps no strings.)

Publishing: ``FieldColumns.append`` writes every column before ``rows`` grows, and a re-salt
swaps a whole new column object in, so a reader that takes ``rows`` and then the column objects
(``ColumnIndex``) sees whole rows. Not wired into the shard yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from core.errors import CorruptionError
from core.filters import ATTRIBUTE_PREFIX, TAGS, URI
from core.items import BOOL, DOUBLE, INT, STRING, AttrValue, ItemMeta, value_type
from shard.labelset import LabelSet
from vsproto.payload import VERSION_1
from vsproto.v1 import search_service_pb2 as pb

HASH_BITS = 64
MAX_RESALTS = 1000
"""Generations tried before giving up on an injective hash for a field (at 64 bits one re-salt
is already ~n²/2⁶⁵ unlikely; tests use tiny hashes)."""

_DTYPES: dict[str, type[np.generic]] = {INT: np.int64, DOUBLE: np.float64, BOOL: np.bool_, STRING: np.uint64}
_KINDS = {"string_value": STRING, "int_value": INT, "double_value": DOUBLE, "bool_value": BOOL}

Numeric = int | float | bool


def hash_string(text: str, salt: bytes, bits: int = HASH_BITS) -> int:
    """``blake2b(salt ‖ utf8(text))`` as a little-endian uint64, cut to ``bits`` (a test hook)."""
    value = int.from_bytes(hashlib.blake2b(salt + text.encode(), digest_size=8).digest(), "little")
    return value if bits >= 64 else value & ((1 << bits) - 1)


# ------------------------------------------------------------------------------------- Fields
@dataclass(frozen=True, eq=True)
class Fields:
    """The indexable view of one item's metadata."""

    uri: str = ""
    tags: tuple[str, ...] = ()  # distinct, sorted
    attributes: Mapping[tuple[str, str], AttrValue] = field(default_factory=dict)  # (name, type) -> value

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_meta(cls, meta: ItemMeta) -> Fields:
        return cls(
            meta.uri,
            tuple(sorted(set(meta.tags))),
            {(name, value_type(value)): value for name, value in meta.attributes.items()},
        )


def decode_fields(payload: bytes) -> Fields | None:
    """The ``Fields`` of a payload (``vsproto/payload.py`` format) without building an
    ``ItemMeta``; None for an empty payload (an item from before payloads). CorruptionError for
    a payload this code cannot read, like ``vsproto.payload.decode``."""
    if not payload:
        return None
    if payload[:1] != VERSION_1:
        raise CorruptionError(f"item payload of unknown version {payload[0]}")
    try:
        message = pb.Metadata.FromString(payload[1:])
    except DecodeError as exc:
        raise CorruptionError(f"item payload does not parse: {exc}") from exc
    attributes: dict[tuple[str, str], AttrValue] = {}
    for name, value in message.attributes.items():
        kind = value.WhichOneof("value")
        if kind is None:
            raise CorruptionError(f"item payload does not parse: attribute {name!r} has no value set")
        attributes[(name, _KINDS[kind])] = getattr(value, kind)
    return Fields(message.uri, tuple(sorted(set(message.tags))), attributes)


# ------------------------------------------------------------------------------------ strings
class StringMap:
    """One string field's salt and its injective ``hash -> string`` map. Grows in place (a new
    key is harmless to readers: no published row has it yet); a re-salt makes a new one."""

    __slots__ = ("bits", "by_hash", "field", "generation", "salt")

    def __init__(self, field_name: str, bits: int, generation: int = 0) -> None:
        self.field = field_name
        self.bits = bits
        self.generation = generation
        self.salt = f"{field_name}\x00{generation}\x00".encode()
        self.by_hash: dict[int, str] = {}

    def hash(self, text: str) -> int:
        return hash_string(text, self.salt, self.bits)

    def code(self, text: str) -> int | None:
        """The hash of ``text`` if this map holds exactly ``text`` under it, else None."""
        value = self.hash(text)
        return value if self.by_hash.get(value) == text else None

    def admit(self, texts: Iterable[str]) -> bool:
        """Adds ``texts``; False (and nothing added) if one would collide with another string."""
        added: dict[int, str] = {}
        for text in texts:
            value = self.hash(text)
            held = self.by_hash.get(value, added.get(value))
            if held is None:
                added[value] = text
            elif held != text:
                return False
        self.by_hash.update(added)
        return True


def _resalted(old: StringMap, more: Iterable[str]) -> StringMap:
    texts = [*old.by_hash.values(), *more]
    for generation in range(old.generation + 1, old.generation + 1 + MAX_RESALTS):
        fresh = StringMap(old.field, old.bits, generation)
        if fresh.admit(texts):
            return fresh
    raise RuntimeError(f"no injective {old.bits}-bit hash for {len(set(texts))} strings of {old.field!r}")


def _rehash(values: npt.NDArray[np.uint64], old: StringMap, new: StringMap) -> npt.NDArray[np.uint64]:
    remap = {code: new.hash(text) for code, text in old.by_hash.items()}
    return np.fromiter((remap[int(v)] for v in values), dtype=np.uint64, count=len(values))


# ------------------------------------------------------------------------------------ columns
class Column:
    """One (attribute, type) column, or the uri column: values with a presence mask, grown by
    doubling (entries past the written ones are absent). ``strings`` for a string column."""

    __slots__ = ("kind", "present", "strings", "values")

    def __init__(self, kind: str, capacity: int, strings: StringMap | None = None) -> None:
        self.kind = kind
        self.values: npt.NDArray[np.generic] = np.zeros(capacity, dtype=_DTYPES[kind])
        self.present: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=np.bool_)
        self.strings = strings

    def reserve(self, rows: int) -> None:
        if rows <= len(self.values):
            return
        capacity = max(rows, 2 * len(self.values), 64)
        values = np.zeros(capacity, dtype=self.values.dtype)
        values[: len(self.values)] = self.values
        present = np.zeros(capacity, dtype=np.bool_)
        present[: len(self.present)] = self.present
        self.values, self.present = values, present  # same content for every published row

    def view(self, rows: int) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.bool_]]:
        """(values, presence) of the first ``rows`` rows, padded as absent."""
        values, present = self.values, self.present
        if len(present) >= rows:
            return values[:rows], present[:rows]
        pad = rows - len(present)
        return (
            np.concatenate([values, np.zeros(pad, dtype=values.dtype)]),
            np.concatenate([present, np.zeros(pad, dtype=np.bool_)]),
        )


class TagPairs:
    """(row, tag hash) pairs in row order; ``count`` of them written."""

    __slots__ = ("count", "hashes", "rows", "strings")

    def __init__(self, strings: StringMap, capacity: int = 0) -> None:
        self.rows: npt.NDArray[np.int32] = np.zeros(capacity, dtype=np.int32)
        self.hashes: npt.NDArray[np.uint64] = np.zeros(capacity, dtype=np.uint64)
        self.count = 0
        self.strings = strings

    def reserve(self, count: int) -> None:
        if count <= len(self.rows):
            return
        capacity = max(count, 2 * len(self.rows), 64)
        rows = np.zeros(capacity, dtype=np.int32)
        rows[: self.count] = self.rows[: self.count]
        hashes = np.zeros(capacity, dtype=np.uint64)
        hashes[: self.count] = self.hashes[: self.count]
        self.rows, self.hashes = rows, hashes

    def view(self, rows: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint64]]:
        """The pairs of rows below ``rows``."""
        count = self.count
        pair_rows, hashes = self.rows[:count], self.hashes[:count]
        if count and int(pair_rows[-1]) >= rows:
            keep = int(np.searchsorted(pair_rows, rows))
            pair_rows, hashes = pair_rows[:keep], hashes[:keep]
        return pair_rows, hashes


class FieldColumns:
    """Append-only columns of one layer, one entry per delta row or graph label."""

    def __init__(self, hash_bits: int = HASH_BITS) -> None:
        self.hash_bits = hash_bits
        self.rows = 0
        self.uri = Column(STRING, 0, StringMap(URI, hash_bits))
        self.tags = TagPairs(StringMap(TAGS, hash_bits))
        self.attributes: dict[tuple[str, str], Column] = {}

    def append(self, batch: Sequence[Fields | None]) -> None:
        """Appends one row per entry (None: a legacy row); ``rows`` grows last."""
        start, count = self.rows, len(batch)
        end = start + count
        self._admit_strings(batch)
        uri = self.uri
        uri.reserve(end)
        tag_count = sum(len(f.tags) for f in batch if f is not None)
        tags = self.tags
        tags.reserve(tags.count + tag_count)
        at = tags.count
        for row, fields in enumerate(batch, start):
            if fields is None:  # a legacy row (payload b""): in no column, its uri absent
                continue
            assert uri.strings is not None
            uri.values[row] = uri.strings.hash(fields.uri)
            uri.present[row] = True
            for tag in fields.tags:
                tags.rows[at] = row
                tags.hashes[at] = tags.strings.hash(tag)
                at += 1
            for key, value in fields.attributes.items():
                column = self._column(key)
                column.reserve(end)
                if column.strings is not None:
                    assert isinstance(value, str)
                    column.values[row] = column.strings.hash(value)
                else:
                    column.values[row] = value
                column.present[row] = True
        tags.count = at
        self.rows = end  # publish

    def _column(self, key: tuple[str, str]) -> Column:
        column = self.attributes.get(key)
        if column is None:
            name, kind = key
            strings = StringMap(ATTRIBUTE_PREFIX + name, self.hash_bits) if kind == STRING else None
            column = Column(kind, 0, strings)
            self.attributes[key] = column
        return column

    def _admit_strings(self, batch: Sequence[Fields | None]) -> None:
        """Makes every string field's map cover the batch's strings injectively, re-salting
        (and rehashing the field's published rows) where a new string collides."""
        uris: set[str] = set()
        tags: set[str] = set()
        by_attribute: dict[str, set[str]] = {}
        for fields in batch:
            if fields is None:
                continue
            uris.add(fields.uri)
            tags.update(fields.tags)
            for (name, kind), value in fields.attributes.items():
                if kind == STRING:
                    assert isinstance(value, str)
                    by_attribute.setdefault(name, set()).add(value)
        uri_strings = self.uri.strings
        assert uri_strings is not None
        if not uri_strings.admit(uris):
            fresh = _resalted(uri_strings, uris)
            self.uri = self._rehashed_column(self.uri, fresh)
        if not self.tags.strings.admit(tags):
            fresh = _resalted(self.tags.strings, tags)
            old = self.tags
            pairs = TagPairs(fresh, len(old.rows))
            pairs.rows[: old.count] = old.rows[: old.count]
            pairs.hashes[: old.count] = _rehash(old.hashes[: old.count], old.strings, fresh)
            pairs.count = old.count
            self.tags = pairs
        for name, texts in by_attribute.items():
            column = self._column((name, STRING))
            assert column.strings is not None
            if not column.strings.admit(texts):
                fresh = _resalted(column.strings, texts)
                self.attributes[(name, STRING)] = self._rehashed_column(column, fresh)

    def gather(self, rows: npt.NDArray[np.integer[Any]]) -> FieldColumns:
        """New columns whose row ``i`` is this one's row ``rows[i]`` (rows published here, any
        order, no repeats). Salts are kept; each string map keeps only the strings still held."""
        picked: npt.NDArray[np.int64] = np.asarray(rows, dtype=np.int64)
        size = self.rows
        if len(picked) and (int(picked.min()) < 0 or int(picked.max()) >= size):
            raise ValueError(f"gathering a row outside [0, {size})")
        out = FieldColumns(self.hash_bits)
        count = len(picked)
        out.uri = _gathered(self.uri, size, picked)
        pair_rows, hashes = self.tags.view(size)
        new_of_old = np.full(size, -1, dtype=np.int64)
        new_of_old[picked] = np.arange(count)
        mapped = new_of_old[pair_rows]
        kept = mapped >= 0
        order = np.argsort(mapped[kept], kind="stable")
        kept_hashes = hashes[kept][order]
        pairs = TagPairs(_pruned(self.tags.strings, kept_hashes), len(kept_hashes))
        pairs.rows[:] = mapped[kept][order].astype(np.int32)
        pairs.hashes[:] = kept_hashes
        pairs.count = len(kept_hashes)
        out.tags = pairs
        for key, column in self.attributes.items():
            out.attributes[key] = _gathered(column, size, picked)
        out.rows = count
        return out

    def _rehashed_column(self, column: Column, fresh: StringMap) -> Column:
        assert column.strings is not None
        new = Column(STRING, len(column.values), fresh)
        rows = min(self.rows, len(column.values))
        present = column.present[:rows]
        new.present[:rows] = present
        values = column.values[:rows].astype(np.uint64)
        where = np.flatnonzero(present)
        rehashed = values.copy()
        rehashed[where] = _rehash(values[where], column.strings, fresh)
        new.values[:rows] = rehashed
        return new


def _pruned(strings: StringMap, codes: npt.NDArray[np.uint64]) -> StringMap:
    """A copy of ``strings`` (same salt) holding only the strings whose hash is in ``codes``."""
    out = StringMap(strings.field, strings.bits, strings.generation)
    by_hash = strings.by_hash
    out.by_hash = {code: by_hash[code] for code in np.unique(codes).tolist()}
    return out


def _gathered(column: Column, size: int, rows: npt.NDArray[np.int64]) -> Column:
    values, present = column.view(size)
    out = Column(column.kind, len(rows), None)
    out.values[:] = values[rows]
    out.present[:] = present[rows]
    if column.strings is not None:
        out.strings = _pruned(column.strings, out.values[out.present].astype(np.uint64))
    return out


def decode_batch(payloads: Sequence[bytes] | None, count: int) -> list[Fields | None]:
    """``decode_fields`` of each payload (None: ``count`` items without payloads)."""
    if payloads is None:
        return [None] * count
    return [decode_fields(payload) for payload in payloads]


# ------------------------------------------------------------------------------------ indexes
def _codes(strings: StringMap, texts: Sequence[str]) -> npt.NDArray[np.uint64]:
    codes = [code for code in (strings.code(text) for text in texts) if code is not None]
    return np.array(sorted(set(codes)), dtype=np.uint64)


def _numeric_key(kind: str, value: Numeric) -> Any:  # a numpy scalar of the column's dtype
    if kind == INT:
        return np.int64(value)
    if kind == DOUBLE:
        return np.float64(value)
    return np.uint8(bool(value))


class ColumnIndex:
    """A filter's leaves as vectorised compares over ``FieldColumns`` (a delta layer), as of the
    rows published when it was made."""

    def __init__(self, columns: FieldColumns, rows: int | None = None) -> None:
        """``rows``: the first rows only (a delta's published rows, read before this)."""
        published = columns.rows  # read first: every column below covers these rows
        if rows is not None and rows > published:
            raise ValueError(f"{rows} rows asked of columns holding {published}")
        self.size = published if rows is None else rows
        self._uri = columns.uri
        self._tags = columns.tags
        self._attributes = dict(columns.attributes)

    def _string_column(self, field_name: str) -> Column | None:
        if field_name == URI:
            return self._uri
        return self._attributes.get((field_name[len(ATTRIBUTE_PREFIX) :], STRING))

    def strings_equal(self, field_name: str, texts: Sequence[str]) -> LabelSet:
        if field_name == TAGS:
            pairs = self._tags
            codes = _codes(pairs.strings, texts)
            rows, hashes = pairs.view(self.size)
            if not len(codes) or not len(rows):
                return LabelSet.empty(self.size)
            return LabelSet.from_labels(rows[np.isin(hashes, codes)], self.size)
        column = self._string_column(field_name)
        if column is None:
            return LabelSet.empty(self.size)
        assert column.strings is not None
        codes = _codes(column.strings, texts)
        if not len(codes):
            return LabelSet.empty(self.size)
        values, present = column.view(self.size)
        return LabelSet(self.size, dense=present & np.isin(values, codes))

    def values_equal(self, name: str, kind: str, values: Sequence[Numeric]) -> LabelSet:
        column = self._attributes.get((name, kind))
        if column is None or not values:
            return LabelSet.empty(self.size)
        column_values, present = column.view(self.size)
        wanted = np.array([_numeric_key(kind, v) for v in values], dtype=column_values.dtype)
        return LabelSet(self.size, dense=present & np.isin(column_values, wanted))

    def values_within(
        self, name: str, kind: str, low: Numeric | None, low_open: bool, high: Numeric | None, high_open: bool
    ) -> LabelSet:
        column = self._attributes.get((name, kind))
        if column is None:
            return LabelSet.empty(self.size)
        values, present = column.view(self.size)
        mask = present.copy()
        if low is not None:
            bound = _numeric_key(kind, low)
            mask &= values > bound if low_open else values >= bound
        if high is not None:
            bound = _numeric_key(kind, high)
            mask &= values < bound if high_open else values <= bound
        return LabelSet(self.size, dense=mask)


class _Sorted:
    """One numeric or bool (attribute, type): present values sorted, with their labels."""

    __slots__ = ("labels", "values")

    def __init__(self, values: npt.NDArray[np.generic], labels: npt.NDArray[np.int32]) -> None:
        self.values = values
        self.labels = labels


class _Csr:
    """One string field: sorted distinct hashes, offsets, labels sorted within each hash."""

    __slots__ = ("keys", "labels", "offsets", "strings")

    def __init__(
        self, labels: npt.NDArray[np.integer[Any]], hashes: npt.NDArray[np.uint64], strings: StringMap
    ) -> None:
        order = np.lexsort((labels, hashes))
        sorted_hashes = hashes[order]
        self.keys, starts = np.unique(sorted_hashes, return_index=True)
        self.offsets = np.append(starts, len(sorted_hashes)).astype(np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)[order]
        self.strings = strings

    def slices(self, texts: Sequence[str]) -> list[npt.NDArray[np.int32]]:
        codes = _codes(self.strings, texts)
        if not len(codes) or not len(self.keys):
            return []
        at = np.searchsorted(self.keys, codes)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == codes[found]
        return [self.labels[self.offsets[i] : self.offsets[i + 1]] for i in at[found].tolist()]


def _union(parts: list[npt.NDArray[np.int32]], size: int) -> LabelSet:
    if not parts:
        return LabelSet.empty(size)
    if len(parts) == 1:
        return LabelSet.from_sorted(parts[0], size)  # one CSR slice or one equal run: labels ascend
    return LabelSet.from_labels(np.concatenate(parts), size)


class LayerIndex:
    """The immutable index of a graph layer, derived from its columns by ``build``."""

    def __init__(self, size: int, sorted_columns: dict[tuple[str, str], _Sorted], csr: dict[str, _Csr]) -> None:
        self.size = size
        self._sorted = sorted_columns
        self._csr = csr

    @classmethod
    def build(cls, columns: FieldColumns) -> LayerIndex:
        size = columns.rows
        sorted_columns: dict[tuple[str, str], _Sorted] = {}
        csr: dict[str, _Csr] = {}
        uri_values, uri_present = columns.uri.view(size)
        assert columns.uri.strings is not None
        rows = np.flatnonzero(uri_present)
        csr[URI] = _Csr(rows, uri_values[rows].astype(np.uint64), columns.uri.strings)
        tag_rows, tag_hashes = columns.tags.view(size)
        csr[TAGS] = _Csr(tag_rows, tag_hashes, columns.tags.strings)
        for (name, kind), column in columns.attributes.items():
            values, present = column.view(size)
            rows = np.flatnonzero(present)
            if column.strings is not None:
                csr[ATTRIBUTE_PREFIX + name] = _Csr(rows, values[rows].astype(np.uint64), column.strings)
                continue
            kept = values[rows]
            if kind == DOUBLE:  # NaN equals nothing and lies in no range: not indexed
                finite = ~np.isnan(kept)
                rows, kept = rows[finite], kept[finite]
            elif kind == BOOL:
                kept = kept.astype(np.uint8)
            order = np.argsort(kept, kind="stable")  # labels ascend within equal values
            sorted_columns[(name, kind)] = _Sorted(kept[order], rows[order].astype(np.int32))
        return cls(size, sorted_columns, csr)

    def strings_equal(self, field_name: str, texts: Sequence[str]) -> LabelSet:
        index = self._csr.get(field_name)
        if index is None:
            return LabelSet.empty(self.size)
        return _union(index.slices(texts), self.size)

    def values_equal(self, name: str, kind: str, values: Sequence[Numeric]) -> LabelSet:
        column = self._sorted.get((name, kind))
        if column is None or not values:
            return LabelSet.empty(self.size)
        parts = []
        for value in {_numeric_key(kind, v) for v in values}:
            left = int(np.searchsorted(column.values, value, "left"))
            right = int(np.searchsorted(column.values, value, "right"))
            if right > left:
                parts.append(column.labels[left:right])
        return _union(parts, self.size)

    def values_within(
        self, name: str, kind: str, low: Numeric | None, low_open: bool, high: Numeric | None, high_open: bool
    ) -> LabelSet:
        column = self._sorted.get((name, kind))
        if column is None:
            return LabelSet.empty(self.size)
        left, right = 0, len(column.values)
        if low is not None:
            left = int(np.searchsorted(column.values, _numeric_key(kind, low), "right" if low_open else "left"))
        if high is not None:
            right = int(np.searchsorted(column.values, _numeric_key(kind, high), "left" if high_open else "right"))
        if right <= left:
            return LabelSet.empty(self.size)
        return LabelSet.from_labels(column.labels[left:right], self.size)
