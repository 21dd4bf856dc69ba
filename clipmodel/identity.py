"""A CLIP model's identity: its architecture plus the sha256 of its weights.

Two exports of the same weights (whatever their file format: safetensors or a pickled state
dict) have the same identity; any change to one tensor, or to the architecture, changes it.
Collections record ``ModelIdentity.id``; clients read it from the Triton model config
(``parameters["model_identity"]`` of ``clip_text`` and ``clip_image``) or from
``identity.json`` in the model repository.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FILENAME = "identity.json"


@dataclass(frozen=True)
class ModelIdentity:
    """``architecture``: a canonical description of the CLIP shape (see ``architecture_of``);
    ``weights_sha256``: see ``weights_sha256``; ``dim``: embedding width; ``image_size``: the
    square the image tower takes; ``context_length``: the text tower's longest token row."""

    architecture: str
    weights_sha256: str
    dim: int
    image_size: int
    context_length: int

    @property
    def id(self) -> str:
        """``<architecture>@sha256:<weights_sha256>``: the string collections record."""
        return f"{self.architecture}@sha256:{self.weights_sha256}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "id": self.id}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelIdentity:
        data: dict[str, Any] = json.loads(text)
        identity = cls(
            architecture=str(data["architecture"]),
            weights_sha256=str(data["weights_sha256"]),
            dim=int(data["dim"]),
            image_size=int(data["image_size"]),
            context_length=int(data["context_length"]),
        )
        if data.get("id", identity.id) != identity.id:
            raise ValueError(f"identity file is inconsistent: id {data['id']!r} is not {identity.id!r}")
        return identity

    def write(self, directory: Path) -> Path:
        path = directory / FILENAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, directory: Path) -> ModelIdentity:
        return cls.from_json((directory / FILENAME).read_text())


def architecture_of(config: Any) -> str:
    """E.g. ``clip-vit/p32-i224-v12x768h12-t12x512h8-v49408-c77-d512`` for ViT-B/32: patch and
    image size, vision and text layers x width (heads), vocabulary, context, projection.
    ``config`` is a ``transformers.CLIPConfig``."""
    v, t = config.vision_config, config.text_config
    return (
        f"clip-vit/p{v.patch_size}-i{v.image_size}-v{v.num_hidden_layers}x{v.hidden_size}h{v.num_attention_heads}"
        f"-t{t.num_hidden_layers}x{t.hidden_size}h{t.num_attention_heads}-v{t.vocab_size}"
        f"-c{t.max_position_embeddings}-d{config.projection_dim}"
    )


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor in name order: ``name, dtype, shape`` then its raw bytes."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identity_of(model: Any) -> ModelIdentity:
    """The identity of a loaded ``transformers.CLIPModel``."""
    config = model.config
    return ModelIdentity(
        architecture=architecture_of(config),
        weights_sha256=weights_sha256(model.state_dict()),
        dim=int(config.projection_dim),
        image_size=int(config.vision_config.image_size),
        context_length=int(config.text_config.max_position_embeddings),
    )
