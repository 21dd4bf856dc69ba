"""``python -m clipmodel.export --weights HF_DIR --repo OUT``: real CLIP weights (a local Hugging
Face-format directory, e.g. openai/clip-vit-base-patch32, or one from ``clipmodel.random``) into a
Triton model repository.

Writes ``OUT/clip_text`` and ``OUT/clip_image``, each ``config.pbtxt`` (from
``triton_models/<model>/config.pbtxt.in``) and ``1/``: ``model.py``, the shared backend module,
the tower as ``model.onnx`` (L2 normalisation included), the tokenizer or preprocessing module,
the BPE vocabulary (text) and ``identity.json``; plus ``OUT/identity.json``. Each model directory
is built beside its target and renamed into place, so a reader never sees half a model; other
entries of OUT are left alone. Before writing, each ONNX tower is checked against the torch model
on sample inputs. Nothing is fetched from a hub: the weights directory must hold the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import string
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipmodel import preprocess, tokenizer, vocab
from clipmodel.identity import ModelIdentity, identity_of
from core import limits

MODELS_SRC = Path(__file__).resolve().parent.parent / "triton_models"
PARITY_TOLERANCE = 1e-4
MAX_TEXT_BYTES = limits.MAX_TEXT_BYTES  # the model refuses what the API would


@dataclass(frozen=True)
class ServingOptions:
    """How Triton serves the towers. ``kind``: ``KIND_CPU`` or ``KIND_GPU`` (production);
    ``queue_delay_us``: dynamic batching's wait for more requests (None: no dynamic batching, for
    measurements); ``max_queue_size``: requests queued beyond it are refused at once
    (UNAVAILABLE), never an unbounded queue;
    ``intra_op_threads``: onnxruntime threads per instance (0: its default). Defaults are the
    measured ones (bench/results/clip-runtime.md)."""

    kind: str = "KIND_CPU"
    text_instances: int = 2
    image_instances: int = 2
    queue_delay_us: int | None = 0
    max_batch_size: int = 64
    max_queue_size: int = 256
    intra_op_threads: int = 1


def load(weights: Path) -> Any:
    """The ``transformers.CLIPModel`` in ``weights`` (float32, eval); never downloads."""
    from transformers import CLIPModel

    if not (weights / "config.json").is_file():
        raise FileNotFoundError(f"{weights} is not a Hugging Face model directory (no config.json)")
    model = CLIPModel.from_pretrained(str(weights), local_files_only=True, dtype="float32")
    return model.eval()


def check_merges(weights: Path, tok: tokenizer.ClipTokenizer) -> None:
    """A weights directory that ships its own tokenizer (``merges.txt``) must use CLIP's merges."""
    merges = weights / "merges.txt"
    if merges.is_file():
        theirs = tokenizer.ClipTokenizer(merges)
        probe = "a photo of a cat, 42 Mbit/s — naïve café"
        if theirs.encode(probe) != tok.encode(probe):
            raise ValueError(f"{merges} is not CLIP's BPE vocabulary: this tokenizer would give other ids")


class _TextTower:
    """``input_ids [B, L]`` -> L2-normalised text embeddings ``[B, D]``."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class TextTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                features = self.model.get_text_features(input_ids=input_ids).pooler_output
                return torch.nn.functional.normalize(features, dim=-1)

        return TextTower().eval()


class _ImageTower:
    """``pixel_values [B, 3, S, S]`` -> L2-normalised image embeddings ``[B, D]``."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
                return torch.nn.functional.normalize(features, dim=-1)

        return ImageTower().eval()


def towers(model: Any) -> tuple[Any, Any]:
    """The text and image towers of ``model`` as torch modules with normalised outputs (the
    graphs the export writes; tests compare Triton against them)."""
    return _TextTower(model), _ImageTower(model)


def _export_onnx(module: Any, sample: npt.NDArray[Any], name: str, axes: dict[int, str], out: Path) -> None:
    import onnxruntime as ort
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            (torch.from_numpy(sample),),
            str(out),
            input_names=[name],
            output_names=["embedding"],
            dynamic_axes={name: axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        expected = module(torch.from_numpy(sample)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {name: sample})[0]
    error = float(np.abs(got - expected).max())
    if error > PARITY_TOLERANCE:
        raise RuntimeError(f"{out.name}: onnxruntime differs from torch by {error} (> {PARITY_TOLERANCE})")


def render_config(name: str, identity: ModelIdentity, options: ServingOptions) -> str:
    """The config.pbtxt of model ``name`` (``clip_text`` or ``clip_image``)."""
    if options.queue_delay_us is None:
        batching = "# dynamic batching off"
    else:
        batching = (
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.queue_delay_us}\n"
            f"  default_queue_policy {{ max_queue_size: {options.max_queue_size} }}\n}}"
        )
    fields: dict[str, object] = {
        "max_batch_size": options.max_batch_size,
        "dim": identity.dim,
        "dynamic_batching": batching,
        "kind": options.kind,
        "model_identity": identity.id,
        "architecture": identity.architecture,
        "weights_sha256": identity.weights_sha256,
        "intra_op_threads": options.intra_op_threads,
        "instances": options.text_instances if name == "clip_text" else options.image_instances,
        "context_length": identity.context_length,
        "max_text_bytes": MAX_TEXT_BYTES,
        "image_size": identity.image_size,
        "max_image_bytes": preprocess.MAX_BYTES,
        "max_image_pixels": preprocess.MAX_PIXELS,
    }
    template = string.Template((MODELS_SRC / name / "config.pbtxt.in").read_text())
    return template.substitute({key: str(value) for key, value in fields.items()})


def write_configs(repo: Path, options: ServingOptions) -> None:
    """Rewrites the config.pbtxt of both models of an exported ``repo`` with ``options``."""
    identity = ModelIdentity.read(repo)
    for name in ("clip_text", "clip_image"):
        (repo / name / "config.pbtxt").write_text(render_config(name, identity, options))


def _install(staging: Path, target: Path) -> None:
    """Replaces ``target`` by ``staging`` (same parent directory)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def _build_model(
    name: str,
    staging: Path,
    identity: ModelIdentity,
    options: ServingOptions,
    sample: npt.NDArray[Any],
    tower_pair: tuple[Any, Any],
    vocab_file: Path,
) -> None:
    """Writes model ``name`` (config.pbtxt and version 1) into the empty directory ``staging``."""
    version = staging / "1"
    version.mkdir()
    shutil.copy(MODELS_SRC / name / "1" / "model.py", version / "model.py")
    shutil.copy(MODELS_SRC / "shared" / "vs_clip_backend.py", version / "vs_clip_backend.py")
    identity.write(version)
    if name == "clip_text":
        shutil.copy(Path(tokenizer.__file__), version / "vs_clip_tokenizer.py")
        shutil.copy(vocab_file, version / vocab.FILENAME)
        _export_onnx(tower_pair[0], sample, "input_ids", {0: "batch", 1: "sequence"}, version / "model.onnx")
    else:
        shutil.copy(Path(preprocess.__file__), version / "vs_clip_preprocess.py")
        _export_onnx(tower_pair[1], sample, "pixel_values", {0: "batch"}, version / "model.onnx")
    (staging / "config.pbtxt").write_text(render_config(name, identity, options))
    staging.chmod(0o755)


def export(weights: Path, repo: Path, options: ServingOptions | None = None) -> ModelIdentity:
    """Writes the model repository (see the module doc) and returns the model's identity."""
    import torch

    options = options or ServingOptions()
    if options.kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"kind must be KIND_CPU or KIND_GPU, not {options.kind}")
    vocab_file = vocab.path()
    tok = tokenizer.ClipTokenizer(vocab_file)
    check_merges(weights, tok)
    torch.manual_seed(0)
    model = load(weights)
    identity = identity_of(model)
    repo.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples: dict[str, npt.NDArray[Any]] = {
        "clip_text": tok.encode_batch(["a photo of a cat", "a red bicycle leaning against a brick wall"]),
        "clip_image": rng.standard_normal((2, 3, identity.image_size, identity.image_size)).astype(np.float32),
    }
    for name in ("clip_text", "clip_image"):
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            _build_model(name, staging, identity, options, samples[name], towers(model), vocab_file)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _install(staging, repo / name)
    identity.write(repo)
    return identity


def main(argv: list[str] | None = None) -> None:
    defaults = ServingOptions()
    parser = argparse.ArgumentParser(description="Export CLIP weights (Hugging Face format) to a Triton model repo.")
    parser.add_argument("--weights", type=Path, required=True, help="local Hugging Face CLIP directory")
    parser.add_argument("--repo", type=Path, required=True, help="model repository to write (created)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="instance kind (gpu: KIND_GPU)")
    parser.add_argument("--text-instances", type=int, default=defaults.text_instances)
    parser.add_argument("--image-instances", type=int, default=defaults.image_instances)
    parser.add_argument("--queue-delay-us", type=int, default=defaults.queue_delay_us)
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--max-queue-size", type=int, default=defaults.max_queue_size)
    parser.add_argument("--intra-op-threads", type=int, default=defaults.intra_op_threads)
    args = parser.parse_args(argv)
    options = ServingOptions(
        kind="KIND_GPU" if args.device == "gpu" else "KIND_CPU",
        text_instances=args.text_instances,
        image_instances=args.image_instances,
        queue_delay_us=args.queue_delay_us,
        max_batch_size=args.max_batch_size,
        max_queue_size=args.max_queue_size,
        intra_op_threads=args.intra_op_threads,
    )
    identity = export(args.weights, args.repo, options)
    print(f"{args.repo}: {identity.id}")


if __name__ == "__main__":
    main()
