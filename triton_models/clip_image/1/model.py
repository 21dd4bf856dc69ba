"""Triton python-backend model ``clip_image``: encoded images (BYTES ``[-1, 1]``: JPEG, PNG or
WebP) -> L2-normalised float32 embeddings ``[-1, D]``.

One execute() decodes and preprocesses the images of every request in Triton's dynamic batch
(vs_clip_preprocess: resize, centre crop, CLIP normalisation) and runs the image tower (ONNX,
onnxruntime) once on the good ones. A request with an empty, oversize, corrupt, truncated or
unsupported image fails alone with INVALID_ARGUMENT naming the reason; the others are answered.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import vs_clip_backend as backend  # noqa: E402
from vs_clip_preprocess import MAX_BYTES, MAX_PIXELS, ImageError, normalise, resize_crop  # noqa: E402
from vs_clip_preprocess import decode as decode_image  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = backend.parameters(args)
        self.session = backend.session(_HERE / "model.onnx", args, params)
        self.size = int(params["image_size"])
        self.max_bytes = int(params.get("max_image_bytes", str(MAX_BYTES)))
        self.max_pixels = int(params.get("max_image_pixels", str(MAX_PIXELS)))

    def _pixels(self, data: bytes) -> npt.NDArray[np.float32]:
        pixels: npt.NDArray[np.float32] = normalise(
            resize_crop(decode_image(data, self.max_bytes, self.max_pixels, draft=self.size), self.size)
        )
        return pixels

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        pixels: list[npt.NDArray[np.float32]] = []
        spans: list[tuple[int, int, int]] = []
        for i, request in enumerate(requests):
            try:
                images = [self._pixels(item) for item in backend.items(request, "IMAGE")]
            except ImageError as e:
                responses[i] = backend.invalid(f"image refused ({e.reason}): {e}")
                continue
            spans.append((i, len(pixels), len(pixels) + len(images)))
            pixels.extend(images)
        if pixels:
            try:
                vectors = self.session.run(None, {"pixel_values": np.stack(pixels)})[0]
            except Exception as e:  # the model failed for the whole batch: every request hears why
                for i, _, _ in spans:
                    responses[i] = backend.internal(f"image tower failed: {e}")
                return responses
            for i, start, end in spans:
                responses[i] = backend.embedding_response(vectors[start:end])
        return responses
