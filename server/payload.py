"""The shard payload of an item: its metadata (uri, tags, typed attributes), encoded by the
server and stored by the owning shard in the same log record as the vector, so a reader always
gets the two from one write (docs/item-integrity.md). The shard never reads it.

Format: one version byte, then the body. Version 1: the public ``vectorsearch.v1.Metadata``
message (deterministic serialisation); that message is held to ``buf breaking`` like the rest of
the public API, so every payload ever written stays readable. An empty payload is an item
written before payloads existed: its metadata is still in SQL (the engine falls back to it).
"""

from __future__ import annotations

from core.errors import CorruptionError
from server.metadata import AttrValue, ItemMeta
from vsproto.v1 import search_service_pb2 as pb

VERSION_1 = b"\x01"
EMPTY = VERSION_1  # the payload of an item with no metadata at all


def encode(meta: ItemMeta) -> bytes:
    if not meta.uri and not meta.tags and not meta.attributes:
        return EMPTY
    message = pb.Metadata(uri=meta.uri, tags=list(dict.fromkeys(meta.tags)))  # as SQL stores them
    for name, value in meta.attributes.items():
        target = message.attributes[name]
        if isinstance(value, bool):
            target.bool_value = value
        elif isinstance(value, int):
            target.int_value = value
        elif isinstance(value, float):
            target.double_value = value
        else:
            target.string_value = value
    return VERSION_1 + message.SerializeToString(deterministic=True)


def decode(payload: bytes) -> ItemMeta | None:
    """The metadata of a payload; None for an empty payload (an item from before payloads).
    CorruptionError for a payload this code cannot read."""
    if not payload:
        return None
    if payload[:1] != VERSION_1:
        raise CorruptionError(f"item payload of unknown version {payload[0]}")
    message = pb.Metadata.FromString(payload[1:])
    attributes: dict[str, AttrValue] = {}
    for name, value in message.attributes.items():
        kind = value.WhichOneof("value")
        if kind is not None:
            attributes[name] = getattr(value, kind)
    return ItemMeta(message.uri, sorted(message.tags), attributes)
