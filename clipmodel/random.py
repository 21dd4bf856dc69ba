"""``python -m clipmodel.random --out DIR``: a small, randomly initialised CLIP for tests and the
demo, saved in Hugging Face format (``config.json`` + ``model.safetensors``).

Same architecture family as openai/clip-vit-base-patch32 (ViT image tower on 224 x 224 in 32-pixel
patches, causal text transformer over CLIP's 49408-token vocabulary and 77 positions), with tiny
widths and depths. Seeded: the same seed gives the same weights, so the same identity. Its
embeddings mean nothing (similar images are not near each other); point the export at real
weights for real search.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clipmodel.tokenizer import CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT, VOCAB_SIZE


def build(seed: int = 0, width: int = 32, layers: int = 2, dim: int = 32) -> Any:
    """A ``transformers.CLIPModel`` in eval mode with random weights drawn from ``seed``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": CONTEXT_LENGTH,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "bos_token_id": START_OF_TEXT,
        "eos_token_id": END_OF_TEXT,
        "pad_token_id": 1,
    }
    vision = {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=dim)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def save(out: Path, seed: int = 0) -> Path:
    """Builds the model and writes it to ``out`` (created); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    build(seed).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small random CLIP in Hugging Face format.")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save(args.out, args.seed))


if __name__ == "__main__":
    main()
