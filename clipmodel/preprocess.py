"""CLIP image preprocessing: encoded bytes -> normalised float32 pixels ``[3, S, S]``.

Self-contained (standard library, numpy, Pillow): the export copies this file beside the Triton
image model. Steps, as OpenAI CLIP's (torchvision) pipeline: decode; apply the EXIF orientation
(so a phone photo and its rotated copy embed alike); first frame of an animation; ``convert("RGB")``;
resize the shortest side to ``S`` with bicubic resampling (the other side ``int(S * long / short)``);
centre crop ``S`` x ``S`` (offsets rounded as torchvision does); scale to [0, 1]; subtract
``CLIP_MEAN`` and divide by ``CLIP_STD`` per channel.

Two shortcuts make this several times cheaper than the plain pipeline on large inputs, at the cost
of a small difference from it (bench/results/clip-preprocess.md has the speed and the difference):

- JPEG draft decoding (``decode(..., draft=S)``): libjpeg scales the image down by 1/2, 1/4 or 1/8
  inside the inverse DCT, the largest of these that still leaves the shortest side >= ``S``; the
  bicubic resize then starts from that smaller image. A 640x480 photo is decoded at 320x240.
  ``draft=None`` decodes at full size (the plain pipeline).
- ``reducing_gap`` (``resize_crop(..., reducing_gap=REDUCING_GAP)``): when the resize shrinks by 6x
  or more (a large PNG or WebP, which have no draft mode), Pillow first box-reduces by an integer
  factor so that at least 3x is left for the bicubic filter. Inputs whose shortest side is under
  ``6 * S`` are resized exactly as without it.

Images that neither shortcut applies to (PNG, WebP, and JPEG whose shortest side is under ``2 * S``)
give exactly the pixels of transformers' ``CLIPImageProcessor`` (tests/unit/test_clip_preprocess.py).
The normalisation is a per-channel lookup table of the same float32 arithmetic: bit-identical.

Every refusal is an ``ImageError`` (a ValueError) whose ``reason`` is one of ``REASONS`` and whose
message says what was wrong; nothing else escapes for bad input.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 50_000_000
REASONS = ("empty", "too_large", "unsupported", "corrupt", "truncated", "too_many_pixels")
# ``decode``'s default JPEG draft target: the input side of every CLIP this project exports today
# (ViT-B/32 and the random CLIP). A caller serving a model with a larger input passes its own size:
# a draft to 224 followed by an upscale to 336 would lose detail.
DRAFT_SIZE = 224
# Pillow's ``reducing_gap`` for ``resize_crop``: box-reduce first only while >= 3x is left for the
# bicubic filter (Pillow's documentation: 3.0 is indistinguishable from the exact resize in most
# cases; measured here on 1400x1400 and 4000x3000 PNGs: at most 4 of 255 levels at an edge, mean
# under 0.05 of a level; the 4000x3000 resize 78 -> 16 ms).
REDUCING_GAP = 3.0

_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)
# normalise() as a table: value v of channel c -> (float32(v) / 255 - mean[c]) / std[c], computed
# with the same float32 operations as the plain formula, so looking it up is bit-identical to it.
_LUT = (np.arange(256, dtype=np.float32) / np.float32(255.0) - _MEAN.reshape(3, 1)) / _STD.reshape(3, 1)


class ImageError(ValueError):
    """Input that is not an acceptable image; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def draft_scale(size: tuple[int, int], target: int) -> int:
    """The JPEG draft reduction for an image of ``size``: the largest of 8, 4 and 2 after which the
    shortest side is still >= ``target`` (libjpeg rounds the reduced sides up), else 1."""
    shortest = min(size)
    for scale in (8, 4, 2):
        if shortest // scale >= target:
            return scale
    return 1


def decode(
    data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, draft: int | None = DRAFT_SIZE
) -> Image.Image:
    """The decoded RGB image (EXIF orientation applied). Checks the byte size, the format and the
    pixel count (from the header, before any pixel is decoded) first.

    ``draft``: a JPEG is decoded scaled down by ``draft_scale(size, draft)`` (1/2, 1/4 or 1/8 in
    libjpeg's inverse DCT; its shortest side stays >= ``draft``), so the image returned can be
    smaller than the file's. ``None``: always the full size."""
    if not data:
        raise ImageError("empty", "image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError("too_large", f"image is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
    except UnidentifiedImageError:
        raise ImageError("unsupported", "not an image in a supported format (JPEG, PNG, WebP)") from None
    except Image.DecompressionBombError as e:
        raise ImageError("too_many_pixels", f"image has too many pixels: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageError(reason, f"image header cannot be read ({reason}): {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("too_many_pixels", f"image is {width}x{height}, more than {max_pixels} pixels")
    if draft is not None and image.format == "JPEG":
        scale = draft_scale(image.size, draft)
        if scale > 1:
            image.draft("RGB", (width // scale, height // scale))  # libjpeg picks exactly ``scale``
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageError(reason, f"image data is {reason}: {e}") from None
    except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError("corrupt", f"image data is corrupt: {e}") from None


def resize_crop(image: Image.Image, size: int, reducing_gap: float | None = REDUCING_GAP) -> Image.Image:
    """Shortest side to ``size`` (bicubic), then the centred ``size`` x ``size`` square.
    ``reducing_gap``: Pillow's (see ``REDUCING_GAP``); ``None``: the exact bicubic resize."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, max(size, int(size * height / width))
    else:
        new_w, new_h = max(size, int(size * width / height)), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=reducing_gap)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def normalise(image: Image.Image) -> npt.NDArray[np.float32]:
    """``[3, H, W]`` float32: RGB scaled to [0, 1], then (x - mean) / std per channel (a table
    lookup per channel straight from the uint8 pixels: no float64 and no intermediate arrays)."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"normalise expects an RGB image, got mode {image.mode}")
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(_LUT[channel], pixels[:, :, channel], out=out[channel], mode="clip")
    return out


def preprocess(data: bytes, size: int = 224, exact: bool = False) -> npt.NDArray[np.float32]:
    """``[3, size, size]`` float32 pixels of the encoded image ``data``; ImageError if refused.
    ``exact``: without the shortcuts (no JPEG draft, no ``reducing_gap``): the plain pipeline."""
    if exact:
        return normalise(resize_crop(decode(data, draft=None), size, reducing_gap=None))
    return normalise(resize_crop(decode(data, draft=size), size))
