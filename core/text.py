"""Checks of client-supplied strings (ids, uris, tags, attribute names and values, filter
values): what the metadata database can store, and how error messages quote them.

Postgres ``text`` cannot hold NUL (U+0000), and a string with a lone surrogate cannot be encoded
as UTF-8 (protobuf refuses it on the wire; an in-process caller could still pass one), so both
are refused here, before anything is written, rather than failing in the database after the
shards changed.
"""

from __future__ import annotations

from core.errors import InvalidArgument

QUOTE_CHARS = 40


def quote(value: str) -> str:
    """A short, printable quotation of user input for an error message: ``repr`` of at most
    ``QUOTE_CHARS`` characters, with an ellipsis when cut."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return repr(value[:QUOTE_CHARS]) + "..."


def check_text(value: str, what: str, max_bytes: int, *, allow_empty: bool = True) -> str:
    """Returns ``value`` if it is storable text of at most ``max_bytes`` UTF-8 bytes (and not
    empty, unless ``allow_empty``); raises InvalidArgument naming ``what`` otherwise."""
    if not value:
        if allow_empty:
            return value
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{what} {quote(value)} contains a NUL character (U+0000), which cannot be stored")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} {quote(value)} is not valid UTF-8 (a lone surrogate)") from None
    if size > max_bytes:
        raise InvalidArgument(f"{what} {quote(value)} is longer than {max_bytes} bytes of UTF-8")
    return value
