"""PyTorch imported on first use, so that a command that never runs it never pays for it.

``import torch`` costs 1.3-2.7 s on the CPUs measured (issue 17). A sort whose ``auto``
decision is cached and names a runtime with its own compiled copy (OpenVINO, ONNX Runtime)
runs from decoded pixels to probabilities in numpy: it starts without torch, in under a
second. Modules on that path write::

    from typing import TYPE_CHECKING
    from vitrina.lazy import lazy_module

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy_module("torch")

and use ``torch`` as before; the first attribute read imports it. :func:`is_tensor` asks
whether a value is a tensor without importing torch (nothing can be one before it is).
``tests/test_lazy_torch.py`` checks that such a sort never imports torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = [
    "gpu_possible",
    "is_device",
    "is_module",
    "is_tensor",
    "lazy_exports",
    "lazy_module",
    "torch_loaded",
    "torch_version",
]


class _LazyModule:
    """A stand-in for a module, imported on the first attribute read (then read directly)."""

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._lazy_name), attr)
        self.__dict__[attr] = value  # module attributes do not change: read them directly next
        return value

    def __repr__(self) -> str:
        state = "imported" if self._lazy_name in sys.modules else "not imported yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """``name``, imported when an attribute of it is first read."""
    return _LazyModule(name)


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]) -> Any:
    """A package's module ``__getattr__`` (PEP 562) for names kept in submodules that import
    torch: ``exports`` maps each name to its submodule, imported when the name is first read
    and then kept in the package (``namespace``: its ``globals()``)."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__


def torch_loaded() -> bool:
    """Whether PyTorch has been imported in this process."""
    return "torch" in sys.modules


def is_tensor(value: Any) -> bool:
    """``isinstance(value, torch.Tensor)``, without importing torch to ask."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_module(value: Any) -> bool:
    """``isinstance(value, torch.nn.Module)``, without importing torch to ask."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def is_device(value: Any) -> bool:
    """``isinstance(value, torch.device)``, without importing torch to ask."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.device)


def torch_version() -> str:
    """``torch.__version__`` (``2.14.1+cu130``), read from the installed package's
    ``torch/version.py`` where torch is not imported yet (cache keys name it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        try:
            tree = ast.parse((Path(spec.origin).parent / "version.py").read_text())
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in tree.body if tree is not None else []:
            if (
                isinstance(node, ast.Assign | ast.AnnAssign)
                and "__version__" in [getattr(t, "id", None) for t in _targets(node)]
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                return node.value.value
    return str(importlib.import_module("torch").__version__)


def _targets(node: Any) -> list[Any]:
    return list(node.targets) if hasattr(node, "targets") else [node.target]


def gpu_possible() -> bool:
    """Whether torch might see a GPU here: a loaded torch is asked; otherwise whether an
    NVIDIA (CUDA) or ROCm kernel driver is present. No driver, no GPU: the answer costs no
    ``import torch``."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return any(os.path.exists(p) for p in _GPU_DRIVER_FILES)


_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")
