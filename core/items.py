"""An item's metadata as the domain sees it (uri, tags, typed attributes), its value types and
the checks every stored item passes. Shared by the server (API, SQL index) and, through the
payload codec (``vsproto/payload.py``), by the shards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from core import limits
from core.errors import InvalidArgument
from core.text import check_text, quote

_ATTR_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

AttrValue = str | int | float | bool
# one-letter stored type of an attribute value (vs_attr_types.vtype, and the value column of vs_item_attrs)
STRING, INT, DOUBLE, BOOL = "s", "i", "d", "b"


@dataclass
class ItemMeta:
    uri: str = ""
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, AttrValue] = field(default_factory=dict)


def value_type(value: AttrValue) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return DOUBLE
    return STRING


def validate_meta(item_id: str, meta: ItemMeta) -> None:
    """Checks one item's metadata against the limits of ``core/limits.py``: every string storable
    (``core.text.check_text``: no NUL, valid UTF-8, bounded length), attribute names matching
    ``[A-Za-z0-9_]{1,64}`` in full, ints within int64, no NaN. InvalidArgument otherwise."""
    if not meta.uri and not meta.tags and not meta.attributes:
        return
    item = f"item {quote(item_id)}"
    check_text(meta.uri, f"{item}: uri", limits.MAX_URI_BYTES)
    if len(meta.tags) > limits.MAX_TAGS:
        raise InvalidArgument(f"{item}: more than {limits.MAX_TAGS} tags")
    for tag in meta.tags:
        check_text(tag, f"{item}: tag", limits.MAX_TAG_BYTES, allow_empty=False)
    if len(meta.attributes) > limits.MAX_ATTRIBUTES:
        raise InvalidArgument(f"{item}: more than {limits.MAX_ATTRIBUTES} attributes")
    for name, value in meta.attributes.items():
        if not _ATTR_NAME.fullmatch(name):
            raise InvalidArgument(f"{item}: attribute name {quote(name)} must match [A-Za-z0-9_]{{1,64}}")
        if isinstance(value, str):
            check_text(value, f"{item}: attribute {name!r}", limits.MAX_ATTRIBUTE_STRING_BYTES)
        elif isinstance(value, float) and value != value:
            raise InvalidArgument(f"{item}: attribute {name!r} is NaN")
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgument(f"{item}: attribute {name!r} is outside the int64 range")


def content_id(data: bytes) -> str:
    """The id an ingested item sent without one takes: ``sha256:<hex of its content>`` (the
    encoded image, or the text's UTF-8), so the same content sent twice is one item."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
