"""The ``int8`` backend: static int8 quantization calibrated on the user's own images.

The model is exported to ONNX (fp32) and quantized by ONNX Runtime's static quantizer in
QDQ format: int8 weights per output channel, uint8 activations per tensor, ranges from
running calibration images through the fp32 graph (min/max). Two details decide whether the
result is usable, both measured on EfficientNet-Lite0 fine-tuned on cats/dogs:

* **Shape arithmetic stays in float.** Models with TensorFlow "same" padding (timm's
  ``tf_*`` nets) compute their padding at run time from the input shape with float ops
  (``Div``, ``Ceil``, ``Mul``). Quantizing those rounds the pad sizes and shifts feature maps:
  the quantizer's default moved mean |logit error| from 6% to 24% of the logit scale. Nodes
  that only compute on shapes are excluded (:func:`shape_arithmetic_nodes`).
* **7-bit weights on CPUs without int8 dot-product units.** The AVX2 / AVX-512 kernels for
  uint8 x int8 (``vpmaddubsw``) can saturate; ``reduce_range`` avoids that at the cost of one
  bit of weight precision. With VNNI / AMX-INT8 the full range is used.

Where the quantized file comes from, in order: the run folder's ``variants/int8-<output>.onnx``
(written by ``vitrina optimize``), the cache (``$VITRINA_CACHE/int8``, keyed by weights and
calibration images), or a calibration made now from ``calib`` images or, for a run folder,
from the images it was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import (
    BACKENDS,
    TOLERANCES,
    Backend,
    as_tensor,
    compare_outputs,
    inference_mode,
    int8_vnni,
)
from vitrina.engine.onnx import (
    _fingerprint,
    export_onnx,
    onnx_available,
    ort_session,
    run_arrays,
    run_session,
)
from vitrina.engine.variants import run_dir_of, variant_file
from vitrina.errors import VitrinaError
from vitrina.io import cache_dir as io_cache_dir
from vitrina.lazy import lazy_module

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = [
    "CALIB_IMAGES",
    "Int8Backend",
    "calibration_source",
    "calibration_tensors",
    "quantize_int8",
    "shape_arithmetic_nodes",
]

CALIB_IMAGES = 64  # min/max ranges settle by a few dozen images; more only costs time
_CALIB_BATCH = 8


def shape_arithmetic_nodes(graph: Any) -> list[str]:
    """Names of nodes that only compute on tensor shapes (``Shape`` and everything fed solely
    by shapes and constants). Quantizing them would round sizes, not activations."""
    const = {t.name for t in graph.initializer}
    const |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    shape_valued: set[str] = set()
    names: list[str] = []
    for node in graph.node:  # ONNX graphs are stored in topological order
        inputs = [i for i in node.input if i]
        fed_by_shapes = (
            bool(inputs)
            and all(i in shape_valued or i in const for i in inputs)
            and any(i in shape_valued for i in inputs)
        )
        if node.op_type == "Shape" or fed_by_shapes:
            shape_valued.update(node.output)
            names.append(node.name)
    return names


def calibration_tensors(
    source: str | Path | Sequence[str | Path],
    model: VitrinaModel,
    max_images: int = CALIB_IMAGES,
) -> tuple[torch.Tensor, list[str]]:
    """Up to ``max_images`` readable images (a folder, searched recursively, or a list of
    files), transformed for ``model``; evenly spread over the sorted list so every class
    folder is represented. Returns ``(batch, paths used)``."""
    from vitrina.data import iter_image_files
    from vitrina.engine.engine import batch_inputs
    from vitrina.engine.tasks import Logits

    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise VitrinaError(f"{folder}: calibration folder not found")
        paths, _, _ = iter_image_files(folder, recursive=True)
        where = str(folder)
    else:
        paths, where = [Path(p) for p in source], "the calibration images"
    paths = sorted(paths)
    if len(paths) > max_images:
        step = len(paths) / max_images
        paths = [paths[int(i * step)] for i in range(max_images)]
    batch, used = batch_inputs(Logits(), model.preprocess, paths)
    if not used:
        raise VitrinaError(f"{where}: no readable image to calibrate int8 on")
    return batch, [str(paths[i]) for i in used]


def calibration_source(
    model: VitrinaModel,
    calib: str | Path | Sequence[str | Path] | None,
    backend: str = "int8",
) -> str | Path | Sequence[str | Path]:
    """Where an int8 backend calibrates: ``calib`` when given, else the folder a run was
    trained on (when it is still there); raises with what to do otherwise."""
    if calib is not None:
        return calib
    run = run_dir_of(model)
    if run is not None:
        from vitrina.runs import read_run

        root = read_run(run).data.get("root")
        if root and Path(root).is_dir():
            return Path(root)
    raise VitrinaError(
        f"the {backend} backend needs calibration images for {model.arch!r}: run "
        f"`vitrina optimize RUN_DIR --calib DIR` (or pass calib=DIR in Python)"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer reports through the root logger and warnings; keep the terminal clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_int8(
    model: VitrinaModel,
    calib: torch.Tensor,
    out: str | Path,
    *,
    output: str = "logits",
    reduce_range: bool | None = None,
) -> Path:
    """Write a static-int8 ONNX model of ``model`` calibrated on the normalized batch
    ``calib`` to ``out`` (atomically). ``reduce_range`` defaults to "no VNNI on this CPU"."""
    if not onnx_available():
        raise VitrinaError(
            "the int8 backend needs onnx and onnxruntime: pip install onnx onnxruntime"
        )
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib.dim() != 4 or len(calib) == 0:
        raise VitrinaError("int8 calibration needs at least one image")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reduce_range = (not int8_vnni()) if reduce_range is None else reduce_range
    # Calibration batches must all have the same size (the histogram collectors stack them).
    bs = min(_CALIB_BATCH, len(calib))
    batches = [calib[i : i + bs] for i in range(0, len(calib) - bs + 1, bs)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            b = next(self._it, None)
            return None if b is None else {"x": b.float().numpy()}

    with tempfile.TemporaryDirectory(prefix="vitrina-int8-") as tmp:
        fp32 = export_onnx(model, output, Path(tmp) / "fp32.onnx")
        prepared = Path(tmp) / "prepared.onnx"
        result = Path(tmp) / "int8.onnx"
        try:
            with _quiet():
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
                exclude = shape_arithmetic_nodes(onnx.load(str(prepared)).graph)
                quantize_static(
                    str(prepared),
                    str(result),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                )
        except VitrinaError:
            raise
        except Exception as e:
            raise VitrinaError(
                f"int8 quantization of {model.arch!r} failed ({type(e).__name__}: {e})"
            ) from None
        tmp_out = out.with_name(f".vitrina-tmp-{out.name}")
        try:  # the temporary folder may be on another file system: copy next to out, rename
            _copy(result, tmp_out)
            os.replace(tmp_out, out)
        finally:
            tmp_out.unlink(missing_ok=True)
    return out


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


@BACKENDS.register("int8")
class Int8Backend(Backend):
    """Static int8 through ONNX Runtime (CPU). Checks its first batch against eager fp32 and
    warns when it is outside the stated int8 tolerance (it keeps running: you asked for it)."""

    name = "int8"
    takes_arrays = True  # once checked, a numpy batch runs and answers in numpy
    outputs = ("logits", "embed")

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        *,
        calib: str | Path | Sequence[str | Path] | None = None,
    ) -> None:
        if device.type != "cpu":
            raise VitrinaError(
                "the int8 backend runs on the CPU (ONNX Runtime); on a GPU use --backend bf16, "
                "or pass --device cpu"
            )
        super().__init__(model, device, threads, calib=calib)
        if not onnx_available():
            raise VitrinaError(
                "the int8 backend needs onnx and onnxruntime: pip install onnx onnxruntime"
            )
        self.calib = calib
        self._sessions: dict[str, Any] = {}
        self._checked: set[str] = set()
        self.files: dict[str, Path] = {}
        self.last_check: dict[str, float] | None = None

    def file_for(self, output: str) -> Path:
        """The quantized model for ``output``: run variant, cache, or calibrated now."""
        run = run_dir_of(self.model)
        if run is not None:
            v = variant_file(run, "int8", output)
            if v.is_file():
                return v
        source = calibration_source(self.model, self.calib, self.name)
        batch, used = calibration_tensors(source, self.model)
        digest = hashlib.sha256("\n".join(used).encode())
        digest.update(batch.numpy().tobytes())
        key = f"{_fingerprint(self.model, output)}-{digest.hexdigest()[:12]}"
        cached = io_cache_dir("int8") / f"{self.model.arch.replace('/', '_')}-{key}.onnx"
        if not cached.is_file():
            quantize_int8(self.model, batch, cached, output=output)
        return cached

    def trust(self, output: str) -> None:
        """Skip the first-batch check (it was made, e.g. by ``auto``'s recorded trial)."""
        self._checked.add(output)

    def _session(self, output: str) -> Any:
        if output not in self._sessions:
            self.files[output] = self.file_for(output)
            self._sessions[output] = ort_session(self.files[output], self.threads, self.device)
        return self._sessions[output]

    def __call__(self, x: Any, output: str = "logits") -> Any:
        if isinstance(x, np.ndarray) and output in self._checked:
            return run_arrays(self._session(output), np.ascontiguousarray(x, dtype=np.float32))
        return self._call_tensors(as_tensor(x), output)

    @inference_mode
    def _call_tensors(self, x: torch.Tensor, output: str) -> torch.Tensor:
        y = run_session(self._session(output), x)
        if output not in self._checked:
            self._checked.add(output)
            ref = super().__call__(x, output)
            report = compare_outputs(ref, y, output)
            self.last_check = report
            if report["rel_mean_diff"] > TOLERANCES["int8"].rel:
                warnings.warn(
                    f"int8 backend is far from eager fp32 for {self.model.arch!r} on the first "
                    f"batch: mean |diff| {report['rel_mean_diff']:.1%} of the output scale, "
                    f"top-1 agreement {report['top1_agreement']:.0%}; check it with "
                    f"`vitrina optimize` on labelled images",
                    stacklevel=2,
                )
        return y
