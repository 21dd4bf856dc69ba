"""Triton python-backend model ``clip_text``: UTF-8 strings (BYTES ``[-1, 1]``) -> L2-normalised
float32 embeddings ``[-1, D]``.

One execute() tokenises the texts of every request in Triton's dynamic batch, pads them to the
batch's longest row and runs the text tower (ONNX, onnxruntime) once. A request whose text is not
UTF-8, is empty (after whitespace) or is longer than ``max_text_bytes`` fails alone with
INVALID_ARGUMENT; the others are answered. Texts longer than 77 tokens are truncated (CLIP's
context), as CLIP does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import vs_clip_backend as backend  # noqa: E402
from vs_clip_tokenizer import ClipTokenizer  # noqa: E402


def _text(item: bytes, max_bytes: int) -> str:
    if len(item) > max_bytes:
        raise ValueError(f"text is {len(item)} bytes, more than the limit of {max_bytes}")
    try:
        text = item.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text is not valid UTF-8: {e}") from None
    if not text.strip():
        raise ValueError("text is empty")
    return text


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = backend.parameters(args)
        self.session = backend.session(_HERE / "model.onnx", args, params)
        self.tokenizer = ClipTokenizer(_HERE / "bpe_simple_vocab_16e6.txt.gz")
        self.max_bytes = int(params.get("max_text_bytes", "16384"))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []
        for i, request in enumerate(requests):
            try:
                decoded = [_text(item, self.max_bytes) for item in backend.items(request, "TEXT")]
            except ValueError as e:
                responses[i] = backend.invalid(str(e))
                continue
            spans.append((i, len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)
        if texts:
            try:
                vectors = self.session.run(None, {"input_ids": self.tokenizer.encode_batch(texts)})[0]
            except Exception as e:  # the model failed for the whole batch: every request hears why
                for i, _, _ in spans:
                    responses[i] = backend.internal(f"text tower failed: {e}")
                return responses
            for i, start, end in spans:
                responses[i] = backend.embedding_response(vectors[start:end])
        return responses
