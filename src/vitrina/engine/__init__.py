"""The one inference engine: batched, worker-decoded, backend chosen by name."""

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
    "bf16_supported",
    "available_cores",
    "default_workers",
    "resolve_backend",
    "resolve_device",
    "torch_threads",
]
