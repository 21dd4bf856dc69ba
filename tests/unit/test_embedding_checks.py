"""Input checks of the embedder, before any cache or Triton call: messages are clear and quote
at most a short prefix; a bad item fails alone in the per-item calls."""

from __future__ import annotations

import time

import pytest

from core.errors import InvalidArgument
from core.text import QUOTE_CHARS
from server.embedding import MAX_IMAGE_BYTES, MAX_TEXT_BYTES, TritonEmbedder
from server.embedding.checks import check_image, check_text, image_format

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 8


def test_texts_must_be_non_blank_strings_within_the_limit() -> None:
    assert check_text("a red bicycle") == b"a red bicycle"
    assert check_text("é" * (MAX_TEXT_BYTES // 2)) == "é".encode() * (MAX_TEXT_BYTES // 2)
    for blank in ("", "   \n\t"):
        with pytest.raises(InvalidArgument, match="must not be empty"):
            check_text(blank)
    with pytest.raises(InvalidArgument, match="must be a string, not bytes"):
        check_text(b"abc")
    with pytest.raises(InvalidArgument, match="lone surrogate"):
        check_text("a\ud800b")


def test_an_oversize_text_is_quoted_by_a_short_prefix_only() -> None:
    text = "word " * (MAX_TEXT_BYTES // 5 + 1)
    with pytest.raises(InvalidArgument) as err:
        check_text(text)
    message = str(err.value)
    assert f"more than the limit of {MAX_TEXT_BYTES}" in message and str(len(text)) in message
    assert len(message) < QUOTE_CHARS + 150


def test_images_must_be_non_empty_jpeg_png_or_webp_within_the_limit() -> None:
    assert [image_format(d) for d in (JPEG, PNG, WEBP, b"GIF89a....")] == ["JPEG", "PNG", "WEBP", None]
    assert check_image(bytearray(JPEG)) == JPEG
    with pytest.raises(InvalidArgument, match=r"image is empty \(0 bytes\)"):
        check_image(b"")
    with pytest.raises(InvalidArgument, match=r"more than the limit of 20971520 \(20 MiB\)"):
        check_image(JPEG + b"\x00" * MAX_IMAGE_BYTES)
    with pytest.raises(InvalidArgument, match=r"not a JPEG, PNG or WebP file \(it starts with 47 49 46 38"):
        check_image(b"GIF89a" + b"\x00" * 100)
    with pytest.raises(InvalidArgument, match="must be bytes, not str"):
        check_image("file.jpg")


def test_bad_input_is_refused_before_triton_is_asked() -> None:
    # Nothing listens on port 1: any call to Triton would fail with UNAVAILABLE, not this.
    with TritonEmbedder("127.0.0.1:1") as embedder:
        started = time.monotonic()
        with pytest.raises(InvalidArgument, match=r"texts\[1\]: text must not be empty"):
            embedder.embed_texts(["fine", " "], timeout=5)
        results = embedder.embed_images([b"", b"not an image"], timeout=5)
        assert [type(r) for r in results] == [InvalidArgument, InvalidArgument]
        assert time.monotonic() - started < 1.0  # a Triton call would be UNAVAILABLE after ~1 s of retries
        with pytest.raises(InvalidArgument, match="timeout must be positive"):
            embedder.embed_texts(["fine"], timeout=0)
