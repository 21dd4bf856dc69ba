"""Input checks of what is sent to be embedded, done before any cache or Triton call.

A text is a non-empty ``str`` (not only whitespace) of at most ``MAX_TEXT_BYTES`` bytes of UTF-8
(the ``clip_text`` model's own limit; CLIP reads only its first 77 tokens anyway). An image is
non-empty encoded bytes of at most ``MAX_IMAGE_BYTES`` whose first bytes are those of a JPEG, PNG
or WebP file; whether it decodes is for the ``clip_image`` model to say (a corrupt or truncated
image is refused there, for that item only). Every refusal is ``InvalidArgument`` with a message
that quotes at most a short prefix of the input.
"""

from __future__ import annotations

from core import limits
from core.errors import InvalidArgument
from core.text import quote

MAX_TEXT_BYTES = limits.MAX_TEXT_BYTES
MAX_IMAGE_BYTES = limits.MAX_IMAGE_BYTES

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))


def check_text(text: object) -> bytes:
    """The UTF-8 bytes of ``text``; InvalidArgument if it is not a non-blank string within
    ``MAX_TEXT_BYTES``."""
    if not isinstance(text, str):
        raise InvalidArgument(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise InvalidArgument("text must not be empty (or only whitespace)")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"text {quote(text)} is not valid UTF-8 (a lone surrogate)") from None
    if len(data) > MAX_TEXT_BYTES:
        raise InvalidArgument(
            f"text {quote(text)} is {len(data)} bytes of UTF-8, more than the limit of {MAX_TEXT_BYTES}"
        )
    return data


def image_format(data: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"`` or ``"WEBP"`` from the file signature of ``data``, else None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image(image: object) -> bytes:
    """``image`` as bytes; InvalidArgument if it is empty, larger than ``MAX_IMAGE_BYTES`` or does
    not start like a JPEG, PNG or WebP file."""
    if not isinstance(image, bytes | bytearray | memoryview):
        raise InvalidArgument(f"image must be bytes, not {type(image).__name__}")
    data = bytes(image)
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidArgument(
            f"image is {len(data)} bytes, more than the limit of {MAX_IMAGE_BYTES} ({MAX_IMAGE_BYTES // 2**20} MiB)"
        )
    if image_format(data) is None:
        raise InvalidArgument(f"image is not a JPEG, PNG or WebP file (it starts with {data[:8].hex(' ')})")
    return data
