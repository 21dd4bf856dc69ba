"""The stable 64-bit hash of an item id: where the ring places it, and what key ranges cover."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def stable_hash64(key: str) -> int:
    """Return the stable unsigned 64-bit hash of ``key``.

    The value is the 8-byte ``hashlib.blake2b(key.encode("utf-8"), digest_size=8)`` digest read
    as a big-endian unsigned integer, in ``[0, 2**64)``.

    This function must never change: ids are placed on shards (and so on disk) by it, and a
    different hash would silently put every existing id on the wrong shard. A new scheme needs a
    new function, a new ``hash`` name in :meth:`HashRing.to_dict` and a full data move.

    Raises ``UnicodeEncodeError`` for strings that are not valid Unicode (lone surrogates); such
    strings are not valid ids.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=False)


def key_hashes(keys: Sequence[str]) -> npt.NDArray[np.uint64]:
    """Stable hashes of ``keys`` as a uint64 array (hashing itself is a Python loop)."""
    return np.fromiter((stable_hash64(k) for k in keys), dtype=np.uint64, count=len(keys))
