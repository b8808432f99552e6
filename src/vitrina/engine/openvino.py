"""The OpenVINO backends: Intel's CPU runtime, built for the CPU's own matrix units.

* ``openvino``: fp32 (``INFERENCE_PRECISION_HINT=f32``: the same arithmetic as eager, only
  the summation order differs; held to the ONNX Runtime tolerance).
* ``openvino-bf16``: bf16 inference precision, for CPUs with bf16 matrix units (AMX,
  AVX-512 BF16). Elsewhere OpenVINO has no bf16 kernels and computes in fp32 (a warning
  says so); ``auto`` only tries it where the units exist.
* ``openvino-int8``: post-training int8 quantisation by NNCF, calibrated on the user's own
  photos like the ``int8`` (ONNX Runtime) backend. On CPUs without int8 dot-product units
  (VNNI / AMX-INT8) NNCF's overflow fix (7-bit weights) is applied to every layer, as
  ``reduce_range`` is for ONNX Runtime: measured on an EfficientNet-Lite0 cats/dogs probe
  (AVX2, 64 calibration photos, 400 held-out): top-1 agreement with fp32 98.5% -> 99.0%,
  mean |diff| 6.3% -> 3.6% of the logit scale (ONNX Runtime's static int8: 98.75%, 5.8%).

The model comes from the ONNX export vitrina already checks (:mod:`vitrina.engine.onnx`),
converted once to OpenVINO IR (``.xml`` + ``.bin``) and cached by content under
``$VITRINA_CACHE/openvino`` (converting costs ~10 s; reading the IR ~0.3 s). Compiled blobs
are cached by OpenVINO itself (``CACHE_DIR``), so a second run compiles in a fraction of the
time. The batch is split across OpenVINO's throughput streams (``PERFORMANCE_HINT=THROUGHPUT``:
one stream per group of cores, each with its own infer request), so every core computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import (
    BACKENDS,
    TOLERANCES,
    Backend,
    as_tensor,
    bf16_supported,
    compare_outputs,
    inference_mode,
    int8_vnni,
)
from vitrina.engine.geometry import BOXES
from vitrina.errors import VitrinaError
from vitrina.lazy import lazy_module

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = [
    "OpenVinoBackend",
    "OpenVinoBf16Backend",
    "OpenVinoInt8Backend",
    "openvino_available",
    "openvino_ir",
    "quantize_openvino",
]

_INSTALL = (
    "the openvino backends need openvino and nncf, which are not installed: "
    "pip install 'vitrina[openvino]'"
)


def openvino_available() -> bool:
    """Whether OpenVINO Runtime (and the ONNX exporter it converts from) is installed, and
    usable in this process (see :func:`forked_after_use`)."""
    import importlib.util

    if forked_after_use():
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "onnx"))


def forked_after_use() -> bool:
    """Whether this process was forked from one that had started OpenVINO: its thread pool
    does not survive a fork, and compiling a model here would wait forever."""
    return _CORE is not None and os.getpid() != _CORE_PID


def _cache(name: str) -> Path:
    from vitrina.io import cache_dir

    return cache_dir(name)


def _core() -> Any:
    """One OpenVINO ``Core`` per process, with compiled-blob caching on."""
    global _CORE, _CORE_PID
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            core = ov.Core()
            blobs = _cache("openvino") / "compiled"
            try:
                blobs.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(blobs)})
            except (OSError, RuntimeError):  # a read-only cache only costs compile time
                pass
            _CORE = core
            _CORE_PID = os.getpid()
        return _CORE


_CORE: Any = None
_CORE_PID: int | None = None  # the process that started it
_CORE_LOCK = threading.Lock()


def save_ir(ov_model: Any, xml: Path) -> Path:
    """Write ``ov_model`` as ``xml`` + ``.bin`` (fp32 weights kept as they are), atomically:
    both files are written in a temporary folder beside ``xml`` and renamed, ``.bin`` first,
    so an ``.xml`` that exists always has its complete weights."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vitrina-tmp-", dir=xml.parent))
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


def _convert(onnx_file: Path) -> Any:
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_file))
    except Exception as e:
        raise VitrinaError(
            f"{onnx_file}: OpenVINO cannot convert this model ({type(e).__name__}: {e})"
        ) from None


def openvino_ir(model: VitrinaModel, output: str = "logits") -> Path:
    """The fp32 OpenVINO IR of ``model``'s ``output``, converted from the checked ONNX export
    and cached by content (architecture, weights, input size, output, torch version)."""
    from vitrina.engine.onnx import _fingerprint, export_onnx
    from vitrina.engine.onnx import cache_dir as onnx_cache

    key = f"{model.arch.replace('/', '_')}-{_fingerprint(model, output)}"
    xml = _cache("openvino") / f"{key}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    exported = onnx_cache() / f"{key}.onnx"  # shared with the onnx backend: exported once
    if not exported.is_file():
        export_onnx(model, output, exported)
    return save_ir(_convert(exported), xml)


def quantize_openvino(
    model: VitrinaModel,
    calib: torch.Tensor,
    out: str | Path,
    *,
    output: str = "logits",
    overflow_fix: bool | None = None,
) -> Path:
    """Write an int8 OpenVINO IR of ``model`` (NNCF post-training quantisation, calibrated
    on the normalised batch ``calib``) to ``out`` (``.xml`` + ``.bin``, atomically).
    ``overflow_fix`` (7-bit weights in every layer) defaults to "no VNNI on this CPU"."""
    if not openvino_available():
        raise VitrinaError(_INSTALL)
    try:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
        )
    except ImportError:
        raise VitrinaError(_INSTALL) from None
    from vitrina.engine.int8 import _quiet

    if calib.dim() != 4 or len(calib) == 0:
        raise VitrinaError("int8 calibration needs at least one image")
    fix = (not int8_vnni()) if overflow_fix is None else overflow_fix
    ov_model = _core().read_model(str(openvino_ir(model, output)))
    # One dataset item per image, so NNCF's subset_size counts images.
    data = nncf.Dataset([calib[i : i + 1].float().numpy() for i in range(len(calib))])
    params = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if fix else OverflowFix.FIRST_LAYER
    )
    try:
        # NNCF draws its own progress bars on stdout; the caller has its own.
        with _quiet(), contextlib.redirect_stdout(io.StringIO()):
            q = nncf.quantize(ov_model, data, subset_size=len(calib), advanced_parameters=params)
    except Exception as e:
        raise VitrinaError(
            f"OpenVINO int8 quantization of {model.arch!r} failed ({type(e).__name__}: {e})"
        ) from None
    return save_ir(q, Path(out))


@BACKENDS.register("openvino")
class OpenVinoBackend(Backend):
    """OpenVINO Runtime on the CPU, fp32 inference precision.

    On its first batch of each output it checks itself against eager fp32 and falls back to
    eager, with a warning, outside its stated tolerance (unless told the check was already
    made: :meth:`trust`)."""

    name = "openvino"
    # Converted from the ONNX export; a detector's boxes from its one-image graph, image by
    # image, each on every core (see _config).
    outputs = ("logits", "embed", BOXES)
    takes_arrays = True  # once checked, a numpy batch runs and answers in numpy
    precision: str | None = "f32"  # INFERENCE_PRECISION_HINT (None: OpenVINO's default)
    #: what happens outside tolerance on the first batch: "fallback" to eager, or "warn"
    on_mismatch = "fallback"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        if device.type != "cpu":
            raise VitrinaError(
                f"the {self.name} backend runs on the CPU; on a GPU use --backend bf16 or eager"
            )
        super().__init__(model, device, threads, **options)
        if forked_after_use():
            raise VitrinaError(
                f"the {self.name} backend cannot run in a process forked after OpenVINO "
                "started (its threads do not survive a fork): use --backend onnx or eager here"
            )
        if not openvino_available():
            raise VitrinaError(_INSTALL)
        self._compiled: dict[str, tuple[Any, Any, int, bool]] = {}
        self._checked: set[str] = set()
        self._fallback: set[str] = set()
        self._lock = threading.Lock()  # infer requests are not shared between callers
        self.files: dict[str, Path] = {}
        self.last_check: dict[str, float] | None = None

    def file_for(self, output: str) -> Path:
        """The IR this backend runs for ``output``."""
        return openvino_ir(self.model, output)

    def trust(self, output: str) -> None:
        """Skip the first-batch check (it was made, e.g. by ``auto``'s recorded trial)."""
        self._checked.add(output)

    def _config(self, per_image: bool) -> dict[str, Any]:
        # A batch goes to throughput streams (one per group of cores) side by side; a
        # one-image graph (boxes) runs each image on every core: measured on a Faster R-CNN
        # (Lite0 + FPN, 224x224, 2 cores), 33 img/s against 23 on two streams.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if per_image else "THROUGHPUT"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.precision is not None:
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config

    def _compile(self, output: str) -> tuple[Any, Any, int, bool]:
        """``(compiled model, infer queue, its requests, whether the graph takes one image
        at a time)``."""
        if output not in self._compiled:
            import openvino as ov

            from vitrina.engine.onnx import single_image_module

            per_image = single_image_module(self.model, output) is not None
            xml = self.files[output] = self.file_for(output)
            try:
                compiled = _core().compile_model(str(xml), "CPU", self._config(per_image))
            except Exception as e:
                raise VitrinaError(f"{xml}: OpenVINO cannot compile this model ({e})") from None
            n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._compiled[output] = (compiled, ov.AsyncInferQueue(compiled, n), n, per_image)
        return self._compiled[output]

    def _infer(self, output: str, x: Any) -> Any:
        """The batch's outputs: one array, or for a variable-length output (boxes) a list
        with one per image; numpy for a numpy batch, tensors for a tensor."""
        _, queue, n, per_image = self._compile(output)
        arrays = isinstance(x, np.ndarray)
        arr = np.ascontiguousarray(x if arrays else x.detach().cpu().float().numpy(), np.float32)
        # Split the batch across the throughput streams (one infer request each).
        step = 1 if per_image else max(1, -(-len(arr) // n))
        chunks: list[np.ndarray | None] = [None] * (-(-len(arr) // step))

        def done(request: Any, k: int) -> None:
            chunks[k] = np.array(request.get_output_tensor(0).data, copy=True)

        queue.set_callback(done)
        for k, start in enumerate(range(0, len(arr), step)):
            queue.start_async({0: arr[start : start + step]}, k)
        queue.wait_all()
        if arrays and not per_image:
            return np.concatenate(chunks)  # type: ignore[arg-type]
        if per_image:
            return [torch.from_numpy(c).float() for c in chunks]  # type: ignore[arg-type]
        return torch.from_numpy(np.concatenate(chunks)).float()  # type: ignore[arg-type]

    def _check(self, x: torch.Tensor, y: Any, output: str) -> Any:
        ref = Backend.__call__(self, x, output)
        report = compare_outputs(ref, y, output)
        self.last_check = report
        if TOLERANCES[self.name].ok(report):
            return y
        detail = (
            f"mean |diff| {report['rel_mean_diff']:.1%} of the output scale, max |diff| "
            f"{report['max_abs_diff']:.2e}, top-1 agreement {report['top1_agreement']:.0%}"
        )
        if self.on_mismatch == "fallback":
            warnings.warn(
                f"{self.name} backend disagrees with eager fp32 for {self.model.arch!r} "
                f"({detail}); using eager",
                stacklevel=3,
            )
            self._fallback.add(output)
            return ref
        warnings.warn(
            f"{self.name} backend is far from eager fp32 for {self.model.arch!r} on the first "
            f"batch ({detail}); check it with `vitrina optimize` on labelled images",
            stacklevel=3,
        )
        return y

    def __call__(self, x: Any, output: str = "logits") -> Any:
        if (
            isinstance(x, np.ndarray)
            and output in self._checked
            and output not in self._fallback
            and not self._compile(output)[3]  # one tensor out (not a list per image)
        ):
            with self._lock:
                return self._infer(output, x)  # numpy in and out: no torch
        return self._call_tensors(as_tensor(x), output)

    @inference_mode
    def _call_tensors(self, x: torch.Tensor, output: str) -> Any:
        if output in self._fallback:
            return super().__call__(x, output)
        with self._lock:
            y = self._infer(output, x)
        if output not in self._checked:
            self._checked.add(output)
            y = self._check(x, y, output)
        return y


@BACKENDS.register("openvino-bf16")
class OpenVinoBf16Backend(OpenVinoBackend):
    """OpenVINO with bf16 inference precision (AMX / AVX-512 BF16 CPUs)."""

    name = "openvino-bf16"
    precision = "bf16"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        if not bf16_supported(device):
            warnings.warn(
                "this CPU has no bf16 matrix units (AMX / AVX-512 BF16): OpenVINO computes in "
                "fp32 here, so openvino-bf16 is the openvino backend",
                stacklevel=3,
            )


@BACKENDS.register("openvino-int8")
class OpenVinoInt8Backend(OpenVinoBackend):
    """NNCF int8 run by OpenVINO (CPU). Where the quantized model comes from, in order: the
    run folder's ``variants/openvino-int8[-<output>].xml`` (written by ``vitrina optimize``),
    the cache (``$VITRINA_CACHE/openvino-int8``, keyed by weights and calibration images), or
    a calibration made now from ``calib`` images or, for a run folder, its training images.
    It warns (and keeps running: you asked for it) when the first batch is outside the int8
    tolerance."""

    name = "openvino-int8"
    outputs = ("logits", "embed")  # NNCF's post-training int8 of whole-image outputs only
    precision = None  # int8 layers; the rest in OpenVINO's default (bf16 on AMX CPUs)
    on_mismatch = "warn"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        *,
        calib: str | Path | Sequence[str | Path] | None = None,
    ) -> None:
        super().__init__(model, device, threads, calib=calib)
        self.calib = calib

    def file_for(self, output: str) -> Path:
        from vitrina.engine.int8 import calibration_source, calibration_tensors
        from vitrina.engine.onnx import _fingerprint
        from vitrina.engine.variants import run_dir_of, variant_file

        run = run_dir_of(self.model)
        if run is not None:
            v = variant_file(run, self.name, output, suffix=".xml")
            if v.is_file() and v.with_suffix(".bin").is_file():
                return v
        source = calibration_source(self.model, self.calib, self.name)
        batch, used = calibration_tensors(source, self.model)
        digest = hashlib.sha256("\n".join(used).encode())
        digest.update(batch.numpy().tobytes())
        key = f"{_fingerprint(self.model, output)}-{digest.hexdigest()[:12]}"
        cached = _cache(self.name) / f"{self.model.arch.replace('/', '_')}-{key}.xml"
        if not (cached.is_file() and cached.with_suffix(".bin").is_file()):
            quantize_openvino(self.model, batch, cached, output=output)
        return cached
