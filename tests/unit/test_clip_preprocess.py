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


def _reference(image: Image.Image) -> np.ndarray:
    from transformers import CLIPImageProcessorPil

    pixels: np.ndarray = CLIPImageProcessorPil()(images=image, return_tensors="np")["pixel_values"][0]
    return pixels


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")  # full size, as a plain decoder gives it


@pytest.mark.parametrize("size", [(320, 240), (300, 447), (640, 447)])
def test_jpeg_without_draft_same_pixels_as_hugging_face_processor(size: tuple[int, int]) -> None:
    # Shortest side under 2 x 224: no draft reduction applies, so the JPEG path is the exact one.
    data = encode(picture(5, size), "JPEG")
    assert preprocess.decode(data).size == size
    np.testing.assert_allclose(preprocess.preprocess(data), _reference(_decoded(data)), atol=1e-6)


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080)])
def test_exact_mode_same_pixels_as_hugging_face_processor(size: tuple[int, int]) -> None:
    data = encode(picture(6, size), "JPEG")
    np.testing.assert_allclose(preprocess.preprocess(data, exact=True), _reference(_decoded(data)), atol=1e-6)


@pytest.mark.parametrize(("size", "scale"), [((640, 480), 2), ((1920, 1080), 4), ((4000, 3000), 8)])
def test_jpeg_draft_close_to_exact(size: tuple[int, int], scale: int) -> None:
    # Draft decoding (libjpeg's DCT-domain 1/2, 1/4, 1/8 scaling) cannot match a full-size decode
    # + bicubic bit for bit: the reduction is a different low-pass filter. Tolerance, in normalised
    # units (one 8-bit level ~= 0.0146): mean |diff| <= 0.01 (under 1 level) and max <= 1.0 (an edge
    # pixel; JPEG q90 itself moves these pictures by up to 1.0, mean 0.011: bench/results/clip-preprocess.md,
    # which also has the random CLIP's embeddings at cosine >= 0.9999 between the two).
    data = encode(picture(7, size), "JPEG")
    assert preprocess.draft_scale(size, 224) == scale
    width, height = size
    assert preprocess.decode(data).size == (-(-width // scale), -(-height // scale))
    assert preprocess.decode(data, draft=None).size == size
    fast, exact = preprocess.preprocess(data), preprocess.preprocess(data, exact=True)
    assert fast.shape == (3, 224, 224) and fast.dtype == np.float32
    diff = np.abs(fast - exact)
    assert diff.mean() <= 0.01 and diff.max() <= 1.0, (diff.mean(), diff.max())


def test_draft_scale_keeps_shortest_side_at_least_size() -> None:
    assert preprocess.draft_scale((447, 1000), 224) == 1
    assert preprocess.draft_scale((448, 1000), 224) == 2
    assert preprocess.draft_scale((1000, 895), 224) == 2
    assert preprocess.draft_scale((1000, 896), 224) == 4
    assert preprocess.draft_scale((4000, 1792), 224) == 8
    assert preprocess.draft_scale((20_000, 20_000), 224) == 8
    assert preprocess.draft_scale((1000, 896), 336) == 2
    for width, height in [(449, 1001), (897, 900), (1793, 2000), (3001, 1795)]:
        scale = preprocess.draft_scale((width, height), 224)
        data = encode(picture(8, (width, height)), "JPEG")
        got = preprocess.decode(data).size
        assert got == (-(-width // scale), -(-height // scale)) and min(got) >= 224


def test_large_png_reducing_gap_close_to_exact() -> None:
    # No draft for PNG; reducing_gap=3.0 box-reduces only when the resize shrinks >= 6x (here 6.25x:
    # a 2x2 box, then bicubic 700 -> 224). Measured: max 0.06 (4 levels, at an edge), mean 0.0005.
    data = encode(picture(9, (1400, 1400)), "PNG")
    diff = np.abs(preprocess.preprocess(data) - preprocess.preprocess(data, exact=True))
    assert 0 < diff.max() <= 0.1 and diff.mean() <= 0.003, (diff.max(), diff.mean())


def test_normalise_table_is_the_formula() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mean = np.asarray(preprocess.CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocess.CLIP_STD, dtype=np.float32).reshape(3, 1, 1)
    formula = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0) - mean) / std
    got = preprocess.normalise(image)
    assert got.dtype == np.float32 and got.shape == (3, 37, 53) and got.flags.c_contiguous
    assert np.array_equal(got, formula)


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
    big = encode(picture(4, (1920, 1080)), "JPEG")  # decoded with a 1/4 draft
    assert _reason(big[: len(big) // 2]) == "truncated"
    assert _reason(big[:300] + bytes(len(big) - 300)) in ("corrupt", "truncated")
    assert _reason(big, max_pixels=1920 * 1080 - 1) == "too_many_pixels"  # the file's size, not the draft's


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
