"""What both CLIP python-backend models share: their config parameters, the onnxruntime
session (CPU, or CUDA for a KIND_GPU instance) and per-request error responses.

Copied beside each model's ``model.py`` by ``python -m clipmodel.export``; runs inside Triton's
python backend stub (``triton_python_backend_utils`` is the stub's module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def parameters(args: dict[str, str]) -> dict[str, str]:
    """The ``parameters`` of the model's config.pbtxt, as strings."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def session(model_path: Path, args: dict[str, str], params: dict[str, str]) -> ort.InferenceSession:
    """An onnxruntime session for this instance. ``intra_op_threads`` (0: onnxruntime's default)
    sizes its thread pool; threads do not spin while idle (instances share the cores). A GPU
    instance runs on CUDA and refuses to load when onnxruntime has no CUDA provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if args.get("model_instance_kind") == "GPU":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "KIND_GPU instance, but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            )
        providers = [("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])})]
    return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)


def invalid(message: str) -> Any:
    """A response that fails only its own request with INVALID_ARGUMENT."""
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )


def items(request: Any, name: str) -> list[bytes]:
    """The BYTES items of input ``name`` of one request, flattened (a request ``[n, 1]`` gives n)."""
    array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    return [bytes(item) for item in array.reshape(-1)]


def embedding_response(vectors: npt.NDArray[np.float32]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor("EMBEDDING", np.ascontiguousarray(vectors, dtype=np.float32))]
    )
