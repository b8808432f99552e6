"""Images a neuron likes: feature visualization and DeepDream.

:func:`visualize` synthesises an image that maximises the mean activation of one channel of a
layer (or of the whole layer, or a class logit), with the two regularisers that make such
images readable (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017, and their
lucid library):

* a **decorrelated Fourier parameterisation**: the image is a random-phase spectrum scaled by
  1/frequency (so Adam steps are "whitened" and high frequencies do not dominate), mapped
  through lucid's colour-decorrelation matrix and a sigmoid into [0, 1] RGB;
* **transformation robustness**: every step sees the image padded, jittered, rescaled and
  rotated at random (lucid's ``standard_transforms``), so only patterns that survive small
  geometric changes grow.

``param="pixel"`` (plain pixels through a sigmoid) and ``transforms="none"`` give the noisy
baseline. :func:`dream` is DeepDream (Mordvintsev et al. 2015): gradient ascent on the squared
L2 norm of a layer's activation over an image pyramid.

Both are seeded and reproducible (same seed, same device -> the same image). The model is used
in eval mode with its parameters frozen; training flags and ``requires_grad`` are restored, and
no hooks are left behind (layers are read through an FX feature extractor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.explain.layers import (
    ImageLike,
    _resize_to,
    array_to_pil,
    default_layers,
    frozen,
    layer_extractor,
    load_rgb,
    model_device,
    pil_to_tensor,
    resolve_layer,
    tensor_to_array,
    to_network_input,
)
from vitrina.models import VitrinaModel

__all__ = [
    "PARAMS",
    "TRANSFORMS",
    "VizResult",
    "direction_objective",
    "dream",
    "visualize",
    "visualize_directions",
]

PARAMS = ("fourier", "pixel")
TRANSFORMS = ("standard", "none")
DEFAULT_SIZE = 160  # long side of visualize's image unless the network needs its own size
MIN_OCTAVE = 32  # DeepDream's smallest octave side (pixels)

# lucid: square root of the ImageNet colour correlation matrix (from its SVD), columns scaled
# so the largest has unit norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))

ProgressFn = Callable[[int, int], None]


@dataclass
class VizResult:
    """A synthesised image.

    Attributes:
        image: RGB PIL image.
        array: (H, W, 3) float32 in [0, 1] (grey models: three equal channels).
        objective_curve: objective value at each step (under that step's random transform).
        layer, channel: what was maximised (``channel`` None: the whole layer's mean);
            ``layer`` None with ``class_index`` set: a class logit.
        class_index: the maximised logit, else None.
    """

    image: Image.Image
    array: np.ndarray
    objective_curve: list[float] = field(default_factory=list)
    layer: str | None = None
    channel: int | None = None
    class_index: int | None = None


# --------------------------------------------------------------------------- parameterisations


class _FourierImage(nn.Module):
    """lucid's ``fft_image``: an rfft spectrum scaled by 1/max(f, 1/side); irfft (ortho) / 4.
    ``n`` images at once (a batch of independent images: the activation atlas's cells)."""

    def __init__(
        self, ch: int, h: int, w: int, gen: torch.Generator, sd: float = 0.01, n: int = 1
    ) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        self.register_buffer("scale", 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)))
        self.size = (h, w)
        self.spectrum = nn.Parameter(torch.randn(n, ch, *freqs.shape, 2, generator=gen) * sd)

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0


class _PixelImage(nn.Module):
    def __init__(
        self, ch: int, h: int, w: int, gen: torch.Generator, sd: float = 0.01, n: int = 1
    ) -> None:
        super().__init__()
        self.pixels = nn.Parameter(torch.randn(n, ch, h, w, generator=gen) * sd)

    def forward(self) -> torch.Tensor:
        return self.pixels


def _to_rgb(t: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    """Unbounded (1, C, H, W) -> valid image in [0, 1] (lucid's ``to_valid_rgb``)."""
    if decorrelate and t.shape[1] == 3:
        m = torch.as_tensor(_COLOR, dtype=t.dtype, device=t.device)
        t = torch.einsum("bchw,dc->bdhw", t, m)
    return torch.sigmoid(t)


# --------------------------------------------------------------------------- robustness


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive) from ``gen``."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _jitter(x: torch.Tensor, d: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop losing ``d`` pixels in each direction (lucid's ``jitter``)."""
    dy, dx = _randint(gen, 0, d - 1), _randint(gen, 0, d - 1)
    h, w = x.shape[-2:]
    return x[..., dy : dy + h - d, dx : dx + w - d]


def _scale_rotate(x: torch.Tensor, scale: float, degrees: float) -> torch.Tensor:
    """Zoom by ``scale`` and rotate by ``degrees`` about the centre, one bilinear resampling."""
    a = math.radians(degrees)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=x.dtype, device=x.device)
    theta = theta.expand(len(x), 2, 3)  # the same transform for every image of a batch
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


_SCALES = [1 + (i - 5) / 50.0 for i in range(11)]
_ANGLES = list(range(-10, 11)) + 5 * [0]


def _standard_transforms(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """lucid's ``standard_transforms``: pad 12 (grey), jitter 8, scale 0.9-1.1, rotate
    -10..10 degrees, jitter 4."""
    x = F.pad(x, (12, 12, 12, 12), mode="constant", value=0.5)
    x = _jitter(x, 8, gen)
    scale = _SCALES[_randint(gen, 0, len(_SCALES) - 1)]
    angle = _ANGLES[_randint(gen, 0, len(_ANGLES) - 1)]
    x = _scale_rotate(x, scale, angle)
    return _jitter(x, 4, gen)


# --------------------------------------------------------------------------- objectives


def _channel_count(out: torch.Tensor) -> int:
    return int(out.shape[-1] if out.dim() == 3 else out.shape[1])


def _channel_mean(out: torch.Tensor, channel: int | None) -> torch.Tensor:
    """Mean activation of ``channel`` ((B, C, H, W), (B, C) or tokens (B, N, C)), or of all."""
    if channel is None:
        return out.float().mean()
    return (out[..., channel] if out.dim() == 3 else out[:, channel]).float().mean()


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 8:
        raise VitrinaError(f"image size must be at least 8 pixels, got {h}x{w}")
    return h, w


def _refuse_fixed_size(
    model: VitrinaModel, run: Callable[[torch.Tensor], torch.Tensor], hw: tuple[int, int]
) -> None:
    """A fixed-size network (:attr:`Preprocess.fixed_size`, e.g. LeNet-5) asked for another
    size: one line when the target (a class logit, a layer past the flatten) cannot be
    computed at that size; a convolutional layer of it still can, and is let through."""
    pre = model.preprocess
    if not pre.fixed_size or hw == tuple(pre.input_size):
        return
    try:
        with torch.no_grad():
            run(torch.full((1, pre.channels, *hw), 0.5, device=model_device(model)))
    except RuntimeError:
        pre.check_size(hw, model.arch, option="--size")


def _default_size(model: VitrinaModel, run: Callable[[torch.Tensor], torch.Tensor]) -> tuple:
    """The model's input size, shrunk so its long side is at most :data:`DEFAULT_SIZE` when the
    network accepts that (fully convolutional with global pooling); else the input size."""
    h, w = model.preprocess.input_size
    s = min(1.0, DEFAULT_SIZE / max(h, w))
    small = (max(8, round(h * s)), max(8, round(w * s)))
    if small == (h, w):
        return small
    try:
        with torch.no_grad():
            grey = torch.full((1, model.preprocess.channels, *small), 0.5)
            run(grey.to(model_device(model)))
        return small
    except Exception:  # fixed-size networks (flatten + linear, ViT): use their own size
        return (h, w)


def _default_layer(model: VitrinaModel) -> str:
    """The second-to-last default stage (mid-to-late: object parts, like Inception's mixed4)."""
    stages = default_layers(model)
    return stages[-2] if len(stages) > 1 else stages[-1]


def visualize(
    model: VitrinaModel,
    *,
    layer: str | None = None,
    channel: int | None = None,
    class_index: int | None = None,
    steps: int = 256,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    lr: float = 0.05,
    param: str = "fourier",
    transforms: str = "standard",
    on_progress: ProgressFn | None = None,
) -> VizResult:
    """Synthesise an image maximising a channel's mean activation (or a class logit).

    Args:
        layer: layer name (see :func:`vitrina.embed.layers.layer_names`); default: the
            second-to-last of :func:`vitrina.explain.layers.default_layers` (a mid-to-late
            stage; the last one when there is only one).
        channel: channel of ``layer`` (dim 1; the last dim for (B, N, C) tokens); None maximises
            the mean of the whole layer.
        class_index: maximise this logit of ``model.classify`` instead (no ``layer``/``channel``).
        steps: Adam steps. size: image side or (H, W); default: the model's input size with the
            long side capped at 160 when the network accepts it.
        param: ``fourier`` (decorrelated, 1/f spectrum) or ``pixel`` (plain baseline).
        transforms: ``standard`` (pad, jitter, scale, rotate each step) or ``none``.
        on_progress: called as ``on_progress(step, steps)`` after each step.

    Returns a :class:`VizResult`; the image is (H, W) = ``size``.
    """
    if param not in PARAMS:
        raise VitrinaError(f"unknown param {param!r}; choose one of {', '.join(PARAMS)}")
    if transforms not in TRANSFORMS:
        raise VitrinaError(
            f"unknown transforms {transforms!r}; choose one of {', '.join(TRANSFORMS)}"
        )
    if steps < 1:
        raise VitrinaError(f"steps must be >= 1, got {steps}")
    if class_index is not None and (layer is not None or channel is not None):
        raise VitrinaError("give either class_index or layer/channel, not both")
    dev = model_device(model)
    with frozen(model):
        if class_index is not None:
            if not 0 <= class_index < model.num_classes:
                raise VitrinaError(
                    f"class_index {class_index} out of range: {model.arch} has "
                    f"{model.num_classes} classes (0..{model.num_classes - 1})"
                )

            def run(rgb: torch.Tensor) -> torch.Tensor:
                return model.classify(to_network_input(model, rgb))

            def objective(out: torch.Tensor) -> torch.Tensor:
                return out[:, class_index].float().mean()

        else:
            layer = resolve_layer(model, layer) if layer is not None else _default_layer(model)
            fe = layer_extractor(model, layer)
            name = layer

            def run(rgb: torch.Tensor) -> torch.Tensor:
                return fe(to_network_input(model, rgb))[name]

            def objective(out: torch.Tensor) -> torch.Tensor:
                return _channel_mean(out, channel)

        h, w = _check_size(size) if size is not None else _default_size(model, run)
        if size is not None:
            _refuse_fixed_size(model, run, (h, w))
        if class_index is None:
            with torch.no_grad():
                probe = run(torch.full((1, model.preprocess.channels, h, w), 0.5, device=dev))
            if not isinstance(probe, torch.Tensor) or probe.dim() not in (2, 3, 4):
                raise VitrinaError(f"layer {layer!r} of {model.arch} has no channels to maximise")
            n = _channel_count(probe)
            if channel is not None and not 0 <= channel < n:
                raise VitrinaError(
                    f"channel {channel} out of range: layer {layer!r} of {model.arch} has "
                    f"{n} channels (0..{n - 1})"
                )

        gen = torch.Generator().manual_seed(int(seed))
        cls = _FourierImage if param == "fourier" else _PixelImage
        image = cls(model.preprocess.channels, h, w, gen).to(dev)  # grey models: grey image
        opt = torch.optim.Adam(image.parameters(), lr=lr)
        decorrelate = param == "fourier"
        curve: list[float] = []
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            rgb = _to_rgb(image(), decorrelate)
            if transforms == "standard":
                rgb = _resize_to(_standard_transforms(rgb, gen), (h, w))
            value = objective(run(rgb))
            (-value).backward()
            opt.step()
            curve.append(float(value.detach()))
            if on_progress:
                on_progress(step + 1, steps)
        with torch.no_grad():
            array = tensor_to_array(_to_rgb(image(), decorrelate))
    return VizResult(
        image=array_to_pil(array),
        array=array,
        objective_curve=curve,
        layer=layer if class_index is None else None,
        channel=channel,
        class_index=class_index,
    )


# --------------------------------------------------------------------------- directions


def direction_objective(
    out: torch.Tensor, directions: torch.Tensor, cossim_pow: float = 1.0
) -> torch.Tensor:
    """lucid's ``direction_neuron`` objective, one direction per image of the batch: at the
    centre position of the layer's ``(N, C, H, W)`` output (or the ``(N, C)`` vector), the
    dot product with the image's direction ``(N, C)`` times the cosine similarity (floored at
    0.1) to the power ``cossim_pow``, summed over the batch (the images are independent)."""
    if out.dim() == 4:
        acts = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
    elif out.dim() == 2:
        acts = out
    else:
        raise VitrinaError(
            f"direction objective needs (N, C, H, W) or (N, C), got {tuple(out.shape)}"
        )
    acts = acts.float()
    d = F.normalize(directions.to(acts), dim=1)
    dot = (acts * d).sum(1)
    if cossim_pow:
        cos = F.cosine_similarity(acts, d, dim=1).clamp_min(0.1)
        dot = dot * cos.pow(cossim_pow)
    return dot.sum()


def visualize_directions(
    model: VitrinaModel,
    layer: str,
    directions: torch.Tensor | np.ndarray,
    *,
    steps: int = 128,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    lr: float = 0.05,
    batch: int = 32,
    cossim_pow: float = 1.0,
    param: str = "fourier",
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """One image per direction of ``layer``'s activation space: the feature visualisation of
    :func:`visualize` (same parameterisation and transformation robustness) with
    :func:`direction_objective`, optimised ``batch`` images at a time. Returns ``(N, H, W, 3)``
    float32 in [0, 1]; seeded (same seed, same images). ``on_progress(done, total)`` counts
    steps over all batches."""
    if param not in PARAMS:
        raise VitrinaError(f"unknown param {param!r}; choose one of {', '.join(PARAMS)}")
    if steps < 1 or batch < 1:
        raise VitrinaError(f"steps and batch must be >= 1, got {steps} and {batch}")
    d_all = torch.as_tensor(np.asarray(directions), dtype=torch.float32)
    if d_all.dim() != 2 or not len(d_all):
        raise VitrinaError(f"directions must be (N, C) with N >= 1, got {tuple(d_all.shape)}")
    h, w = _check_size(size)
    dev = model_device(model)
    name = resolve_layer(model, layer)
    chunks = list(range(0, len(d_all), batch))
    total, done = steps * len(chunks), 0
    out = np.zeros((len(d_all), h, w, 3), np.float32)
    with frozen(model):
        fe = layer_extractor(model, name)
        gen = torch.Generator().manual_seed(int(seed))
        cls = _FourierImage if param == "fourier" else _PixelImage
        decorrelate = param == "fourier"
        for start in chunks:
            d = d_all[start : start + batch].to(dev)
            image = cls(model.preprocess.channels, h, w, gen, n=len(d)).to(dev)
            opt = torch.optim.Adam(image.parameters(), lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                rgb = _resize_to(_standard_transforms(_to_rgb(image(), decorrelate), gen), (h, w))
                value = direction_objective(fe(to_network_input(model, rgb))[name], d, cossim_pow)
                (-value).backward()
                opt.step()
                done += 1
                if on_progress:
                    on_progress(done, total)
            with torch.no_grad():
                rgb = _to_rgb(image(), decorrelate).clamp(0, 1)
                a = rgb.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
                out[start : start + len(d)] = np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a
    return out


# --------------------------------------------------------------------------- DeepDream


def _octave_sizes(h: int, w: int, octaves: int, octave_scale: float) -> list[tuple[int, int]]:
    """Largest first; each ``octave_scale`` smaller, none with a side under MIN_OCTAVE pixels."""
    floor = min(MIN_OCTAVE, h, w)
    sizes: list[tuple[int, int]] = []
    for i in range(octaves):
        f = octave_scale**-i
        s = (round(h * f), round(w * f))
        if min(s) < floor:
            break
        if s not in sizes:
            sizes.append(s)
    return sizes or [(h, w)]


def dream(
    model: VitrinaModel,
    image: ImageLike,
    *,
    layer: str,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 20,
    lr: float = 0.01,
    seed: int = 0,
    max_side: int | None = None,
    on_progress: ProgressFn | None = None,
) -> Image.Image:
    """DeepDream: amplify what ``layer`` sees in ``image``.

    The photo is shrunk so its long side is at most ``max_side`` (default: twice the model's
    input long side, 448 for a 224 model), then, from the smallest octave up (each ``octave_scale`` larger, smallest side
    at least 32 pixels), ``steps`` gradient-ascent steps on the mean squared activation of
    ``layer``: the image is rolled by a random shift (up to 1/8 of its short side, at most 32
    pixels) and back, the gradient is divided by its mean absolute value, and pixels (RGB in
    [0, 1]) move by ``lr`` times it. The detail added so far is carried up to the next octave.
    The detail is finally upsampled onto the original photo: the result has the photo's size.
    ``on_progress(done, total)`` counts steps over all octaves.
    """
    if octaves < 1 or steps < 1:
        raise VitrinaError(f"octaves and steps must be >= 1, got {octaves} and {steps}")
    if max_side is not None and max_side < 8:
        raise VitrinaError(f"max_side must be at least 8 pixels, got {max_side}")
    if octave_scale <= 1.0:
        raise VitrinaError(f"octave_scale must be > 1, got {octave_scale}")
    photo = load_rgb(image)
    dev = model_device(model)
    full = pil_to_tensor(photo).to(dev)
    H, W = full.shape[-2:]
    cap = max_side or 2 * max(model.preprocess.input_size)
    s = min(1.0, cap / max(H, W))
    work = (max(1, round(H * s)), max(1, round(W * s)))
    base = _resize_to(full, work)
    sizes = _octave_sizes(*work, octaves, octave_scale)
    gen = torch.Generator().manual_seed(int(seed))
    total, done = len(sizes) * steps, 0
    with frozen(model):
        name = resolve_layer(model, layer)
        fe = layer_extractor(model, name)
        detail = torch.zeros(1, 3, *sizes[-1], device=dev)
        for size in reversed(sizes):
            octave_base = _resize_to(base, size)
            detail = _resize_to(detail, size)
            x = (octave_base + detail).clamp(0, 1)
            j = max(1, min(32, min(size) // 8))
            for _ in range(steps):
                oy, ox = _randint(gen, -j, j), _randint(gen, -j, j)
                rolled = torch.roll(x, shifts=(oy, ox), dims=(2, 3)).requires_grad_(True)
                act = fe(to_network_input(model, rolled))[name]
                act.float().pow(2).mean().backward()
                g = torch.roll(rolled.grad, shifts=(-oy, -ox), dims=(2, 3))
                x = (x + lr * g / g.abs().mean().clamp_min(1e-8)).clamp(0, 1)
                done += 1
                if on_progress:
                    on_progress(done, total)
            detail = x - octave_base
    out = (full + _resize_to(detail, (H, W))).clamp(0, 1)
    return array_to_pil(tensor_to_array(out))
