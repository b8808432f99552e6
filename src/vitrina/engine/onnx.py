"""The ``onnx`` backend: the model exported once to ONNX, run by ONNX Runtime (fp32).

Exports are cached by content (architecture, weights, input size, output) under
``$VITRINA_CACHE`` (default ``~/.cache/vitrina``)/onnx, written atomically. On the first
batch the backend checks itself against eager fp32 and falls back to eager, with a warning,
if the two disagree (top-1 differs or logits further apart than ``ONNX_ATOL``; for outputs
with a comparison of their own in ``OUTPUT_CHECKS``, such as boxes, outside the ``onnx``
tolerance).

Outputs of variable length per image (a detector's boxes) export one image at a time: a
model that has them provides ``onnx_single_image(output)``, a module taking one image
``(1, C, H, W)`` and returning that image's output tensor; the backend runs the exported
graph image by image and returns a list, as the model does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import (
    BACKENDS,
    Backend,
    as_tensor,
    inference_mode,
    model_output,
    network,
    onnx_available,
)
from vitrina.engine.geometry import BOXES
from vitrina.errors import VitrinaError
from vitrina.lazy import is_module, is_tensor, lazy_module, torch_version

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = [
    "ONNX_ATOL",
    "OnnxBackend",
    "cache_dir",
    "compare_onnx",
    "export_checked",
    "export_onnx",
    "onnx_available",
    "ort_session",
    "run_session",
    "run_session_per_image",
    "single_image_module",
]

ONNX_ATOL = 1e-3  # fp32 graph vs fp32 eager: only summation order differs


def cache_dir() -> Path:
    """Where exports are cached: ``$VITRINA_CACHE/onnx``."""
    from vitrina.io import cache_dir as _cache_dir

    return _cache_dir("onnx")


@functools.cache
def _output_module() -> type[nn.Module]:
    """The module exported for a one-tensor output (defined on first use: it is a
    ``torch.nn.Module``)."""

    class _Output(torch.nn.Module):
        def __init__(self, model: VitrinaModel, output: str) -> None:
            super().__init__()
            self.model, self.output = model, output

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = model_output(self.model, self.output, x)
            if not isinstance(y, torch.Tensor):
                raise VitrinaError(
                    f"output {self.output!r} of {self.model.arch!r} is not one tensor: the "
                    "ONNX export of variable-length outputs is the task's own (see "
                    "docs/architecture.md)"
                )
            return y

    return _Output


def _Output(model: VitrinaModel, output: str) -> nn.Module:
    return _output_module()(model, output)


def single_image_module(model: VitrinaModel, output: str) -> nn.Module | None:
    """The model's own module for exporting a variable-length ``output`` one image at a time
    (``model.onnx_single_image(output)``), or ``None`` for outputs that are one tensor."""
    make = getattr(model, "onnx_single_image", None)
    return make(output) if callable(make) else None


def weights_items(model: torch.nn.Module) -> list[tuple[str, bytes | memoryview]]:
    """The model's weights as ``(name, raw bytes)``, by name: what its safetensors file
    holds, so a run's fingerprint can be read from the file without building the network
    (:class:`vitrina.runs.DeferredModel`)."""
    items = getattr(model, "weights_items", None)
    if callable(items) and not is_module(model):
        got = items()  # a DeferredModel not built yet: from its checkpoint
        if got is not None:
            return got
        model = model.materialize()
    return [(k, _raw(v)) for k, v in sorted(model.state_dict().items())]


def _raw(v: torch.Tensor) -> bytes:
    t = v.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: the same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # C order, whatever the memory format


def _fingerprint(model: VitrinaModel, output: str) -> str:
    h = hashlib.sha256(
        f"{model.arch}|{model.preprocess.input_size}|{output}|{torch_version()}".encode()
    )
    for k, data in weights_items(model):
        h.update(k.encode())
        h.update(data)
    return h.hexdigest()[:24]


def export_onnx(model: VitrinaModel, output: str, path: Path) -> Path:
    """Export ``model.classify`` or ``model.embed`` with a dynamic batch axis, atomically; an
    output of variable length per image (see :func:`single_image_module`) for one image,
    its first axis dynamic.

    A model computed partly outside PyTorch (classic HOG / SIFT features: OpenCV) says why it
    cannot be exported in ``export_refusal``; tracing it would freeze those features into
    constants, so it is refused with that reason."""
    from vitrina.io import atomic_writer

    refusal = getattr(model, "export_refusal", None)
    if refusal:
        raise VitrinaError(f"cannot export {model.arch!r} to ONNX: {refusal}")

    model = network(model)  # tracing needs the module itself (a deferred run: built now)
    h, w = model.preprocess.input_size
    dummy = torch.zeros(1, model.preprocess.channels, h, w)
    was_training = model.training
    model.eval()
    single = single_image_module(model, output)
    module = single if single is not None else _Output(model, output)
    axes = {"y": {0: "n"}} if single is not None else {"x": {0: "batch"}, "y": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with atomic_writer(path, "wb") as f:
                torch.onnx.export(
                    module,
                    dummy,
                    f,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
    except VitrinaError:
        raise
    except Exception as e:
        raise VitrinaError(
            f"cannot export {model.arch!r} to ONNX ({type(e).__name__}: {e})"
        ) from None
    finally:
        model.train(was_training)
    return path


def ort_session(path: Path, threads: int | None = None, device: torch.device | None = None):
    """An ONNX Runtime session tuned for sharing the cores with decode workers."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Spinning threads fight the decode workers for the same cores; yielding ones let
    # the runtime use every core without starving them (measured: +15% on 2 cores).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if (
        device is not None
        and device.type == "cuda"
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise VitrinaError(f"{path}: ONNX Runtime cannot load this model ({e})") from None


def run_session(sess: Any, x: torch.Tensor) -> torch.Tensor:
    """Run a session on a normalized batch; float32 CPU tensor out."""
    return torch.from_numpy(run_arrays(sess, x.cpu().float().numpy()))


def run_arrays(sess: Any, x: np.ndarray) -> np.ndarray:
    """Run a session on a normalized float32 numpy batch; float32 numpy out."""
    return np.asarray(sess.run(None, {"x": x})[0], dtype=np.float32)


def run_session_per_image(sess: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Run a one-image session (a variable-length output) on each image of a batch."""
    return [run_session(sess, x[i : i + 1]) for i in range(len(x))]


def _agrees(ref: Any, got: Any, output: str) -> tuple[bool, str]:
    """Whether an ONNX output matches eager fp32's, and how far apart they are (for the
    warning): outputs with their own comparison use it and the onnx tolerance."""
    from vitrina.engine.backends import OUTPUT_CHECKS, TOLERANCES, compare_outputs

    if output in OUTPUT_CHECKS or not is_tensor(ref):
        report = compare_outputs(ref, got, output)
        return TOLERANCES["onnx"].ok(report), (
            f"agreement {report['top1_agreement']:.1%}, max diff {report['max_abs_diff']:.2e}"
        )
    same_top = output != "logits" or bool((ref.argmax(1) == got.argmax(1)).all())
    close = torch.allclose(got, ref, atol=ONNX_ATOL, rtol=1e-3)
    return same_top and close, f"max diff {float((got - ref).abs().max()):.2e}"


@BACKENDS.register("onnx")
class OnnxBackend(Backend):
    """ONNX Runtime on the CPU (CUDA provider when the device is a GPU and it is installed).
    Boxes: a detector exports its own one-image graph (``model.onnx_single_image``)."""

    name = "onnx"
    outputs = ("logits", "embed", BOXES)
    takes_arrays = True  # once checked, a numpy batch runs and answers in numpy

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        if not onnx_available():
            raise VitrinaError(
                "the onnx backend needs onnx and onnxruntime: pip install onnx onnxruntime"
            )
        refusal = getattr(model, "export_refusal", None)
        if refusal:
            raise VitrinaError(f"--backend onnx cannot run {model.arch!r}: {refusal}")
        self._sessions: dict[str, object] = {}
        self._checked: set[str] = set()
        self._fallback: set[str] = set()

    def trust(self, output: str) -> None:
        """Skip the first-batch check (it was made, e.g. by ``auto``'s recorded trial)."""
        self._checked.add(output)

    def _session(self, output: str):
        if output not in self._sessions:
            path = (
                cache_dir()
                / f"{self.model.arch.replace('/', '_')}-{_fingerprint(self.model, output)}.onnx"
            )
            if not path.is_file():
                export_onnx(self.model, output, path)
            self._sessions[output] = ort_session(path, self.threads, self.device)
        return self._sessions[output]

    def __call__(self, x: Any, output: str = "logits") -> Any:
        if (
            isinstance(x, np.ndarray)
            and output in self._checked
            and output not in self._fallback
            and single_image_module(self.model, output) is None
        ):
            return run_arrays(self._session(output), np.ascontiguousarray(x, dtype=np.float32))
        return self._call_tensors(as_tensor(x), output)

    @inference_mode
    def _call_tensors(self, x: torch.Tensor, output: str) -> Any:
        if output in self._fallback:
            return super().__call__(x, output)
        sess = self._session(output)
        if single_image_module(self.model, output) is not None:
            y: Any = run_session_per_image(sess, x)
        else:
            y = run_session(sess, x)
        if output not in self._checked:
            self._checked.add(output)
            ref = super().__call__(x, output)
            ok, how = _agrees(ref, y, output)
            if not ok:
                warnings.warn(
                    f"onnx backend disagrees with eager fp32 for {self.model.arch!r} "
                    f"({how}); using eager",
                    stacklevel=2,
                )
                self._fallback.add(output)
                return ref
        return y


def compare_onnx(
    model: VitrinaModel, path: Path, x: torch.Tensor, output: str = "logits"
) -> dict[str, float]:
    """Run the ONNX file and the PyTorch model on the same batch; report the differences
    (variable-length outputs: ``compare_outputs``'s report, e.g. boxes paired by IoU)."""
    model.eval()
    device = next(model.parameters()).device
    if single_image_module(model, output) is not None:
        from vitrina.engine.backends import compare_outputs, model_output

        got_list = run_session_per_image(ort_session(path), x)
        with torch.inference_mode():
            ref_list = [t.float().cpu() for t in model_output(model, output, x.to(device))]
        return compare_outputs(ref_list, got_list, output)
    got = run_session(ort_session(path), x)
    with torch.inference_mode():
        ref = _Output(model, output)(x.to(device)).float().cpu()
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean()) if output == "logits" else 1.0
    return {"max_abs_diff": float((got - ref).abs().max()), "top1_agreement": agree}


def export_checked(
    model: VitrinaModel,
    out: str | Path,
    x: torch.Tensor,
    *,
    output: str = "logits",
    atol: float = ONNX_ATOL,
) -> dict[str, float]:
    """Export to ``out`` and refuse (leaving no file) if ONNX Runtime disagrees with PyTorch
    on the batch ``x`` (normalized inputs): top-1 must match and outputs stay within ``atol``
    (boxes: the same count per image, paired at IoU >= 0.9, scores within ``atol``)."""
    out = Path(out)
    if out.exists():
        raise VitrinaError(f"{out}: file exists; choose another --out (nothing was overwritten)")
    tmp = out.with_name(f".vitrina-tmp-{out.name}")
    try:
        export_onnx(model, output, tmp)
        report = compare_onnx(model, tmp, x, output)
        boxes_apart = report.get("rel_mean_diff", 0.0) > ONNX_ATOL  # mean (1 - IoU), boxes
        if report["top1_agreement"] < 1.0 or report["max_abs_diff"] > atol or boxes_apart:
            raise VitrinaError(
                f"{out}: ONNX export diverges from PyTorch on output 'y' ({output}): max |diff| "
                f"{report['max_abs_diff']:.3g} (tolerance {atol:g}), top-1 agreement "
                f"{report['top1_agreement']:.1%}; nothing written"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report
