"""CLIP's byte-level BPE tokenizer (after OpenAI CLIP's ``simple_tokenizer``, MIT licence).

Self-contained (standard library, numpy, ``regex``, ``ftfy``): the export copies this file beside
the Triton text model. Contract:

- ids are those of OpenAI CLIP: ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, vocabulary
  size 49408; text is cleaned as CLIP was trained (``ftfy.fix_text``, HTML unescaped twice,
  whitespace collapsed, lower-cased).
- special-token spellings inside user text are ordinary text (a caller cannot inject an
  end-of-text token, which would move the text tower's pooling position).
- ``encode_batch`` returns ``[start] + tokens + [end]`` per text, truncated to ``context_length``
  (77, CLIP's position table) with the end token kept last, padded with 0 to the longest row of
  the batch (the text tower pools at the first end token and is causal, so padding never changes
  an embedding).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import numpy.typing as npt
import regex

START_OF_TEXT = 49406
END_OF_TEXT = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def clean(text: str) -> str:
    """CLIP's text cleaning: ftfy, HTML unescape (twice), collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Tokenizer over a ``bpe_simple_vocab_16e6.txt.gz`` file (or the same merges, uncompressed,
    as in a Hugging Face ``merges.txt``: one header line, then one merge per line)."""

    def __init__(self, vocab_path: Path | str, context_length: int = CONTEXT_LENGTH) -> None:
        path = Path(vocab_path)
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").split("\n")[1 : _MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not a CLIP BPE merges file ({len(merges)} merges)")
        byte_chars = list(_bytes_to_unicode().values())
        vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m) for m in merges)]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self._encoder = {token: i for i, token in enumerate(vocab)}
        self._decoder = dict(enumerate(vocab))
        self._ranks = {(m[0], m[1]): i for i, m in enumerate(merges)}
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, list[int]] = {}
        self.context_length = context_length
        if len(self._encoder) != VOCAB_SIZE:
            raise ValueError(f"{path}: vocabulary of {len(self._encoder)} tokens, CLIP has {VOCAB_SIZE}")

    def _bpe(self, token: str) -> list[int]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self._ranks.get(pair, 1 << 30))
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self._encoder[part] for part in word]
        if len(self._cache) < 100_000:
            self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start and end tokens, not truncated."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            ids.extend(self._bpe("".join(self._byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: list[int]) -> str:
        """The cleaned text of ``ids`` (special tokens and padding dropped)."""
        chars = "".join(self._decoder[i] for i in ids if 0 < i < START_OF_TEXT)
        data = bytearray(self._byte_decoder[c] for c in chars)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def encode_batch(self, texts: list[str]) -> npt.NDArray[np.int64]:
        """``[len(texts), L]`` int64 ids (see the module contract); L is the longest row, at most
        ``context_length``."""
        rows = []
        for text in texts:
            ids = [START_OF_TEXT, *self.encode(text)][: self.context_length - 1]
            rows.append([*ids, END_OF_TEXT])
        out = np.zeros((len(rows), max((len(r) for r in rows), default=2)), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out
