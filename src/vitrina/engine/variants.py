"""Model variants stored in a run folder (``RUN/variants/``), written by ``vitrina optimize``.

``variants/int8.onnx`` (static int8, used by the ``int8`` backend), ``variants/pruned.onnx``
(channels removed and fine-tuned, used by the ``pruned`` backend), ``variants/bf16.safetensors``
(the weights in bfloat16: half the disk space; the ``bf16`` backend computes the same results
from either file) and ``variants/report.json`` (what each variant measured). Variants of the
``embed`` output carry an ``-embed`` suffix (``pruned-embed.onnx``: pruning keeps the
embedding's width, so the pruned model serves embeddings too).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import BACKENDS, Backend
from vitrina.engine.onnx import onnx_available, ort_session, run_arrays, run_session
from vitrina.errors import VitrinaError

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel

__all__ = ["VARIANTS_DIR", "PrunedBackend", "run_dir_of", "variant_file"]

VARIANTS_DIR = "variants"


def run_dir_of(model: VitrinaModel) -> Path | None:
    """The run folder a model was loaded from (``vitrina.runs.load_model``), else ``None``."""
    origin = getattr(model, "weights_origin", "") or ""
    if origin.startswith("run:"):
        path = Path(origin[4:])
        return path if path.is_dir() else None
    return None


def variant_file(run_dir: Path, name: str, output: str = "logits", suffix: str = ".onnx") -> Path:
    tail = "" if output == "logits" else f"-{output}"
    return Path(run_dir) / VARIANTS_DIR / f"{name}{tail}{suffix}"


@BACKENDS.register("pruned")
class PrunedBackend(Backend):
    """The run's pruned variant (fewer channels, distilled from the full model), run by ONNX
    Runtime: ``variants/pruned.onnx`` for logits, ``variants/pruned-embed.onnx`` for
    embeddings.

    It is a different, smaller model: its accuracy is what ``vitrina optimize`` measured, not
    a tolerance around fp32."""

    name = "pruned"
    outputs = ("logits", "embed")
    takes_arrays = True  # ONNX Runtime: numpy in, numpy out

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        run = run_dir_of(model)
        self.file = variant_file(run, "pruned") if run is not None else None
        if self.file is None or not self.file.is_file():
            where = f"run folder {run}" if run is not None else f"{model.arch!r} (not a run folder)"
            raise VitrinaError(
                f"no pruned variant for {where}: create one with `vitrina optimize RUN_DIR "
                f"--variants pruned`"
            )
        if not onnx_available():
            raise VitrinaError(
                "the pruned backend needs onnx and onnxruntime: pip install onnx onnxruntime"
            )
        self.run = run
        self._sessions = {"logits": ort_session(self.file, threads, device)}

    def __call__(self, x: Any, output: str = "logits") -> Any:
        if output not in self._sessions:
            path = variant_file(self.run, "pruned", output) if self.run is not None else None
            if output not in self.outputs or path is None or not path.is_file():
                raise VitrinaError(
                    f"{path or self.file}: the pruned variant has no {output} output (made "
                    f"before pruning kept the embedding); run `vitrina optimize "
                    f"{self.run} --variants pruned` again"
                )
            self._sessions[output] = ort_session(path, self.threads, self.device)
        if isinstance(x, np.ndarray):
            return run_arrays(self._sessions[output], np.ascontiguousarray(x, dtype=np.float32))
        return run_session(self._sessions[output], x)
