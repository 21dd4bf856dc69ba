"""CLIP image preprocessing: encoded bytes -> normalised float32 pixels ``[3, S, S]``.

Self-contained (standard library, numpy, Pillow): the export copies this file beside the Triton
image model. Steps, as OpenAI CLIP's (torchvision) pipeline: decode; apply the EXIF orientation
(so a phone photo and its rotated copy embed alike); first frame of an animation; ``convert("RGB")``;
resize the shortest side to ``S`` with bicubic resampling (the other side ``int(S * long / short)``);
centre crop ``S`` x ``S`` (offsets rounded as torchvision does); scale to [0, 1]; subtract
``CLIP_MEAN`` and divide by ``CLIP_STD`` per channel.

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

_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


class ImageError(ValueError):
    """Input that is not an acceptable image; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoded RGB image (EXIF orientation applied). Checks the byte size, the format and the
    pixel count (from the header, before any pixel is decoded) first."""
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
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageError(reason, f"image data is {reason}: {e}") from None
    except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError("corrupt", f"image data is corrupt: {e}") from None


def resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Shortest side to ``size`` (bicubic), then the centred ``size`` x ``size`` square."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, max(size, int(size * height / width))
    else:
        new_w, new_h = max(size, int(size * width / height)), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def normalise(image: Image.Image) -> npt.NDArray[np.float32]:
    """``[3, H, W]`` float32: RGB scaled to [0, 1], then (x - mean) / std per channel."""
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return (pixels - _MEAN) / _STD


def preprocess(data: bytes, size: int = 224) -> npt.NDArray[np.float32]:
    """``[3, size, size]`` float32 pixels of the encoded image ``data``; ImageError if refused."""
    return normalise(resize_crop(decode(data), size))
