"""The one inference engine: batched, worker-decoded, backend chosen by name."""

import vitrina.engine.onnx  # noqa: F401  (registers the onnx backend)
from vitrina.engine.backends import BACKENDS, Backend, bf16_supported, resolve_backend
from vitrina.engine.engine import (
    Engine,
    EngineBatch,
    available_cores,
    default_workers,
    resolve_device,
    torch_threads,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "Engine",
    "EngineBatch",
    "available_cores",
    "bf16_supported",
    "default_workers",
    "resolve_backend",
    "resolve_device",
    "torch_threads",
]
