"""Where the network looks: class-activation maps and gradient attributions as arrays.

>>> from vitrina.explain.attribution import explain, overlay
>>> ex = explain(model, "cat.jpg", "gradcam", target="cat")  # doctest: +SKIP
>>> ex.heatmap.shape == (photo_height, photo_width)  # float32 in [0, 1]  # doctest: +SKIP
>>> overlay(read_image("cat.jpg"), ex.heatmap).save("cat-gradcam.png")  # doctest: +SKIP

Methods (:data:`METHODS`) come from the libraries, never re-implemented here: the Grad-CAM
family from ``grad-cam`` (``pytorch_grad_cam``) and gradient / perturbation attributions from
``captum``. Both are imported on first use (they take seconds to import).

Conventions:

* The image goes through the model's own eval transform (resize the short side to
  ``size / crop_pct``, center-crop). ``heatmap_input`` is the map at the network input size;
  ``heatmap`` is that map put back on the original image: the center-cropped region gets the
  resized map, everything the crop cut off is 0 (the network never saw it).
* CAM maps are grad-cam's: ReLU of the layer map, min-max scaled to [0, 1], bilinearly resized.
  Eigen-CAM projects on the first principal component with the sign chosen so the larger
  magnitude is positive (grad-cam's sign-corrected projection; plain SVD signs are arbitrary).
* Gradient attributions (saliency, SmoothGrad, Integrated Gradients, guided backprop): absolute
  value summed over colour channels. Occlusion: the drop of the target score when a grey square
  hides the pixel (averaged over the windows covering it), rises counted as 0. All are then
  divided by their 99th percentile and clipped to [0, 1], so a few extreme pixels do not
  darken the rest.
* Hooks are always removed, the model's train/eval mode and ``requires_grad`` flags are restored
  (also on error) and parameters get no ``.grad``: explaining does not change the model.
"""

from __future__ import annotations

import functools
import os
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitrina.data.transforms import short_side
from vitrina.engine import Embedding, Engine, Logits
from vitrina.errors import UnknownNameError, VitrinaError, require
from vitrina.explain.targets import (
    SimilarityScore,
    class_label,
    probe_layers,
    resolve_layer,
    resolve_target,
)
from vitrina.io import read_image
from vitrina.models import Preprocess, VitrinaModel
from vitrina.registry import Registry, suggest

__all__ = [
    "METHODS",
    "Explanation",
    "Method",
    "crop_box",
    "explain",
    "explain_batch",
    "explain_similarity",
    "iter_explain",
    "map_to_image",
    "method_spec",
    "overlay",
    "robust_unit",
]

ImageLike = Image.Image | str | os.PathLike[str]

SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15  # noise sigma / input range (Smilkov et al. 2017: 10-20%)
IG_STEPS = 32
OCCLUSION_FRACTION = 7  # window side = input side / 7, stride half the window
ROBUST_PERCENTILE = 99.0


@dataclass
class Explanation:
    """One method's answer for one image.

    Attributes:
        heatmap: (H, W) float32 in [0, 1] aligned to the original image (0 outside the crop).
        heatmap_input: (h, w) float32 in [0, 1] at the network input size.
        method: registry name.
        target: logit index explained (0 for a similarity).
        label: class name of ``target`` (``"class <i>"`` without names; ``"similarity"``).
        probability: softmax probability of ``target``; None for a similarity.
        score: the explained value: the target's logit, or the cosine similarity.
        top3: up to three ``(label, probability)``, best first; empty for a similarity.
        layer: CAM layer name, None for gradient methods.
        seconds: wall time of this method on this image (preprocessing and the prediction
            forward pass, shared by all methods, excluded).
    """

    heatmap: np.ndarray
    heatmap_input: np.ndarray
    method: str
    target: int
    label: str
    probability: float | None
    score: float
    top3: list[tuple[str, float]] = field(default_factory=list)
    layer: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    scorer: nn.Module  # (B, C, h, w) -> (B, K) scores; the model (logits) or a SimilarityScore
    x: torch.Tensor  # (1, C, h, w) normalised input
    target: int  # column of the scorer's output to explain
    layer: nn.Module | None  # CAM layer
    grey: torch.Tensor  # (1, C, h, w) the normalised mid-grey image (baseline)
    seed: int


@dataclass(frozen=True)
class Method:
    """A registered explanation method. ``run(job)`` returns the (h, w) map at input size."""

    name: str
    family: str  # "cam" (needs a layer), "gradient" or "perturbation"
    run: Callable[[_Job], np.ndarray]
    summary: str

    @property
    def uses_layer(self) -> bool:
        return self.family == "cam"


METHODS: Registry[Method] = Registry("explanation method")


def method_spec(name: str) -> Method:
    """The registered :class:`Method`; an unknown name raises :class:`UnknownNameError` with the
    closest names, or all of them when none is close. The library that computes it (grad-cam or
    captum, the ``explain`` extra) must be installed: a one-line error says how otherwise."""
    if name not in METHODS:
        close = suggest(name, METHODS.names()) or f" (choose from: {', '.join(METHODS.names())})"
        raise UnknownNameError(f"unknown explanation method {name!r}{close}")
    spec = METHODS.get(name)
    require("pytorch_grad_cam" if spec.uses_layer else "captum", "explain", f"explain {name!r}")
    return spec


def _method(name: str, family: str, summary: str) -> Callable[[Callable], Callable]:
    def deco(run: Callable[[_Job], np.ndarray]) -> Callable[[_Job], np.ndarray]:
        METHODS.register(name)(Method(name, family, run, summary))
        return run

    return deco


# ---------------------------------------------------------------------------- CAM family


def _run_cam(cam_cls: type, job: _Job, **attrs: object) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    assert job.layer is not None
    # Parameters are frozen while explaining: the input carries the graph to the layer.
    x = job.x.detach().clone().requires_grad_(True)
    cam = cam_cls(model=job.scorer, target_layers=[job.layer])
    for k, v in attrs.items():
        setattr(cam, k, v)
    # Not `with cam:` - its __exit__ swallows IndexError. Release by hand, and drop the
    # outputs (they hold the graph kept by backward(retain_graph=True)).
    try:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(job.target)])
    finally:
        cam.activations_and_grads.release()
        cam.outputs = None
    return maps[0]


@contextmanager
def _quiet_score_cam() -> Iterator[None]:
    """grad-cam's ScoreCAM draws a tqdm bar per image on stderr: swap the ``tqdm`` its module
    sees for a pass-through while it runs."""
    from pytorch_grad_cam import score_cam

    saved = score_cam.tqdm
    score_cam.tqdm = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)
    try:
        yield
    finally:
        score_cam.tqdm = saved


@functools.cache
def _signed_eigen_cam() -> type:
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    class SignedEigenCAM(EigenCAM):
        """EigenCAM with the sign-corrected projection (the salient side positive)."""

        def get_cam_image(
            self,
            input_tensor: torch.Tensor,
            target_layer: nn.Module,
            targets: list,
            activations: np.ndarray,
            grads: np.ndarray,
            eigen_smooth: bool,
        ) -> np.ndarray:
            return get_2d_projection_with_sign_correction(activations)

    return SignedEigenCAM


@_method("gradcam", "cam", "Grad-CAM (Selvaraju et al. 2017): channels weighted by mean gradient")
def _gradcam(job: _Job) -> np.ndarray:
    from pytorch_grad_cam import GradCAM

    return _run_cam(GradCAM, job)


@_method("gradcam++", "cam", "Grad-CAM++ (Chattopadhyay et al. 2018): higher-order weights")
def _gradcam_pp(job: _Job) -> np.ndarray:
    from pytorch_grad_cam import GradCAMPlusPlus

    return _run_cam(GradCAMPlusPlus, job)


@_method(
    "scorecam", "cam", "Score-CAM (Wang et al. 2020): channels weighted by masked-input scores"
)
def _scorecam(job: _Job) -> np.ndarray:
    from pytorch_grad_cam import ScoreCAM

    with _quiet_score_cam():
        return _run_cam(ScoreCAM, job, batch_size=32)


@_method(
    "eigencam",
    "cam",
    "Eigen-CAM (Muhammad & Yeasin 2020): first principal component, class-agnostic",
)
def _eigencam(job: _Job) -> np.ndarray:
    return _run_cam(_signed_eigen_cam(), job)


@_method(
    "layercam", "cam", "Layer-CAM (Jiang et al. 2021): positive gradients weight each position"
)
def _layercam(job: _Job) -> np.ndarray:
    from pytorch_grad_cam import LayerCAM

    return _run_cam(LayerCAM, job)


# ---------------------------------------------------------------------- gradient family


def robust_unit(m: torch.Tensor) -> np.ndarray:
    """(h, w) non-negative map -> float32 in [0, 1]: divided by its 99th percentile (by its
    maximum when that is 0), clipped; an all-zero map stays 0."""
    a = np.nan_to_num(m.detach().float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(np.percentile(a, ROBUST_PERCENTILE))
    if hi <= 0:
        hi = float(a.max())
    if hi <= 0:
        return np.zeros(a.shape, np.float32)
    return np.clip(a / hi, 0.0, 1.0).astype(np.float32)


def _grad_input(job: _Job) -> torch.Tensor:
    return job.x.detach().clone().requires_grad_(True)


def _abs_channels(attr: torch.Tensor) -> np.ndarray:
    return robust_unit(attr[0].abs().sum(0))


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """A seeded RNG for the block that leaves the global one as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@_method("saliency", "gradient", "Saliency (Simonyan et al. 2014): |d score / d pixel|")
def _saliency(job: _Job) -> np.ndarray:
    from captum.attr import Saliency

    return _abs_channels(
        Saliency(job.scorer).attribute(_grad_input(job), target=job.target, abs=True)
    )


@_method(
    "smoothgrad",
    "gradient",
    "SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies",
)
def _smoothgrad(job: _Job) -> np.ndarray:
    from captum.attr import NoiseTunnel, Saliency

    x = _grad_input(job)
    sigma = SMOOTHGRAD_NOISE * float(x.detach().max() - x.detach().min())
    with _seeded(job.seed, x.device):
        attr = NoiseTunnel(Saliency(job.scorer)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=SMOOTHGRAD_SAMPLES,
            nt_samples_batch_size=8,
            stdevs=sigma,
            target=job.target,
        )
    return _abs_channels(attr)


@_method(
    "integrated-gradients",
    "gradient",
    "Integrated Gradients (Sundararajan et al. 2017) from a grey image",
)
def _integrated_gradients(job: _Job) -> np.ndarray:
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(job.scorer).attribute(
        _grad_input(job),
        baselines=job.grey,
        target=job.target,
        n_steps=IG_STEPS,
        internal_batch_size=IG_STEPS // 2,
    )
    return _abs_channels(attr)


@_method(
    "guided-backprop",
    "gradient",
    "Guided backprop (Springenberg et al. 2015): only positive ReLU gradients",
)
def _guided_backprop(job: _Job) -> np.ndarray:
    from captum.attr import GuidedBackprop

    with (
        warnings.catch_warnings()
    ):  # "Setting backward hooks on ReLU": removed by captum in a finally
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        attr = GuidedBackprop(job.scorer).attribute(_grad_input(job), target=job.target)
    return _abs_channels(attr)


def _window(side: int) -> tuple[int, int]:
    """Occlusion window and stride for one input side: window ~ side / 7, stride half of it,
    the window nudged so the windows tile the side exactly (no pixel left unoccluded)."""
    k = max(1, round(side / OCCLUSION_FRACTION))
    s = max(1, k // 2)
    r = (side - k) % s
    k = k - r if r <= s - r and k - r >= 1 else k + (s - r)
    return min(k, side), s


@_method(
    "occlusion",
    "perturbation",
    "Occlusion (Zeiler & Fergus 2014): score drop under a sliding grey square",
)
def _occlusion(job: _Job) -> np.ndarray:
    from captum.attr import Occlusion

    c, h, w = job.x.shape[1:]
    (kh, sh), (kw, sw) = _window(h), _window(w)
    attr = Occlusion(job.scorer).attribute(
        job.x.clone(),
        sliding_window_shapes=(c, kh, kw),
        strides=(c, sh, sw),
        baselines=job.grey,
        target=job.target,
        perturbations_per_eval=16,
    )
    return robust_unit(attr[0].mean(0).clamp_min(0))


# ---------------------------------------------------------------------------- geometry


def crop_box(pre: Preprocess, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in original pixels of the region the eval transform of
    ``pre`` feeds the network, for an image of ``size`` = (width, height). Same integer
    sizes and offsets as :func:`vitrina.data.transforms.eval_transform`; may extend past the
    image when the crop is larger than the resized image (that part is padding)."""
    W, H = size
    h, w = pre.input_size
    short = short_side(pre)
    if W <= H:
        nw, nh = short, int(short * H / W)
    else:
        nw, nh = int(short * W / H), short
    top, left = round((nh - h) / 2.0), round((nw - w) / 2.0)
    sx, sy = W / nw, H / nh
    return (left * sx, top * sy, (left + w) * sx, (top + h) * sy)


def map_to_image(heatmap_input: np.ndarray, pre: Preprocess, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map at network input -> (H, W) map on the original image of ``size`` = (W, H):
    resized (bilinear) into :func:`crop_box`, 0 outside it."""
    W, H = size
    x0, y0, x1, y1 = (round(v) for v in crop_box(pre, size))
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    m = np.asarray(
        Image.fromarray(np.ascontiguousarray(heatmap_input, np.float32)).resize(
            (bw, bh), Image.BILINEAR
        )
    )
    out = np.zeros((H, W), np.float32)
    dx0, dy0, dx1, dy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if dx1 > dx0 and dy1 > dy0:
        out[dy0:dy1, dx0:dx1] = m[dy0 - y0 : dy1 - y0, dx0 - x0 : dx1 - x0]
    return np.clip(out, 0.0, 1.0)


def overlay(
    image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """RGB ``image`` blended with ``heatmap`` (values in [0, 1]) coloured by a matplotlib
    colormap: ``(1 - alpha) * image + alpha * cmap(heatmap)``. A heatmap of another size is
    resized (bilinear) to the image first."""
    from matplotlib import colormaps

    if cmap not in colormaps:
        raise VitrinaError(f"unknown colormap {cmap!r}{suggest(cmap, list(colormaps))}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    hm = np.asarray(heatmap, np.float32)
    if hm.shape != (rgb.height, rgb.width):
        hm = np.asarray(Image.fromarray(hm).resize(rgb.size, Image.BILINEAR))
    colour = colormaps[cmap](np.clip(np.nan_to_num(hm), 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * np.asarray(rgb, np.float32) + alpha * colour
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------- running


@contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters and gradients on for the block; every module's mode and
    every parameter's ``requires_grad`` restored afterwards, also on error."""
    params = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for p, _ in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in params:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag


def _load(image: ImageLike) -> Image.Image:
    return image if isinstance(image, Image.Image) else read_image(image)


def _engine(model: VitrinaModel, device: torch.device) -> Engine:
    """The engine for the passes that need no gradient: preparing images and predicting."""
    return Engine(model, backend="eager", device=device, batch_size=1, num_workers=0)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _grey(pre: Preprocess, x: torch.Tensor) -> torch.Tensor:
    g = torch.tensor(
        [(0.5 - m) / s for m, s in zip(pre.mean, pre.std, strict=True)], device=x.device
    )
    return g.view(1, -1, 1, 1).expand_as(x).contiguous()


def _run(
    method: Method, job: _Job, pre: Preprocess, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    m = np.asarray(method.run(job), np.float32)
    m = np.clip(np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    heat = map_to_image(m, pre, size)
    return heat, m, time.perf_counter() - t0


def _check_gradients(model: VitrinaModel, specs: Sequence[Method]) -> None:
    """A model whose features are computed outside PyTorch (the classic HOG / SIFT models)
    has no gradients and no feature maps: only perturbation methods explain it."""
    if not getattr(model, "export_refusal", None):
        return
    wrong = [s.name for s in specs if s.family != "perturbation"]
    if wrong:
        usable = ", ".join(n for n in METHODS.names() if METHODS.get(n).family == "perturbation")
        raise VitrinaError(
            f"{model.arch} computes its features outside PyTorch (OpenCV): no gradients or "
            f"feature maps for {', '.join(wrong)}; use a perturbation method: {usable}"
        )


def iter_explain(
    model: VitrinaModel,
    images: Iterable[ImageLike],
    methods: Sequence[str] = ("gradcam",),
    *,
    target: int | str | None = None,
    layer: str | None = None,
    seed: int = 0,
) -> Iterator[dict[str, Explanation]]:
    """``{method: Explanation}`` per image, in input order, one image at a time (a folder of
    thousands of photos never holds more than one image's maps).

    The transform and the prediction forward pass run once per image, the layer search once.
    ``target``: None explains each image's predicted class; an index or a class name explains
    that class everywhere. ``layer``: the CAM layer (see :mod:`vitrina.explain.targets`),
    default the last convolutional feature map; gradient methods ignore it. ``seed`` fixes
    SmoothGrad's noise. Unknown methods and targets raise before the first image is read, an
    unknown layer before the first method runs; an unreadable image raises
    :class:`~vitrina.errors.ImageReadError`.

    While the iterator is open the model is in eval mode with frozen parameters; exhausting or
    closing it (``break`` in a ``for`` loop, garbage collection) restores them.
    """
    specs = [method_spec(m) for m in methods]
    _check_gradients(model, specs)
    fixed = None if target is None else resolve_target(model, target)
    pre = model.preprocess
    device = _device(model)
    task = Logits(top_k=3)
    cam_layer: tuple[str, nn.Module] | None = None
    with _explaining(model):
        engine = _engine(model, device)  # inside: the modes it sets are restored after
        for image in images:
            img = _load(image)
            prepared = engine.prepare(task, img)
            x = torch.as_tensor(prepared.inputs).to(device)
            if cam_layer is None and any(s.uses_layer for s in specs):
                # The layer search records a forward pass with hooks: it gives the logits too.
                out, probe = probe_layers(model, model.classify, x)
                cam_layer = resolve_layer(model, layer, probe)
                scores = task.finish(out.detach().float(), [1], [None])[0]
            else:
                scores = engine.run_prepared(task, [prepared])[0]
            logits, probs = scores.logits, scores.probabilities
            t = scores.best[0] if fixed is None else fixed
            top3 = [(class_label(model, i), p) for i, p in scores.top]
            grey = _grey(pre, x)
            row: dict[str, Explanation] = {}
            for spec in specs:
                lname, lmod = cam_layer if (spec.uses_layer and cam_layer) else (None, None)
                job = _Job(model, x, t, lmod, grey, seed)
                heat, m, secs = _run(spec, job, pre, img.size)
                row[spec.name] = Explanation(
                    heat,
                    m,
                    spec.name,
                    t,
                    class_label(model, t),
                    float(probs[t]),
                    float(logits[t]),
                    top3,
                    lname,
                    secs,
                )
            yield row


def explain_batch(
    model: VitrinaModel,
    images: Sequence[ImageLike],
    methods: Sequence[str] = ("gradcam",),
    *,
    target: int | str | None = None,
    layer: str | None = None,
    seed: int = 0,
) -> list[dict[str, Explanation]]:
    """All of :func:`iter_explain` as a list."""
    return list(iter_explain(model, images, methods, target=target, layer=layer, seed=seed))


def explain(
    model: VitrinaModel,
    image: ImageLike,
    method: str = "gradcam",
    *,
    target: int | str | None = None,
    layer: str | None = None,
    seed: int = 0,
) -> Explanation:
    """Explain one image (a PIL image or a path) with one method; see :func:`explain_batch`."""
    return explain_batch(model, [image], [method], target=target, layer=layer, seed=seed)[0][method]


def explain_similarity(
    model: VitrinaModel,
    query_image: ImageLike,
    result_image: ImageLike,
    method: str = "gradcam",
    layer: str | None = None,
    *,
    seed: int = 0,
) -> tuple[Explanation, Explanation]:
    """Which regions of the query drive its similarity to the result, and vice versa.

    Each image's map explains the cosine similarity between its ``model.embed`` and the other
    image's fixed embedding (:class:`~vitrina.explain.targets.SimilarityScore`); any method
    works. Returns ``(query explanation, result explanation)``; ``score`` is the cosine
    similarity, ``label`` ``"similarity"``, ``probability`` None.
    """
    spec = method_spec(method)
    _check_gradients(model, [spec])
    pre = model.preprocess
    device = _device(model)
    task = Embedding(normalize=False)
    imgs = [_load(query_image), _load(result_image)]
    with _explaining(model):
        engine = _engine(model, device)  # inside: the modes it sets are restored after
        prepared = [engine.prepare(task, im) for im in imgs]
        xs = [torch.as_tensor(p.inputs).to(device) for p in prepared]
        cam_layer: tuple[str, nn.Module] | None = None
        if spec.uses_layer:
            _, probe = probe_layers(model, model.embed, xs[0])
            cam_layer = resolve_layer(model, layer, probe)
        vectors = engine.run_prepared(task, prepared)
        embs = [torch.from_numpy(v).reshape(1, -1).to(device) for v in vectors]
        cos = float(F.cosine_similarity(embs[0].float(), embs[1].float()))
        out = []
        for x, img, other in zip(xs, imgs, embs[::-1], strict=True):
            lname, lmod = cam_layer if cam_layer else (None, None)
            job = _Job(SimilarityScore(model, other[0]), x, 0, lmod, _grey(pre, x), seed)
            heat, m, secs = _run(spec, job, pre, img.size)
            out.append(Explanation(heat, m, spec.name, 0, "similarity", None, cos, [], lname, secs))
    return out[0], out[1]
