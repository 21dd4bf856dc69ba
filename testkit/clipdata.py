"""Generated pictures for CLIP tests and benchmarks: seeded, distinct, encoded like real uploads.

Each picture is a smooth colour gradient with a few random ellipses and rectangles (so JPEG
decoding and resizing cost what a photo's do, unlike flat noise or a single colour).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def picture(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A seeded RGB picture of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-0.3, 0.3, (3, 2))
    channels = [base[c] + slope[c, 0] * xs + slope[c, 1] * ys for c in range(3)]
    image = Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def pictures(count: int, seed: int = 0, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> list[bytes]:
    """``count`` distinct encoded pictures."""
    return [encode(picture(seed * 100_003 + i, size), fmt) for i in range(count)]
