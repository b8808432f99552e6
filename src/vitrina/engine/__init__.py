"""The one inference engine: batched, worker-decoded, backend chosen by name."""

import vitrina.engine.auto
import vitrina.engine.int8
import vitrina.engine.onnx
import vitrina.engine.variants  # noqa: F401  (these register onnx, int8, pruned, auto)
from vitrina.engine.backends import (
    BACKENDS,
    TOLERANCES,
    Backend,
    Tolerance,
    bf16_supported,
    compare_outputs,
    resolve_backend,
)
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
    "TOLERANCES",
    "Backend",
    "Engine",
    "EngineBatch",
    "Tolerance",
    "available_cores",
    "bf16_supported",
    "compare_outputs",
    "default_workers",
    "resolve_backend",
    "resolve_device",
    "torch_threads",
]
