"""What the embedder reads from Triton about a model: its identity, embedding width and tensor
names (from the model config the exporter wrote, ``clipmodel.export``), and its statistics.

The identity is the config parameter ``model_identity`` (``<architecture>@sha256:<weights>``,
see ``clipmodel.identity``); collections record it, and it is part of every cache key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import FailedPrecondition

IDENTITY_PARAMETER = "model_identity"
DIM_PARAMETER = "embedding_dim"


@dataclass(frozen=True)
class ModelInfo:
    """``name``: the Triton model; ``identity``: its ``model_identity``; ``dim``: embedding width;
    ``input_name``/``output_name``: its BYTES input and float32 output tensors; ``generation``:
    the embedder's connection generation when this was read (a reconnect makes it stale);
    ``read_at``: ``time.monotonic()`` of the read."""

    name: str
    identity: str
    dim: int
    input_name: str
    output_name: str
    generation: int
    read_at: float


@dataclass(frozen=True)
class ModelStats:
    """Triton's counters for a model since it loaded: ``inference_count`` items inferred,
    ``execution_count`` model executions (batches); fewer executions than items means batching."""

    inference_count: int
    execution_count: int
    success_count: int
    failure_count: int


def parse_config(config: Any, url: str, generation: int, read_at: float) -> ModelInfo:
    """``config``: Triton's ``ModelConfig`` message (``.config`` of the ``ModelConfig`` RPC's answer).
    FailedPrecondition when the model does not look like one of ours (no identity, no BYTES
    input, no output)."""
    name = str(config.name)
    params = {key: value.string_value for key, value in config.parameters.items()}
    identity = params.get(IDENTITY_PARAMETER, "")
    if not identity:
        raise FailedPrecondition(
            f"model {name!r} at Triton {url} does not say its identity (config parameter {IDENTITY_PARAMETER!r}); "
            "export the model repository with python -m clipmodel.export"
        )
    if len(config.input) != 1 or len(config.output) != 1:
        raise FailedPrecondition(f"model {name!r} at Triton {url} must have one input and one output")
    try:
        dim = int(params.get(DIM_PARAMETER) or config.output[0].dims[-1])
    except (ValueError, IndexError):
        raise FailedPrecondition(f"model {name!r} at Triton {url} has no embedding width") from None
    return ModelInfo(
        name=name,
        identity=identity,
        dim=dim,
        input_name=str(config.input[0].name),
        output_name=str(config.output[0].name),
        generation=generation,
        read_at=read_at,
    )


def parse_stats(response: Any, name: str) -> ModelStats:
    """``response``: the ``ModelStatistics`` RPC's answer for ``name``; counters summed over versions."""
    stats = [s for s in response.model_stats if s.name == name]
    return ModelStats(
        inference_count=sum(int(s.inference_count) for s in stats),
        execution_count=sum(int(s.execution_count) for s in stats),
        success_count=sum(int(s.inference_stats.success.count) for s in stats),
        failure_count=sum(int(s.inference_stats.fail.count) for s in stats),
    )
