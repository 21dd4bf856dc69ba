"""The item payload codec (vsproto/payload.py): metadata round-trips with its types, an item
without metadata still has a payload, and an empty payload means "from before payloads"."""

from __future__ import annotations

import pytest

from core.errors import CorruptionError
from core.items import ItemMeta
from vsproto import payload


def test_metadata_round_trips_with_exact_types() -> None:
    meta = ItemMeta("s3://b/k.jpg", ["b", "a"], {"n": 3, "x": 3.0, "flag": True, "s": "é", "big": -(2**63)})
    back = payload.decode(payload.encode(meta))
    assert back is not None
    assert back.uri == meta.uri and back.tags == ["a", "b"]
    assert back.attributes == meta.attributes
    assert [type(back.attributes[k]) for k in ("n", "x", "flag", "s")] == [int, float, bool, str]
    assert payload.encode(meta) == payload.encode(ItemMeta("s3://b/k.jpg", ["b", "a"], dict(meta.attributes)))


def test_no_metadata_is_a_payload_and_an_empty_payload_is_legacy() -> None:
    empty = payload.encode(ItemMeta())
    assert empty and payload.decode(empty) == ItemMeta()
    assert payload.decode(b"") is None
    with pytest.raises(CorruptionError):
        payload.decode(b"\x09whatever")  # a version this code does not know
    with pytest.raises(CorruptionError):
        payload.decode(payload.VERSION_1 + b"\xff\xff\xff")  # a body that does not parse
