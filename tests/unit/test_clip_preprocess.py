"""CLIP image preprocessing: the pixels CLIP expects, and a precise refusal for bad input."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipmodel import preprocess
from clipmodel.preprocess import CLIP_MEAN, ImageError
from testkit.clipdata import encode, picture


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (224, 224), (1001, 333)])
def test_same_pixels_as_hugging_face_processor(size: tuple[int, int]) -> None:
    from transformers import CLIPImageProcessorPil  # CLIP's reference preprocessing, on Pillow

    image = picture(3, size)
    ours = preprocess.preprocess(encode(image, "PNG"))
    theirs = CLIPImageProcessorPil()(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_mean_colour_normalises_to_zero() -> None:
    colour = tuple(round(m * 255) for m in CLIP_MEAN)
    pixels = preprocess.preprocess(encode(Image.new("RGB", (300, 200), colour), "PNG"))
    assert np.abs(pixels).max() < 0.01


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_formats(fmt: str) -> None:
    assert preprocess.preprocess(encode(picture(1, (320, 240)), fmt)).shape == (3, 224, 224)


def test_grey_and_alpha_become_rgb() -> None:
    for mode in ("L", "RGBA", "P"):
        assert preprocess.preprocess(encode(Image.new(mode, (50, 80)), "PNG")).shape == (3, 224, 224)


def test_exif_orientation_applied() -> None:
    image = picture(2, (320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif)
    upright = image.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(preprocess.preprocess(out.getvalue()), preprocess.preprocess(encode(upright, "PNG")))


def _reason(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageError) as info:
        preprocess.decode(data, **limits)
    assert str(info.value)
    return info.value.reason


def test_refusals_name_their_reason() -> None:
    jpeg = encode(picture(4, (320, 240)), "JPEG")
    png = encode(picture(4, (320, 240)), "PNG")
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, format="GIF")
    assert _reason(b"") == "empty"
    assert _reason(b"definitely not an image") == "unsupported"
    assert _reason(gif.getvalue()) == "unsupported"
    assert _reason(jpeg[: len(jpeg) // 2]) == "truncated"
    assert _reason(png[: len(png) // 2]) == "truncated"
    assert _reason(jpeg[:300] + bytes(len(jpeg) - 300)) in ("corrupt", "truncated")
    assert _reason(png[:60]) in ("corrupt", "truncated")
    assert _reason(jpeg, max_bytes=1000) == "too_large"
    assert _reason(jpeg, max_pixels=320 * 240 - 1) == "too_many_pixels"
    assert preprocess.decode(jpeg, max_pixels=320 * 240).size == (320, 240)


def test_pixel_bomb_refused_before_decoding() -> None:
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 Mpx in a small file
    assert _reason(bomb.getvalue()) == "too_many_pixels"


def test_module_is_self_contained() -> None:
    # The export copies preprocess.py beside the Triton model: it must not import this package.
    tree = ast.parse(Path(preprocess.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "io", "warnings", "numpy", "numpy.typing", "PIL"}
