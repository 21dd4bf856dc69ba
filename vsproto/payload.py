"""The shard payload of an item: its metadata (uri, tags, typed attributes), encoded by the
server and stored by the owning shard in the same log record as the vector, so a reader always
gets the two from one write (docs/item-integrity.md). Shared by the server (which encodes and
decodes it) and the shards (which will read it to filter, docs/filtered-search.md): every
release of both reads the same format.

Format: one version byte, then the body. Version 1: the public ``vectorsearch.v1.Metadata``
message (deterministic serialisation); that message is held to ``buf breaking`` like the rest of
the public API, so every payload ever written stays readable. An empty payload is an item
written before payloads existed: its metadata is still in SQL (the engine falls back to it).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from core.errors import CorruptionError, InvalidArgument
from core.items import AttrValue, ItemMeta
from vsproto.v1 import search_service_pb2 as pb

VERSION_1 = b"\x01"
EMPTY = VERSION_1  # the payload of an item with no metadata at all


def encode(meta: ItemMeta) -> bytes:
    if not meta.uri and not meta.tags and not meta.attributes:
        return EMPTY
    deduplicated = ItemMeta(meta.uri, list(dict.fromkeys(meta.tags)), meta.attributes)  # as SQL stores them
    return VERSION_1 + meta_to_proto(deduplicated).SerializeToString(deterministic=True)


def decode(payload: bytes) -> ItemMeta | None:
    """The metadata of a payload; None for an empty payload (an item from before payloads).
    CorruptionError for a payload this code cannot read."""
    if not payload:
        return None
    if payload[:1] != VERSION_1:
        raise CorruptionError(f"item payload of unknown version {payload[0]}")
    try:
        meta = meta_from_proto(pb.Metadata.FromString(payload[1:]))
    except (DecodeError, InvalidArgument) as exc:
        raise CorruptionError(f"item payload does not parse: {exc}") from exc
    meta.tags.sort()
    return meta


def meta_from_proto(message: pb.Metadata) -> ItemMeta:
    attributes: dict[str, AttrValue] = {}
    for name, value in message.attributes.items():
        kind = value.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(f"attribute {name!r} has no value set")
        attributes[name] = getattr(value, kind)
    return ItemMeta(message.uri, list(message.tags), attributes)


def meta_to_proto(meta: ItemMeta) -> pb.Metadata:
    message = pb.Metadata(uri=meta.uri, tags=meta.tags)
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
    return message
